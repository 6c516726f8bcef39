"""Every threshold the diagnostics rest on, tested just below and just above it.

A threshold that moved by a bit or two (or a ``>=`` that became ``>``) leaves the
end-to-end tests green; these do not. The float facts are checked by what IEEE
arithmetic does at the boundary (``exp`` just inside / just outside a limit), not by
comparing the code with itself.
"""

import math

import numpy as np
import pytest
import torch

from stablenca import check, floats
from stablenca.trace.records import _exp_limits as tracer_exp_limits
from stablenca import reference as ref
from stablenca.trace import trace_call

DTYPES = ("float16", "bfloat16", "float32", "float64")


def _exp(x: float, dtype: str) -> float:
    """exp(x) correctly rounded to ``dtype``.

    float32/float64: torch's own exp (the input is exact there at these magnitudes). float16 and
    bfloat16 round the *input* coarsely (spacing 1/64 and 1/2 near the limits), which would move
    the boundary, so there exp is evaluated in float64 and the result rounded to the dtype.
    """
    if dtype in ("float32", "float64"):
        return torch.exp(torch.tensor([x], dtype=getattr(torch, dtype))).item()
    return torch.exp(torch.tensor([x], dtype=torch.float64)).to(getattr(torch, dtype)).item()


def _tiny(dtype: str) -> float:
    return torch.finfo(getattr(torch, dtype)).tiny


# --------------------------------------------------------------------------- exp limits (stablenca.floats)


#: How far inside/outside each limit we probe: 1e-3, or where the dtype's rounding blurs the boundary
#: (a value within 2^-p of the limit rounds onto it), 2^-(p-2) in x: bfloat16 0.016, float16 0.002.
H = {"float16": 2.0 ** -9, "bfloat16": 2.0 ** -6, "float32": 1e-3, "float64": 1e-3}


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_limits_are_where_exp_leaves_the_normal_range_and_becomes_zero(dtype):
    normal, zero = floats.exp_limits(dtype)
    h = H[dtype]
    assert _exp(-(normal - h), dtype) >= _tiny(dtype) > _exp(-(normal + h), dtype) > 0
    assert _exp(-(zero - h), dtype) > 0 and _exp(-(zero + h), dtype) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_tracer_exp_limits_are_where_exp_underflows_to_zero_and_overflows(dtype):
    to_zero, overflow = tracer_exp_limits(getattr(torch, dtype))
    h = H[dtype]
    assert _exp(to_zero + h, dtype) > 0 and _exp(to_zero - h, dtype) == 0.0
    assert math.isfinite(_exp(overflow - h, dtype)) and _exp(overflow + h, dtype) == math.inf


def test_theory_window_is_built_from_the_exp_limits():
    # The ratio loss breaks between the normal limit / kappa and the zero limit.
    for dtype in ("float32", "float64"):
        normal, zero = floats.exp_limits(dtype)
        assert check.theory_window(dtype) == (normal / check.KAPPA, zero)


# --------------------------------------------------------------------------- the tracer's cancellation threshold


def _cancellation(minuend: float, subtrahend: float, dtype: torch.dtype, bits=None):
    """The tracer's cancellation precursor (or None) for minuend - subtrahend, both exact in dtype.

    The subtrahend passes through ``* 1`` first: a computed, non-integer value, which the tracer
    treats as inexact (a difference of given inputs is exact and never a cancellation).
    """
    a = torch.tensor([minuend], dtype=dtype)
    one = torch.ones(1, dtype=dtype)
    result = trace_call(lambda b: a - b * one, torch.tensor([subtrahend], dtype=dtype), cancellation_bits=bits)
    found = [p for p in result.precursors if p.kind == "cancellation"]
    return found[0] if found else None


@pytest.mark.parametrize("dtype, default_bits", [(torch.float32, 12), (torch.float64, 26)])
def test_cancellation_is_flagged_from_exactly_half_the_significand(dtype, default_bits):
    # 1 - (1 - 2^-k) = 2^-k exactly (Sterbenz): log2(max|operand| / |result|) = k bits lost.
    for k, flagged in ((default_bits - 1, False), (default_bits, True), (default_bits + 1, True)):
        found = _cancellation(1.0, 1.0 - 2.0 ** -k, dtype)
        assert (found is not None) == flagged, (k, found)
    # A fraction of a bit either side of the threshold: result 2^-k (1 +- 2^-6).
    just_below = 1.0 - 2.0 ** -default_bits * (1 + 2.0 ** -6)   # 11.98 bits lost in float32
    just_above = 1.0 - 2.0 ** -default_bits * (1 - 2.0 ** -6)   # 12.02 bits
    assert _cancellation(1.0, just_below, dtype) is None
    found = _cancellation(1.0, just_above, dtype)
    assert found is not None and f"lost ≥ {default_bits} of" in found.detail


