"""``CrossEntropyLoss`` applied to probabilities (already softmaxed outputs).

Not a NaN: a silent correctness bug. ``CrossEntropyLoss`` applies ``log_softmax``
itself, so feeding it ``p = softmax(z)`` computes ``-log_softmax(p)[y]``: the
probabilities are squashed a second time. With ``K`` classes the loss can never go
below ``log(e + K - 1) - 1`` (reached at ``p = onehot(y)``; 1.4612 for K = 10,
0.3133 for K = 2) and its gradient shrinks by the softmax Jacobian on top of the
already saturated softmax: the model still learns a little, slowly, towards a loss
that looks stuck.

Sweep family: ``K = 10`` classes, logits ``z = (x, 0, ..., 0)`` and target class 0;
the intended loss is ``-log_softmax(z)[0] = log(1 + (K-1) e^{-x})`` with derivative
``-(K-1) / (e^x + K - 1)``.

``naive``
    ``F.cross_entropy(torch.softmax(z), y)``: wrong everywhere but near one point;
    ``[1.4612, 2.4]`` instead of ``(0, inf)``.
``fixed``
    ``F.cross_entropy(z, y)`` on the raw logits (or ``F.nll_loss(torch.log_softmax(z), y)``).

The tracer has nothing to report (every value is finite); the loss-input check
(:func:`stablenca.cases.detect.detect_probability_inputs`, run automatically on every
``cross_entropy``/``nll_loss`` call inside :func:`stablenca.cases.detect.check_loss_inputs`)
sees rows that lie in [0, 1] and sum to 1 and says so.

>>> import torch, math
>>> round(naive(torch.tensor([50.0])).item(), 4), round(minimum_naive_loss(10), 4)
(1.4612, 1.4612)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mpmath import mp

from ._base import Budget, Case, Domain, bits_for_ulps

#: Classes of the sweep family.
CLASSES = 10


def logits_of(x: torch.Tensor, classes: int = CLASSES) -> torch.Tensor:
    """``(x, 0, ..., 0)`` per element: shape (N, classes)."""
    return torch.cat([x[:, None], torch.zeros(x.shape[0], classes - 1, dtype=x.dtype, device=x.device)], dim=1)


def _target(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)


def naive(x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.softmax(logits_of(x), dim=1), _target(x), reduction="none")


def fixed(x: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(x), _target(x), reduction="none")


def reference_f64(x: torch.Tensor) -> torch.Tensor:
    return fixed(x.to(torch.float64))


def reference_mp(x):
    """``log(1 + (K-1) e^{-x})``."""
    return mp.log1p((CLASSES - 1) * mp.exp(-x))


def gradient_mp(x):
    """``-(K-1) / (e^x + K - 1)``."""
    return -(CLASSES - 1) / (mp.exp(x) + CLASSES - 1)


def minimum_naive_loss(classes: int = CLASSES) -> float:
    """The smallest value ``CrossEntropyLoss(softmax(z), y)`` can take: ``log(e + K - 1) - 1``."""
    return math.log(math.e + classes - 1) - 1


CASE = Case(
    name="ce_on_probabilities",
    title="CrossEntropyLoss(softmax(z)) vs CrossEntropyLoss(z)",
    description="CrossEntropyLoss applies log_softmax itself: on probabilities the loss is bounded below "
                f"by log(e + K - 1) - 1 ({minimum_naive_loss():.4f} for K = {CLASSES}) and its gradients "
                "shrink. Nothing goes NaN; the loss-input check flags the probabilities.",
    family=f"K = {CLASSES} logits z = (x, 0, ..., 0), target class 0; value = log(1 + (K-1) e^-x)",
    naive=naive,
    fixed=fixed,
    reference_mp=reference_mp,
    gradient_mp=gradient_mp,
    reference_f64=reference_f64,
    domain=Domain(1e-3, 1e3, 8),
    trigger={"float32": 5.0, "float64": 5.0, "float16": 5.0, "bfloat16": 5.0},
    expected_root_cause=None,
    silent=f"the loss cannot go below {minimum_naive_loss():.4f} (K = {CLASSES}) and its gradient shrinks",
    expected_warning="probability_inputs",
    # The fixed form is nll(log_softmax(z)): L = log S - (z_0 - m), S = sum_k exp(z_k - m), m = max z
    # (conventions: stablenca.cases._base.Budget). Here z_k - m is exact (one operand is 0 or equal);
    # each exp is off by <= 2u, the K-term sum (sequential: gamma_(K-1)) makes S off by <= (K+1) u
    # relative, so log S is off by <= (K+1) u absolute, plus 2u log S for log itself; the final
    # subtraction adds u L. log S <= L (x >= 0: L = log S; x < 0: log S <= log K < L), so
    # E <= (K+1) u + 3u L. Measured in ulps of M = max(L, 1) (floor = 1, spacing(M) > u M):
    # E / spacing(M) < (K+1)/M + 3 <= K + 4 = 14 ulps, + 1/2 for rounding the reference: 14.5 ulps,
    # log2(15.5) = 3.95 bits, in float32 and float64 alike (measured 2.41 on the AVX-512 path,
    # 1.21 on AVX2, which sum the 10 terms in different orders).
    # Gradient: LogSoftmaxBackward gives dL/dx = exp(out_0) - 1 = p_0 - 1, |p_0 - 1| < 1. out_0 carries E,
    # so p_0 is off by p_0 (E + 2u), then one rounding u: with p_0 L = -p_0 log p_0 <= 1/e,
    # error <= ((K+1) + 3/e + 2 + 1) u = 15.1 u; in ulps of 1 (grad_floor = 1, spacing 2u): 7.55,
    # + 1/2 for rounding the reference: 8.05 ulps, log2(9.05) = 3.18 bits.
    budgets={"float32": Budget(bits_for_ulps(14.5), bits_for_ulps(8.05)),
             "float64": Budget(bits_for_ulps(14.5), bits_for_ulps(8.05))},
    fix="pass raw logits to CrossEntropyLoss (drop the softmax), or use NLLLoss on log_softmax(z)",
    floor=1.0,
    grad_floor=1.0,
    form_notes={"naive": "cross_entropy(softmax(z), y)", "fixed": "cross_entropy(z, y)"},
)
