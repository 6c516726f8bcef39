"""``f(x) = 1/(1 - exp(-x)) - 1/x``, with ``f(0) = 1/2`` (a user's question).

``f`` is the mean of the density proportional to ``exp(x t)`` on [0, 1]: smooth, in
(0, 1), ``f(x) + f(-x) = 1``, ``f(x) = 1/2 + x/12 - x^3/720 + ...`` near 0.

Forms:

``naive``
    the formula as written. Near 0 the two terms are both about ``1/x`` and cancel
    (``1/(1-e^{-x}) = 1/x + 1/2 + x/12 + ...``): about ``log2(2/|x|)`` bits are lost,
    and once ``exp(-x)`` rounds to exactly 1 (``|x| < 6e-8`` in float32, ``1.1e-16`` in
    float64) ``1 - exp(-x)`` is 0 and the result is ±inf or NaN. For ``x < -88.7`` in
    float32 ``exp(-x)`` overflows: the value is still right (``1/(1 - inf) = -0``) but
    the gradient is ``0 * inf = NaN``.
``patched``
    the user's patch ``torch.where(|x| < 1e-4, 0.5 + x/12, naive(x))``: finite values,
    but ``where`` backpropagates through the branch it did not select (``0 * inf`` or
    ``0 * NaN`` = NaN), so the gradient is still NaN near 0; and between 1e-4 and
    about 1 the naive branch still cancels.
``expm1``
    ``1/(-expm1(-x)) - 1/x``: ``1 - exp(-x)`` is now exact, but the two large terms
    still cancel: the error near 0 is the same ``log2(2/|x|)`` bits.
``fixed``
    the Bernoulli series ``1/2 + sum B_2n/(2n)! x^(2n-1)`` for ``|x| < 2`` (18 terms in
    float64, 9 in float32, 5 in half precision) and, for
    ``|x| >= 2`` with ``e = exp(-|x|)``, ``1/(1 - e) - 1/|x|`` (x > 0) or
    ``1/|x| - e/(1 - e)`` (x < 0, which never evaluates ``exp`` of a large positive
    number). ``1 - e`` cannot cancel there (``e <= 0.136``). Both branches get
    a safe input where they are not selected (the double-``where`` trick: the series
    sees 0, the closed form sees 2), so no NaN can come back through ``where`` in the
    backward pass.

>>> import torch
>>> x = torch.tensor([0.0, 1e-8, 1.0, -100.0])
>>> [round(v, 6) for v in fixed(x).tolist()]
[0.5, 0.5, 0.581977, 0.01]
>>> naive(torch.tensor([1e-8])).item()  # exp(-1e-8) == 1 in float32
inf
"""

from __future__ import annotations

import mpmath
import torch
from mpmath import mp

from ._base import Budget, Case, Domain, bits_for_ulps, digits_below_one, guarded

#: The user's switch-over point in the where-patch.
PATCH_EPS = 1e-4
#: The fixed form uses the series below this |x|, the closed form at and above it.
SERIES_LIMIT = 2.0
#: Series terms: the n-th term is about (x / 2 pi)^(2n) = 0.1^n at |x| = 2, so 18 terms reach
#: float64's rounding error (1e-18) and 9 float32's (1e-9); 5 are enough for float16 and bfloat16
#: (and more would overflow there: autograd multiplies the gradient by x^2 once per term).
SERIES_TERMS = 18
TERMS_BY_DTYPE = {torch.float64: 18, torch.float32: 9}


def _series_coefficients(terms: int) -> tuple[float, ...]:
    """``c_n = B_2n / (2n)!`` for n = 1..terms: ``f(x) = 1/2 + x (c_1 + c_2 x^2 + ...)``."""
    with mp.workdps(40):
        return tuple(float(mpmath.bernoulli(2 * n) / mpmath.factorial(2 * n)) for n in range(1, terms + 1))


COEFFICIENTS = _series_coefficients(SERIES_TERMS)


def naive(x: torch.Tensor) -> torch.Tensor:
    """The formula as written."""
    return 1 / (1 - torch.exp(-x)) - 1 / x


def patched(x: torch.Tensor, eps: float = PATCH_EPS) -> torch.Tensor:
    """The user's patch: the first two series terms below ``eps``, the formula above."""
    return torch.where(x.abs() < eps, 0.5 + x / 12, naive(x))


def expm1_form(x: torch.Tensor) -> torch.Tensor:
    """``1 - exp(-x)`` computed exactly with ``expm1``; the outer subtraction still cancels."""
    return 1 / (-torch.expm1(-x)) - 1 / x


def _series(x: torch.Tensor) -> torch.Tensor:
    coefficients = COEFFICIENTS[:TERMS_BY_DTYPE.get(x.dtype, 5)]
    t = x * x
    acc = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * t + c
    return 0.5 + x * acc


def fixed(x: torch.Tensor) -> torch.Tensor:
    """Series near 0, cancellation-free closed form elsewhere, each fed a safe input where unused."""
    small = x.abs() < SERIES_LIMIT
    near = torch.where(small, x, torch.zeros_like(x))  # the series never sees a large |x|
    s = torch.where(small, torch.full_like(x, SERIES_LIMIT), x.abs())  # the closed form never sees 0
    e = torch.exp(-s)  # <= exp(-2): never overflows, underflows harmlessly
    # 1 - e does not cancel for s >= 2 (e <= 0.136), and its gradient is exactly e. (-expm1(-s)
    # is as accurate, but ExpM1Backward computes (expm1(-s) + 1), which cancels: 7 bits of the
    # float64 gradient lost at x = 24.)
    one_minus_e = 1 - e
    positive = 1 / one_minus_e - 1 / s  # x >= 2: 1.16 - 0.5 at worst, < 1 bit lost
    negative = 1 / s - e / one_minus_e  # x <= -2: f(x) = 1 - f(|x|) without exp(+|x|)
    far = torch.where(x > 0, positive, negative)
    return torch.where(small, _series(near), far)


