"""PLR(-lite) embeddings for numerical features (Gorishniy et al., 2022), as TALENT uses them.

Each numerical feature x_j becomes ``ReLU(Linear([cos(2π f_j x_j), sin(2π f_j x_j)]))``
with trainable frequencies ``f_j ~ N(0, frequency_scale)``. In the *lite* variant the
Linear is shared by all features.

>>> import torch
>>> plr = PLREmbeddings(n_features=7, n_frequencies=77, frequency_scale=0.04431, d_embedding=34)
>>> plr(torch.zeros(5, 7)).shape
torch.Size([5, 7, 34])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


def _angles(x: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """``2π f_j x_j`` for every feature j and frequency: (n, features, frequencies)."""
    return 2 * math.pi * frequencies[None] * x[..., None]


class _PLRLite(torch.autograd.Function):
    """``ReLU(Linear([cos(a), sin(a)]))`` with ``a = 2π f x``, without the concatenation.

    The Linear's input is the concatenation ``[cos, sin]`` (n × features × 2·frequencies,
    8 MB per 1848-row step); multiplying each half by its half of the weight and adding
    gives the same output without writing it, and the backward gets the gradient of
    each half straight from one product each (contiguous, so the sin/cos products read
    no strided halves) and reuses the forward's cos and sin instead of evaluating sin and
    cos again.

    NOTE[DIFF]: TALENT applies ``nn.Linear`` to the concatenation. The sums here are the same
    terms in another order (the Linear's 2K + 1 terms in two products, the gradient's
    reductions): rounding only. tests/test_fused.py bounds the difference from autograd
    through the three modules in float64; bench/talent_lockstep.py keeps float64 training
    within ~1e-8 of TALENT's after 16 epochs.
    """

    @staticmethod
    def forward(ctx, x, frequencies, weight, bias):
        angles = _angles(x, frequencies)
        cos = torch.cos(angles)
        sin = angles.sin_()  # over the angles, no longer needed: one buffer fewer, the same values
        n_frequencies = frequencies.shape[-1]
        flat_shape = (-1, n_frequencies)
        out = torch.addmm(bias, cos.view(flat_shape), weight[:, :n_frequencies].mT)
        out.addmm_(sin.view(flat_shape), weight[:, n_frequencies:].mT).relu_()
        ctx.save_for_backward(x, frequencies, weight, cos, sin, out)
        return out.view(*cos.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad):
        x, frequencies, weight, cos, sin, out = ctx.saved_tensors
        n_frequencies = frequencies.shape[-1]
        # ReLU's backward, from its output; the incoming gradient is often a strided slice (of the
        # encoder's input gradient): read in place, the result is contiguous
        grad = torch.ops.aten.threshold_backward(grad, out.view(grad.shape), 0).reshape(out.shape)
        flat_cos, flat_sin = cos.view(-1, n_frequencies), sin.view(-1, n_frequencies)
        grad_weight = torch.cat([grad.mT @ flat_cos, grad.mT @ flat_sin], dim=1) if ctx.needs_input_grad[2] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[3] else None
        grad_x = grad_frequencies = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # d/da of cos(a) Wc + sin(a) Ws = -sin(a) (g Wc) + cos(a) (g Ws), in place
            grad_angles = (grad @ weight[:, n_frequencies:]).mul_(flat_cos)
            grad_angles.sub_((grad @ weight[:, :n_frequencies]).mul_(flat_sin))
            grad_angles = grad_angles.view(cos.shape)
            if ctx.needs_input_grad[0]:
                grad_x = (grad_angles * (2 * math.pi * frequencies[None])).sum(-1)
            if ctx.needs_input_grad[1]:
                grad_frequencies = grad_angles.mul_(x[..., None]).sum(0).mul_(2 * math.pi)
        return grad_x, grad_frequencies, grad_weight, grad_bias


class PeriodicEmbeddings(nn.Module):
    """``x -> [cos(2π f x), sin(2π f x)]`` with one row of frequencies per feature."""

    def __init__(self, *, n_features: int, n_frequencies: int, frequency_scale: float) -> None:
        super().__init__()
        if n_features < 1:
            raise ConfigError(f"{n_features=} must be >= 1", fix="pass the number of numerical features")
        if n_frequencies < 1:
            raise ConfigError(f"{n_frequencies=} must be >= 1", fix="use a positive number of frequencies")
        if not frequency_scale > 0:
            raise ConfigError(f"{frequency_scale=} must be > 0", fix="use a positive scale such as 0.04431")
        self.frequencies = nn.Parameter(torch.normal(0.0, frequency_scale, (n_features, n_frequencies)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = _angles(x, self.frequencies)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class PLREmbeddings(nn.Sequential):
    """Periodic → Linear (shared across features when ``lite``) → ReLU; output (n, features, d_embedding)."""

    def __init__(self, *, n_features: int, n_frequencies: int, frequency_scale: float,
                 d_embedding: int, lite: bool = True) -> None:
        if d_embedding < 1:
            raise ConfigError(f"{d_embedding=} must be >= 1", fix="use a positive embedding size such as 34")
        if not lite:
            # NOTE[DIFF]: TALENT's ModernNCA default is lite=True; the per-feature
            # NLinear variant is not ported because no default uses it.
            raise ConfigError("lite=False (per-feature linear layers) is not supported",
                              fix="use lite=True, TALENT's default for ModernNCA")
        super().__init__(
            PeriodicEmbeddings(n_features=n_features, n_frequencies=n_frequencies,
                               frequency_scale=frequency_scale),
            nn.Linear(2 * n_frequencies, d_embedding),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The three modules' composition in one step (:class:`_PLRLite`); the parameters stay theirs."""
        periodic, linear, relu = self
        if torch.is_autocast_enabled(x.device.type):
            # autocast picks each op's dtype (the Linear in half precision); the modules' ops follow
            # it, the Function's second, in-place product would mix dtypes
            return relu(linear(periodic(x)))
        return _PLRLite.apply(x, periodic.frequencies, linear.weight, linear.bias)
