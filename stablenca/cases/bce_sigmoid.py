"""``BCELoss(sigmoid(x))`` against ``BCEWithLogitsLoss(x)``.

Sweep family: one logit ``x`` with target 0; the exact loss is
``-log(1 - sigmoid(x)) = softplus(x) = log(1 + e^x)`` and its derivative ``sigmoid(x)``.
(Target 1 is the mirror image: ``x -> -x``.)

``naive``
    ``F.binary_cross_entropy(torch.sigmoid(x), y)``. ``sigmoid(x)`` rounds to exactly
    1.0 once ``e^{-x}`` is below half an ulp of 1 (``x > 16.6`` in float32, ``36.7`` in
    float64), so ``1 - p`` is 0 and ``log(1 - p) = -inf``. PyTorch's BCELoss clamps
    each log at -100, so **nothing goes NaN**: the loss of that element is exactly
    100.0 whatever ``x`` is (the exact loss is ``x``: 20 at x = 20, 1000 at x = 1000),
    and its gradient is exactly 0.0 instead of 1 (BCE's backward divides by
    ``max(p (1 - p), 1e-12)``, then sigmoid's backward multiplies by ``p (1 - p) = 0``).
    Before saturation ``1 - p`` already cancels: from ``x`` about 8 (float32) the loss
    loses more than half its bits. The tracer has nothing to report (no NaN/Inf is ever
    made: the clamp is inside one ATen op); the loss-input check reports the
    saturated probabilities (:func:`stablenca.cases.detect.detect_saturated_probabilities`).
``fixed``
    ``F.binary_cross_entropy_with_logits(x, y)``, which computes ``(1 - y) x - logsigmoid(x)``
    on the logit: finite at any ``x``, gradient ``sigmoid(x) - y``, and accurate to a few
    ulps *of 1*. For confidently right logits (``x < -8`` with target 0) the two terms
    nearly cancel and the tiny loss is off relative to itself (float32: 4.578e-5 instead
    of 4.540e-5 at x = -10), which is harmless next to O(1) losses; hence ``floor = 1``
    (the bound, derived at ``CASE``: 5 ulps of 1 in float32, worst near x = -8.5; 17 in
    float64, near x = -33.3).

>>> import torch
>>> x = torch.tensor([20.0, 1000.0], requires_grad=True)
>>> loss = naive(x)
>>> loss.tolist(), torch.autograd.grad(loss.sum(), x)[0].tolist()
([100.0, 100.0], [0.0, 0.0])
>>> [round(v, 4) for v in fixed(torch.tensor([20.0, 1000.0])).tolist()]
[20.0, 1000.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mpmath import mp

from ._base import Budget, Case, Domain, bits_for_ulps

#: What torch's BCELoss clamps ``log`` to (so one element's loss is at most 100).
BCE_LOG_CLAMP = -100.0


def naive(x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(torch.sigmoid(x), torch.zeros_like(x), reduction="none")


def fixed(x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")


def reference_f64(x: torch.Tensor) -> torch.Tensor:
    return fixed(x.to(torch.float64))


def reference_mp(x):
    """``softplus(x) = log(1 + e^x)``."""
    return mp.log1p(mp.exp(x))


def gradient_mp(x):
    """``sigmoid(x)``."""
    return 1 / (1 + mp.exp(-x))


def mp_bce_with_logits(x, y):
    """The exact binary cross-entropy of logit ``x`` and target ``y`` in [0, 1]."""
    x, y = mp.mpf(x), mp.mpf(y)
    return y * mp.log1p(mp.exp(-x)) + (1 - y) * mp.log1p(mp.exp(x))


CASE = Case(
    name="bce_sigmoid",
    title="BCELoss(sigmoid(x)) vs BCEWithLogitsLoss(x)",
    description="sigmoid(x) rounds to exactly 1.0 for x > 16.6 (float32): log(1 - p) = log(0), which "
                "BCELoss clamps to -100. No NaN: a silent loss of exactly 100 and a gradient of exactly 0.",
    family="logit x with target 0; value = log(1 + e^x), gradient = sigmoid(x)",
    naive=naive,
    fixed=fixed,
    reference_mp=reference_mp,
    gradient_mp=gradient_mp,
    reference_f64=reference_f64,
    domain=Domain(1e-3, 1e3, 8),
    trigger={"float32": 20.0, "float64": 50.0, "float16": 10.0, "bfloat16": 10.0},
    expected_root_cause=None,
    # float16: BCE's backward divides by max(p (1 - p), 1e-12) = 1e-12, which overflows float16 (65504).
    root_cause_by_dtype={"float16": "overflow"},
    silent="loss clamped at 100 (log clamped at -100) and gradient exactly 0 once sigmoid saturates",
    expected_warning="saturated_probabilities",
    # torch computes L = (1 - y) x - logsigmoid(x), logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)), y = 0
    # (conventions: stablenca.cases._base.Budget; floor = 1, so ulps of M = max(L, 1)).
    # x >= 0: L = x + log1p(e), e = exp(-x) <= 1: exp's 2u moves log1p by <= 2u e/(1+e) <= u, log1p
    # adds 2u log1p(e) <= 1.39u, the addition u L: (2.39 + L)/M < 3.39 ulps.
    # x < 0: L = x - (x - log1p(e^x)) cancels. Rounding r = x - log1p(e^x) is off by at most
    # min(half an ulp of |x|, log1p(e^x)) (x itself is a float that close), the outer subtraction is
    # exact (Sterbenz) or adds u L, the rest is <= 3u e^x + u log1p(e^x). Over the binade
    # |x| in [2^k, 2^(k+1)): min(2^k u, e^(-2^k)) is largest at k = 3 in float32 (8u = 4 ulps of 1)
    # and at k = 5 in float64 (32u = 16 ulps of 1; e^-32 = 114u is larger); the rest adds < 0.01 ulp
    # there (and where it is larger, |x| < 4, the min is <= 2u: 1 ulp); + 1/2 ulp slack for the
    # remaining second-order terms + 1/2 for rounding the reference:
    # float32 5 ulps = 2.58 bits, float64 17 ulps = 4.17 bits (the worst points: x = -8.5, x = -33.3).
    # Gradient: sigmoid(x) - y = 1/(1 + exp(-x)): exp 2u, addition u, reciprocal u: <= 3u sigmoid(x)
    # <= 3u, in ulps of 1 (grad_floor = 1, spacing 2u): 1.5, + 1/2 for the reference: 2 ulps = 1.58 bits.
    budgets={"float32": Budget(bits_for_ulps(5.0), bits_for_ulps(2.0)),
             "float64": Budget(bits_for_ulps(17.0), bits_for_ulps(2.0))},
    fix="use BCEWithLogitsLoss / F.binary_cross_entropy_with_logits on the logits (drop the sigmoid)",
    floor=1.0,
    grad_floor=1.0,
    form_notes={"naive": "BCELoss(sigmoid(x), 0)", "fixed": "BCEWithLogitsLoss(x, 0)"},
)