def reference_f64(x: torch.Tensor) -> torch.Tensor:
    """The float64 reference: the fixed form in float64 (checked against mpmath in the tests)."""
    return fixed(x.to(torch.float64))


def reference_mp(x):
    """``f(x)`` correct to ``mp.dps`` digits (guard digits for the cancellation near 0)."""
    if x == 0:
        return mp.mpf(1) / 2
    return guarded(lambda v: 1 / (1 - mp.exp(-v)) - 1 / v, x, digits_below_one(x) + 1)


def gradient_mp(x):
    """``f'(x) = 1/x^2 - exp(-x)/(1 - exp(-x))^2`` (``1/12`` at 0), correct to ``mp.dps`` digits."""
    if x == 0:
        return mp.mpf(1) / 12
    return guarded(lambda v: 1 / v ** 2 - mp.exp(-v) / (1 - mp.exp(-v)) ** 2, x, 2 * digits_below_one(x) + 2)


CASE = Case(
    name="one_minus_exp",
    title="f(x) = 1/(1-exp(-x)) - 1/x, f(0) = 1/2",
    description="Two terms of size 1/x cancel near 0; exp(-x) == 1 below 6e-8 (float32) gives 1/0. "
                "The where-patch keeps the value finite but its gradient is NaN (where backpropagates "
                "through the unselected branch); expm1 alone does not remove the cancellation.",
    family="x itself (a scalar function applied elementwise)",
    naive=naive,
    fixed=fixed,
    patched=patched,
    extra_forms={"expm1": expm1_form},
    reference_mp=reference_mp,
    gradient_mp=gradient_mp,
    reference_f64=reference_f64,
    domain=Domain(1e-12, 100.0, 8),
    trigger={"float32": 1e-8, "float64": 1e-17, "float16": 1e-4, "bfloat16": 1e-3},
    expected_root_cause="cancellation",
    # Conventions: stablenca.cases._base.Budget (floor = 0: ulps of the value itself; the gradient
    # normwise in ulps of max|f'| = f'(0) = 1/12, spacing u/8).
    # Value, series (|x| < 2): Horner on t = x*x (Higham eq. 5.3: coefficient i perturbed by
    # gamma_(2i+1)), plus u for each stored coefficient, u for t, u for x * acc, u for 0.5 + ..., and the
    # first omitted term (alternating: < 2 (x / 2 pi)^(2n+1)): <= 1.83 ulps in float32 (9 terms) and
    # float64 (18 terms), evaluated over (-2, 2) with the exact spacing of f.
    # Closed form, x >= 2 (f in [0.66, 1), spacing u): e = exp(-s) 2u; 1 - e: u + 2u e/(1 - e) <= 1.31u
    # relative; 1/(1 - e) <= 1.16 another u: 2.31u * 1.16 = 2.68u; 1/s <= 0.5u; the difference's
    # rounding 1/2 ulp: 3.68 ulps. x <= -2 (f = 1/s - e/(1 - e) <= 0.34, condition 1.9 at s = 2):
    # e/(1 - e) off by 4.31u * 0.157, 1/s by 0.5u, over spacing(f) > u f: (0.5 + 0.68)/0.34 = 3.42,
    # + 1/2 ulp rounding: 3.92 ulps. Worst 3.92, + 1/2 for the reference: 4.5 ulps = 2.46 bits.
    # Gradient: worst just above |x| = 2, where f' = 1/s^2 - e/(1 - e)^2 cancels (0.25 - 0.18 = 0.069).
    # Through autograd: 1/s^2 (reciprocal backward -g r^2: 3u) is off by 0.75u; e/(1 - e)^2 (r = 1/(1-e)
    # 2.31u, r^2 5.7u, times e in exp's backward: 2u + u) by 8.7u * 0.181 = 1.57u; accumulating adds
    # 0.07u: 2.39u (x <= -2 through e/(1 - e): 2.3u), in ulps of 1/12 (u/8): 19.2; the series branch
    # is far smaller (its derivative is a short polynomial of size 1/12). + 1/2 for rounding the
    # reference (pointwise measure) and rounded up: 21 ulps = 4.46 bits.
    budgets={"float32": Budget(bits_for_ulps(4.5), bits_for_ulps(21.0)),
             "float64": Budget(bits_for_ulps(4.5), bits_for_ulps(21.0))},
    fix="series below |x| = 2 and a cancellation-free closed form above, each branch fed a safe input "
        "where it is not selected (double where)",
    probe={"float32": 1e-3, "float64": 1e-7},
    probe_cancellation_bits=8,
    form_notes={
        "naive": "1/(1-exp(-x)) - 1/x",
        "patched": f"where(|x| < {PATCH_EPS:g}, 0.5 + x/12, naive)",
        "expm1": "1/(-expm1(-x)) - 1/x",
        "fixed": "series |x| < 2, closed form beyond (double where)",
    },
)
