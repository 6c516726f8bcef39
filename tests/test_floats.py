"""stablenca.floats against the IEEE 754 parameters and mpmath, not against itself.

The format parameters below are typed in from the standards (IEEE 754-2019 table 3.5 for
binary16/32/64; bfloat16 is binary32's exponent with a 7-bit stored significand), so a
wrong derivation from ``torch.finfo`` in floats.py cannot agree with them by construction.
"""

from __future__ import annotations

import math

import pytest
import torch
from mpmath import mp

from stablenca import floats
from stablenca.errors import StableNCAError

# name: (significand bits p incl. the implicit one, emin, emax, storage bits)
IEEE = {
    "float16": (11, -14, 15, 16),
    "bfloat16": (8, -126, 127, 16),
    "float32": (24, -126, 127, 32),
    "float64": (53, -1022, 1023, 64),
}

# A limit is computed with a few float64 operations (math.log is within 1 ulp, then one
# subtraction): at most ~4 units of 2**-53 relative. 1e-9 relative is far outside that and far
# inside the gap to any other boundary, so the +-DELTA probes land on the intended sides.
DELTA = 1e-9


def test_the_dtype_list_is_the_four_formats():
    assert floats.DTYPE_NAMES == tuple(IEEE)
    assert set(floats.TRAIN_DTYPES) <= set(floats.DTYPE_NAMES)


@pytest.mark.parametrize("name", list(IEEE))
def test_format_parameters_match_ieee(name):
    p, emin, emax, width = IEEE[name]
    f = floats.facts(name)
    assert (f.significand_bits, f.min_exponent, f.max_exponent, f.bit_width) == (p, emin, emax, width)
    assert f.dtype is getattr(torch, name) and floats.as_dtype(f.dtype) is f.dtype
    # Exact powers of two: equality, not a tolerance.
    assert f.tiny == 2.0 ** emin
    assert f.smallest_subnormal == math.ldexp(1.0, emin - p + 1)
    assert f.max == (2 - 2.0 ** (1 - p)) * 2.0 ** emax
    assert f.eps == 2.0 ** (1 - p) and f.unit_roundoff == 2.0 ** -p
    assert f.int_dtype.itemsize * 8 == width


@pytest.mark.parametrize("name", list(IEEE))
def test_exp_limits_against_mpmath(name):
    p, emin, emax, _ = IEEE[name]
    f = floats.facts(name)
    with mp.workdps(40):
        tiny = mp.mpf(2) ** emin
        half_subnormal = mp.mpf(2) ** (emin - p + 1) / 2
        largest = (2 - mp.mpf(2) ** (1 - p)) * mp.mpf(2) ** emax
        for computed, exact in ((f.exp_normal, -mp.log(tiny)), (f.exp_zero, -mp.log(half_subnormal)),
                                (f.ln_max, mp.log(largest))):
            assert abs(mp.mpf(computed) - exact) <= 4 * 2.0 ** -53 * abs(exact)
        # The defining properties, evaluated exactly enough in mpmath.
        assert mp.exp(-f.exp_normal * (1 - DELTA)) > tiny > mp.exp(-f.exp_normal * (1 + DELTA))
        assert mp.exp(-f.exp_zero * (1 - DELTA)) > half_subnormal > mp.exp(-f.exp_zero * (1 + DELTA))
        assert mp.exp(f.ln_max * (1 - DELTA)) < largest < mp.exp(f.ln_max * (1 + DELTA))


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
def test_exp_zero_is_where_the_cast_rounds_to_zero(name):
    # torch's cast rounds to nearest, but float64 -> float16 goes through float32 (two roundings):
    # a probe closer to the tie than float32's unit roundoff 2**-24 would land exactly on it and
    # round to even (0). So probe at 1e-6 relative in the exponent: a factor 1 +- 1.7e-5 in value.
    f = floats.facts(name)
    inside = float(mp.exp(-f.exp_zero * (1 - 1e-6)))
    outside = float(mp.exp(-f.exp_zero * (1 + 1e-6)))
    values = torch.tensor([inside, outside], dtype=torch.float64).to(f.dtype)
    assert values[0] == f.smallest_subnormal and values[1] == 0
    overflow = torch.tensor([float(mp.exp(f.ln_max * (1 + DELTA)) * 1.01)], dtype=torch.float64).to(f.dtype)
    assert torch.isinf(overflow).all()


def test_exp_underflow_overflow_is_the_tracer_view():
    f = floats.facts("float32")
    assert floats.exp_underflow_overflow("float32") == (-f.exp_zero, f.ln_max)
    assert floats.exp_limits(torch.float32) == (f.exp_normal, f.exp_zero)


@pytest.mark.parametrize("bad", ["float8", "int32", torch.int64, torch.complex64, None])
def test_unknown_dtype_is_an_error_never_float32(bad):
    with pytest.raises(StableNCAError, match="unknown dtype"):
        floats.as_dtype(bad)
    with pytest.raises(StableNCAError):
        floats.facts(bad)


def test_names_and_dtypes_round_trip():
    for name in floats.DTYPE_NAMES:
        assert floats.dtype_name(floats.as_dtype(name)) == name
        assert floats.dtype_name(f"torch.{name}") == name
