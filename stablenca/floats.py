"""The one table of floating-point facts: the dtypes stablenca knows and their limits.

Everything is derived from ``torch.finfo`` (IEEE 754 binary16, binary32, binary64 and
bfloat16); nothing is typed in twice. An unknown dtype is a :class:`ConfigError`,
never silently float32.

The exp limits, for round-to-nearest (what every libm and torch kernel gives at these
boundaries):

* ``exp_normal = -ln(tiny)``: ``exp(-d)`` leaves the normal range (becomes subnormal,
  with fewer significand bits) for ``d > exp_normal``;
* ``exp_zero = -ln(smallest_subnormal / 2)``: ``exp(-d)`` rounds to exactly 0.0 for
  ``d > exp_zero`` (below half the smallest subnormal, ties to even give 0);
* ``ln_max = ln(max)``: ``exp(x)`` for ``x > ln_max`` exceeds the largest finite
  value (it rounds to inf from ``ln(max + ulp(max)/2)``, a hair above; the tracer
  reports against ``ln_max``).

>>> [round(x, 2) for x in exp_limits("float32")], [round(x, 1) for x in exp_limits("float64")]
([87.34, 103.97], [708.4, 745.1])
>>> import torch
>>> facts("bfloat16").significand_bits, facts(torch.float16).unit_roundoff == 2 ** -11
(8, True)
>>> as_dtype("float8")
Traceback (most recent call last):
...
stablenca.errors.ConfigError: unknown dtype 'float8'; fix: use one of float16, bfloat16, float32, float64
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

#: The floating dtypes stablenca measures, narrowest first.
DTYPE_NAMES: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
#: The dtypes training runs in (the models and their defaults are not tuned for half precision).
TRAIN_DTYPES: tuple[str, ...] = ("float32", "float64")


@functools.cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    # torch is imported on first use, not with this module: the CLI's argument parsers read
    # DTYPE_NAMES, and `stablenca --help` should not pay for torch.
    import torch

    return {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclasses.dataclass(frozen=True)
class FloatFacts:
    """The facts of one floating format, all derived from ``torch.finfo``."""

    name: str
    dtype: torch.dtype
    bit_width: int  # storage bits: the most bits of error a value can have
    significand_bits: int  # p, the implicit bit included: 11, 8, 24, 53
    min_exponent: int  # of the smallest normal number, 2**min_exponent
    max_exponent: int  # of the largest finite number, < 2**(max_exponent + 1)
    tiny: float  # smallest normal number
    smallest_subnormal: float
    max: float
    eps: float  # 2**(1 - p), the gap above 1.0
    unit_roundoff: float  # eps / 2, the relative error bound of one rounding
    exp_normal: float  # -ln(tiny)
    exp_zero: float  # -ln(smallest_subnormal / 2)
    ln_max: float  # ln(max)
    int_dtype: torch.dtype  # the signed integer type of the same width


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` or ``torch.float32`` → ``torch.float32``; anything else is a :class:`ConfigError`."""
    known = _torch_dtypes()
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in known:
        return known[dtype.removeprefix("torch.")]
    if not isinstance(dtype, str) and any(dtype is d for d in known.values()):
        return dtype
    raise ConfigError(f"unknown dtype {dtype!r}", fix=f"use one of {', '.join(DTYPE_NAMES)}")


def dtype_name(dtype: str | torch.dtype) -> str:
    """``torch.float32`` or ``"float32"`` → ``"float32"``."""
    return _facts(as_dtype(dtype)).name


@functools.cache
def _facts(dtype: torch.dtype) -> FloatFacts:
    import torch  # lazy, as in _torch_dtypes

    name = next(n for n, d in _torch_dtypes().items() if d is dtype)
    info = torch.finfo(dtype)
    p = int(round(-math.log2(info.eps))) + 1
    min_exponent = int(round(math.log2(info.tiny)))
    max_exponent = math.frexp(info.max)[1] - 1
    smallest_subnormal = math.ldexp(1.0, min_exponent - (p - 1))
    return FloatFacts(
        name=name, dtype=dtype, bit_width=info.bits, significand_bits=p,
        min_exponent=min_exponent, max_exponent=max_exponent, tiny=float(info.tiny),
        smallest_subnormal=smallest_subnormal, max=float(info.max), eps=float(info.eps),
        unit_roundoff=float(info.eps) / 2,
        exp_normal=-math.log(info.tiny),
        # Summed in logs: float64's smallest_subnormal / 2 is itself 0.0 as a Python float.
        exp_zero=-(math.log(smallest_subnormal) - math.log(2.0)),
        ln_max=math.log(info.max),
        int_dtype={16: torch.int16, 32: torch.int32, 64: torch.int64}[info.bits],
    )


def facts(dtype: str | torch.dtype) -> FloatFacts:
    """The :class:`FloatFacts` of a dtype (by name or torch dtype)."""
    return _facts(as_dtype(dtype))


def significand_bits(dtype: str | torch.dtype) -> int:
    """p, the implicit bit included: float16 11, bfloat16 8, float32 24, float64 53."""
    return facts(dtype).significand_bits


def bit_width(dtype: str | torch.dtype) -> int:
    """Storage bits: 16, 16, 32, 64 (the most bits of error)."""
    return facts(dtype).bit_width


def exp_limits(dtype: str | torch.dtype) -> tuple[float, float]:
    """``(exp_normal, exp_zero)``: ``exp(-d)`` is subnormal beyond the first, exactly 0.0 beyond the second."""
    f = facts(dtype)
    return f.exp_normal, f.exp_zero


def exp_underflow_overflow(dtype: str | torch.dtype) -> tuple[float, float]:
    """``(x below which exp(x) rounds to 0.0, x above which exp(x) exceeds max)`` = ``(-exp_zero, ln_max)``."""
    f = facts(dtype)
    return -f.exp_zero, f.ln_max