@pytest.mark.parametrize("dtype, default_bits", [(torch.float32, 12), (torch.float64, 26)])
def test_only_the_results_past_the_threshold_are_counted(dtype, default_bits):
    # One tensor, so the tracer's quick pre-check passes (one result is past the threshold): the
    # count must still leave out the results a bit, or a fraction of a bit, short of it.
    p = 24 if dtype == torch.float32 else 53
    a = torch.ones(3, dtype=dtype)
    subtrahends = torch.tensor([1.0 - 2.0 ** -default_bits, 1.0 - 2.0 ** -(default_bits - 1),
                                1.0 - 2.0 ** -default_bits * (1 + 2.0 ** -6)], dtype=dtype)
    result = trace_call(lambda b: a - b * torch.ones(1, dtype=dtype), subtrahends)
    (found,) = [x for x in result.precursors if x.kind == "cancellation"]
    assert found.detail.startswith(f"1 of 3 results lost ≥ {default_bits} of {p} significand bits"), found.detail


def test_cancellation_bits_argument_moves_the_threshold():
    assert _cancellation(1.0, 1.0 - 2.0 ** -7, torch.float32, bits=8) is None
    assert _cancellation(1.0, 1.0 - 2.0 ** -8, torch.float32, bits=8) is not None
    assert _cancellation(1.0, 1.0 - 2.0 ** -8, torch.float32) is None  # default 12 bits


def test_difference_of_given_inputs_is_exact_and_never_a_cancellation():
    a = torch.tensor([1.0])
    result = trace_call(lambda b: a - b, torch.tensor([1.0 - 2.0 ** -20]))
    assert not [p for p in result.precursors if p.kind == "cancellation"]


def test_cancellation_to_exactly_zero_is_always_flagged():
    found = _cancellation(1.5, 1.5, torch.float32, bits=40)  # more bits than float32 has: only exact 0 counts
    assert found is not None and "cancelled to exactly 0.0" in found.detail


# --------------------------------------------------------------------------- Herbie's bits of error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ulps, bits", [(0, 0.0), (1, 1.0), (3, 2.0), (7, 3.0)])
def test_bits_of_error_is_log2_of_one_plus_the_ulp_distance(dtype, ulps, bits):
    # x = 1.5 moved by k ulps, reference exactly 1.5: log2(1 + k), so 1 ulp is 1 bit (not 0) and 3 are 2.
    spacing = ref.spacing(1.5, dtype)
    got = torch.tensor(1.5 + ulps * spacing, dtype=dtype)
    assert ref.bits_of_error(got, 1.5, dtype) == bits
    assert ref.bits_of_error(-got, -1.5, dtype) == bits
    # The same with a floor: an absolute error of k ulps of 1 at a tiny reference.
    tiny = torch.tensor(ulps * ref.spacing(1.0, dtype), dtype=dtype)
    assert ref.bits_of_error(tiny, 0.0, dtype, floor=1.0) == bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ulps, bits", [(0, 0.0), (1, 1.0), (3, 2.0), (7, 3.0)])
def test_gradient_bits_of_error_is_log2_of_one_plus_the_normwise_ulps(dtype, ulps, bits):
    reference = np.array([0.75, -0.125, 0.0])
    got = reference.copy()
    got[1] += ulps * ref.spacing(0.75, dtype)  # in ulps of the largest entry
    assert ref.gradient_bits_of_error(got, reference, dtype) == bits
    # with a floor above max|r|: ulps of the floor
    floored = reference.copy()
    floored[2] += ulps * ref.spacing(4.0, dtype)
    assert ref.gradient_bits_of_error(floored, reference, dtype, floor=4.0) == bits


def test_bits_of_error_rounds_the_reference_first():
    # The reference 1 + 0.4 ulp rounds to 1: a computed 1.0 has 0 bits; 1 + 0.6 ulp rounds up: 1 bit.
    ulp = 2.0 ** -23
    assert ref.bits_of_error(torch.tensor(1.0), 1 + 0.4 * ulp, torch.float32) == 0.0
    assert ref.bits_of_error(torch.tensor(1.0), 1 + 0.6 * ulp, torch.float32) == 1.0
