"""What a case is: forms, references, the sweep, and what the tracer should find.

A case is a *one-parameter family*: every form maps a 1-d tensor ``x`` of sweep
parameters to a tensor of the same shape, element by element (a case over vectors,
such as ``log_softmax``, builds its vectors from ``x``), so ``autograd.grad(y.sum(), x)``
is the derivative at every point at once and one sweep gives the bits of error of the
value and of the gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import torch
from mpmath import mp

from ..reference import DEFAULT_DPS

#: Form names in the order they are reported and plotted.
FORM_ORDER = ("naive", "patched", "expm1", "fixed")


@dataclasses.dataclass(frozen=True)
class Domain:
    """The sweep: ``|x|`` log-spaced in [lo, hi] with ``points_per_decade``, for each sign in ``signs``.

    Every point is rounded to float32 first, so the same mpmath reference serves every
    dtype (the error measured is the form's, not the input's rounding).

    >>> Domain(1.0, 100.0, 1, signs=(1,)).points().tolist()
    [1.0, 10.0, 100.0]
    >>> Domain(1.0, 10.0, 1).points().tolist()
    [-10.0, -1.0, 1.0, 10.0]
    """

    lo: float
    hi: float
    points_per_decade: int = 8
    signs: tuple[int, ...] = (-1, 1)

    def magnitudes(self) -> np.ndarray:
        decades = math.log10(self.hi) - math.log10(self.lo)
        count = max(1, round(decades * self.points_per_decade))
        mags = np.logspace(math.log10(self.lo), math.log10(self.hi), count + 1)
        return mags.astype(np.float32).astype(np.float64)

    def points(self) -> np.ndarray:
        """Sorted sweep points (float64 values exact in float32)."""
        mags = self.magnitudes()
        parts = [sign * mags for sign in sorted(self.signs)]
        return np.unique(np.concatenate(parts))

    def describe(self) -> str:
        sign = "±" if len(self.signs) == 2 else ("-" if self.signs == (-1,) else "")
        return (f"x in {sign}[{self.lo:g}, {self.hi:g}], |x| log-spaced, {self.points_per_decade} points per decade "
                f"({len(self.points())} points)")

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "points_per_decade": self.points_per_decade,
                "signs": list(self.signs), "n_points": int(len(self.points())), "text": self.describe()}


@dataclasses.dataclass(frozen=True)
class Budget:
    """The stated accuracy of a form over the sweep: max bits of error of value and gradient.

    Every budget is a worst-case error bound, derived where it is stated, never a measured
    maximum (results differ between CPUs: ATen's vector path, ``ATEN_CPU_CAPABILITY``, sums
    and rounds differently). The conventions of those derivations:

    - ``u = 2**-p`` is the unit roundoff (float32 ``2**-24``, float64 ``2**-53``); each
      ``+ - * /`` rounds with relative error ``<= u`` (Higham, *Accuracy and Stability of
      Numerical Algorithms*, 2nd ed., sec. 2.2); ``exp``/``log``/``log1p`` are within 1 ulp
      (SLEEF's ``_u10`` functions used by ATen's vector paths, and glibc's libm), i.e.
      relative error ``<= 2u``.
    - a sum of ``n`` terms is taken in the worst order, sequentially: relative error
      ``<= gamma_(n-1)`` with ``gamma_n = n u / (1 - n u)`` (Higham sec. 3.1, 4.2); for
      ``n u << 1``, ``gamma_n`` is ``n u`` to well under 1 % (rounded up in the budgets).
    - an error ``E`` in ulps of ``M`` is ``E / spacing(M)`` with ``u M < spacing(M) <= 2 u M``;
      the reference is rounded to the dtype before comparing, which adds up to 1/2 ulp.
    - the bound ``N`` ulps becomes the budget in Herbie's metric: :func:`bits_for_ulps`.
    """

    value_bits: float
    grad_bits: float


@dataclasses.dataclass(frozen=True)
class Case:
    """One numerical trap: its forms, its references, its sweep and what should be found.

    ``naive``/``fixed`` (and ``patched`` where a user's patch is part of the story) map a
    1-d tensor of sweep parameters to values, elementwise. ``reference_mp(x)`` and
    ``gradient_mp(x)`` take an mpf and return an mpf, correct to ``dps`` digits (≥ 50);
    ``reference_f64`` is a float64 torch implementation whose autograd gradient is the
    float64 gradient reference. ``trigger[dtype]`` is an input at which the naive form
    fails in that dtype; ``expected_root_cause`` is the tracer's root-cause kind there
    (None when the naive form never goes non-finite: then ``silent`` says what goes
    wrong, and ``expected_warning`` names the loss-input warning that reveals it);
    ``root_cause_by_dtype`` overrides it for a dtype that fails differently.
    ``budgets[dtype]`` bounds the fixed form's bits of error over the whole sweep.
    ``floor``/``grad_floor`` > 0 measure errors of values below ``floor`` in ulps of
    ``floor`` (an absolute error: a loss term near 0 is summed with O(1) terms).
    """

    name: str
    title: str
    description: str
    family: str
    naive: Callable[[torch.Tensor], torch.Tensor]
    fixed: Callable[[torch.Tensor], torch.Tensor]
    reference_mp: Callable[[Any], Any]
    gradient_mp: Callable[[Any], Any]
    reference_f64: Callable[[torch.Tensor], torch.Tensor]
    domain: Domain
    trigger: dict[str, float]
    expected_root_cause: str | None
    budgets: dict[str, Budget]
    fix: str
    patched: Callable[[torch.Tensor], torch.Tensor] | None = None
    extra_forms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dataclasses.field(default_factory=dict)
    silent: str = ""
    expected_warning: str | None = None
    floor: float = 0.0
    grad_floor: float = 0.0
    root_cause_by_dtype: dict[str, str | None] = dataclasses.field(default_factory=dict)
    probe: dict[str, float] = dataclasses.field(default_factory=dict)
    probe_cancellation_bits: int | None = None
    form_notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def expected_root_cause_for(self, dtype: str) -> str | None:
        """``expected_root_cause``, unless ``root_cause_by_dtype`` says otherwise for ``dtype``."""
        return self.root_cause_by_dtype.get(dtype, self.expected_root_cause)

    @property
    def forms(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Every form of the case, in report order (naive, patched, expm1, fixed)."""
        available = {"naive": self.naive, "fixed": self.fixed, **self.extra_forms}
        if self.patched is not None:
            available["patched"] = self.patched
        ordered = {name: available[name] for name in FORM_ORDER if name in available}
        ordered.update({k: v for k, v in available.items() if k not in ordered})
        return ordered

    def evaluate(self, form: str, x, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, gradient)`` of one form at ``x`` (any array-like) in ``dtype``, elementwise."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype).reshape(-1).clone().requires_grad_(True)
        with torch.enable_grad():
            y = self.forms[form](t)
            (grad,) = torch.autograd.grad(y.sum(), t, allow_unused=True)
        grad = torch.zeros_like(t) if grad is None else grad
        return y.detach(), grad.detach()

    def gradient_f64(self, x) -> torch.Tensor:
        """The float64 gradient reference: autograd of ``reference_f64``."""
        t = torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1).clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.reference_f64(t).sum(), t)
        return grad.detach()

    def reference_values(self, x, dps: int = DEFAULT_DPS) -> list:
        """mpmath values at the points ``x`` (floats, exact in mpmath), each correct to ``dps`` digits."""
        with mp.workdps(dps):
            return [self.reference_mp(mp.mpf(v)) for v in np.asarray(x, dtype=np.float64).reshape(-1).tolist()]

    def reference_gradients(self, x, dps: int = DEFAULT_DPS) -> list:
        """mpmath derivatives at the points ``x``, each correct to ``dps`` digits."""
        with mp.workdps(dps):
            return [self.gradient_mp(mp.mpf(v)) for v in np.asarray(x, dtype=np.float64).reshape(-1).tolist()]


