"""``log(softmax(z))`` against ``log_softmax(z)``.

Sweep family: two logits ``z = (0, -x)``; the value is the log-probability of the
second class, ``log_softmax(z)[1] = -softplus(x) = -log(1 + e^x)``, and its derivative
is ``-sigmoid(x)``. For ``x > 0`` the second class is the *lower* one, ``x`` the logit
gap.

``naive``
    ``torch.log(torch.softmax(z))``: softmax is max-shifted, so it never overflows, but
    the lower entry ``e^{-x} / (1 + e^{-x})`` underflows to exactly 0.0 once the gap
    passes 103.97 (float32; 745.1 in float64; subnormal, with fewer bits, from 87.3):
    ``log(0) = -inf``, and the gradient is NaN (``SoftmaxBackward`` multiplies the
    ``-inf`` from ``1/0`` by the 0 it differentiates through).
``fixed``
    ``torch.log_softmax(z)``: ``z - max - log(sum(exp(z - max)))`` never takes the log of
    an underflowed entry: ``-x - log(1 + e^{-x})`` stays accurate at any gap.

For the *top* class (``x < 0`` here) both forms return exactly 0.0 once ``e^{-|x|}``
is below half an ulp of 1 (``|x| > 16.6`` in float32): the exact value ``-e^{-|x|}`` is
lost relative to itself (torch uses ``log``, not ``log1p``), but it is below an ulp of
the O(1) losses it is added to. The case therefore measures values and gradients
below 1 in ulps of 1 (``floor = 1``).

>>> import torch
>>> naive(torch.tensor([200.0])).item(), fixed(torch.tensor([200.0])).item()
(-inf, -200.0)
"""

from __future__ import annotations

import torch
from mpmath import mp

from ._base import Budget, Case, Domain, bits_for_ulps


def two_logits(x: torch.Tensor) -> torch.Tensor:
    """``(0, -x)`` per element: shape (N, 2)."""
    return torch.stack([torch.zeros_like(x), -x], dim=-1)


def naive_log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log(softmax(z))``, the naive form on any logits."""
    return torch.log(torch.softmax(z, dim=dim))


def fixed_log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log_softmax(z)``, the fixed form on any logits."""
    return torch.log_softmax(z, dim=dim)


def naive(x: torch.Tensor) -> torch.Tensor:
    return naive_log_softmax(two_logits(x))[..., 1]


def fixed(x: torch.Tensor) -> torch.Tensor:
    return fixed_log_softmax(two_logits(x))[..., 1]


def reference_f64(x: torch.Tensor) -> torch.Tensor:
    return fixed(x.to(torch.float64))


def reference_mp(x):
    """``-log(1 + e^x)``; mpmath's exponent range is unbounded, so nothing underflows."""
    return -mp.log1p(mp.exp(x))


def gradient_mp(x):
    """``-sigmoid(x) = -1 / (1 + e^{-x})``."""
    return -1 / (1 + mp.exp(-x))


def mp_log_softmax(z) -> list:
    """``log_softmax`` of a vector of mpf (or floats) at the current precision, max-shifted, via fsum."""
    values = [mp.mpf(v) for v in z]
    top = max(values)
    log_sum = top + mp.log(mp.fsum(mp.exp(v - top) for v in values))
    return [v - log_sum for v in values]


CASE = Case(
    name="log_softmax",
    title="log(softmax(z)) vs log_softmax(z)",
    description="softmax's smaller entries underflow to 0.0 for logit gaps above 103.97 (float32) / 745.1 "
                "(float64): log(0) = -inf and a NaN gradient. log_softmax never takes the log of an "
                "underflowed entry.",
    family="logits z = (0, -x); value = log_softmax(z)[1] = -log(1 + e^x), x > 0 is the gap below the top logit",
    naive=naive,
    fixed=fixed,
    reference_mp=reference_mp,
    gradient_mp=gradient_mp,
    reference_f64=reference_f64,
    domain=Domain(1e-3, 1e4, 8),
    trigger={"float32": 200.0, "float64": 1000.0, "float16": 20.0, "bfloat16": 200.0},
    expected_root_cause="underflow",
    # log_softmax(z)[1] = (z_1 - m) - log S with K = 2 logits, m = max z, S = sum_k exp(z_k - m)
    # (conventions: stablenca.cases._base.Budget). z_k - m is exact here (0 - (-x), -x - 0, ...); the
    # two exps (2u each) and the one addition make S off by <= (K+1) u = 3u relative, log S off by
    # <= 3u absolute plus 2u log S; the subtraction adds u L, L = |result| >= log S. So
    # E <= 3u + 3u L, and in ulps of M = max(L, 1) (floor = 1, spacing(M) > u M): < 3/M + 3 <= 6,
    # + 1/2 for rounding the reference: 6.5 ulps, log2(7.5) = 2.91 bits.
    # Gradient: dL/dx = -(1 - exp(out_1)) = -p_0 (LogSoftmaxBackward: grad - exp(out) sum(grad)); exp(out_1)
    # is off by p_1 (E + 2u) and the subtraction by u; p_1 L <= 1/e, so error <= (3 + 3/e + 3) u = 7.1 u,
    # in ulps of 1 (grad_floor = 1, spacing 2u): 3.55, + 1/2 for the reference: 4.05 ulps, 2.34 bits.
    budgets={"float32": Budget(bits_for_ulps(6.5), bits_for_ulps(4.05)),
             "float64": Budget(bits_for_ulps(6.5), bits_for_ulps(4.05))},
    fix="use torch.log_softmax (or F.cross_entropy / F.nll_loss(log_softmax)) instead of log(softmax)",
    floor=1.0,
    grad_floor=1.0,
    form_notes={"naive": "log(softmax(z))", "fixed": "log_softmax(z)"},
)
