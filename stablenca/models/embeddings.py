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


class _Periodic(torch.autograd.Function):
    """``[cos(a), sin(a)]`` with ``a = 2π f x``, whose backward reuses the forward's cos and sin.

    Autograd's backward of ``cos``/``sin`` evaluates ``sin``/``cos`` again (two more
    transcendental passes over the n × features × frequencies angles) and a negation. Here
    the saved values give the same numbers: ``g_sin cos - g_cos sin`` is, bit for bit,
    autograd's ``g_cos (-sin) + g_sin cos`` (``x - y`` is ``x + (-y)`` in IEEE arithmetic, and
    ``-s g`` is ``-(s g)``), and the frequencies' gradient takes autograd's steps (the
    broadcast sum over rows, then the factor 2π).
    """

    @staticmethod
    def forward(ctx, x, frequencies):
        angles = 2 * math.pi * frequencies[None] * x[..., None]  # the eager expression, same rounding
        cos, sin = torch.cos(angles), torch.sin(angles)
        ctx.save_for_backward(x, frequencies, cos, sin)
        return torch.cat([cos, sin], dim=-1)

    @staticmethod
    def backward(ctx, grad):
        x, frequencies, cos, sin = ctx.saved_tensors
        n_frequencies = cos.shape[-1]
        grad_angles = grad[..., n_frequencies:] * cos - grad[..., :n_frequencies] * sin
        grad_x = grad_frequencies = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_angles * (2 * math.pi * frequencies[None])).sum(-1, keepdim=True).squeeze(-1)
        if ctx.needs_input_grad[1]:
            grad_frequencies = ((grad_angles * x[..., None]).sum(0, keepdim=True) * (2 * math.pi)).squeeze(0)
        return grad_x, grad_frequencies


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
        return _Periodic.apply(x, self.frequencies)


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