def bits_for_ulps(ulps: float) -> float:
    """Herbie's bits of error of an error of ``ulps`` ulps: ``log2(1 + ulps)``.

    >>> bits_for_ulps(0), bits_for_ulps(1), bits_for_ulps(3), bits_for_ulps(15)
    (0.0, 1.0, 2.0, 4.0)
    """
    return math.log2(1.0 + ulps)


def guarded(fn: Callable[[Any], Any], x, lost_digits: float) -> Any:
    """Evaluate ``fn(x)`` with ``lost_digits`` (plus 15) guard digits, then round to ``mp.dps``.

    For formulas that cancel (``1/(1-e^{-x}) - 1/x`` loses about ``-log10|x|`` digits) the
    result is then correct to the caller's precision, not merely computed at it.
    """
    dps = mp.dps
    with mp.workdps(dps + 15 + int(math.ceil(max(0.0, lost_digits)))):
        value = fn(mp.mpf(x))
    return +value  # rounded to the caller's precision


def digits_below_one(x) -> float:
    """``-log10|x|`` for |x| < 1 (0 otherwise, and for x = 0)."""
    if x == 0:
        return 0.0
    magnitude = float(mpmath.log10(abs(mp.mpf(x))))
    return max(0.0, -magnitude)


def dtype_budget(budgets: dict[str, Budget], dtype: str) -> Budget | None:
    return budgets.get(dtype)
