"""The exact value of one op's elements in mpmath, where a float64 recompute overflows too.

A float64 recompute tells an overflow of the working dtype (the exact value is finite) from a
pole (it is infinite) only while float64 can hold the exact value. ``700 ** 200`` = 1.05e569
and ``exp(1000)`` are finite numbers beyond float64's 1.8e308. For the elements where float64
gives ±inf too, an elementwise op with an mpmath form (registered as the ``mpmath`` fact in
:mod:`stablenca.trace.registry`) is evaluated in mpmath, whose exponent range is unbounded:
a finite value there is an overflow, an infinite one (or an mpmath pole) a pole.

>>> import torch
>>> from stablenca.trace.ops import op_info
>>> from stablenca.trace.detectors import OpCall
>>> pow_ = torch.ops.aten.pow.Tensor_Scalar
>>> x = torch.tensor([700.0, 2.0])
>>> out = torch.pow(x, 200.0)
>>> infinite, largest = exact_infinite(OpCall(op_info(pow_), pow_, (x, 200.0), {}, out), torch.isinf(out))
>>> infinite.tolist(), largest
([False, False], '1.05e+569')
"""

from __future__ import annotations

import torch
from mpmath import mp

from .detectors import OpCall
from .ops import _broadcast

#: Significant digits of the evaluation: only whether the value is finite, and its magnitude to
#: three digits for the message, are read, so a few guard digits beyond float64's 17 suffice.
_DPS = 30
#: Cost bound (one mpmath call per element): beyond it the question stays undecided.
_MAX_ELEMENTS = 1024


def exact_infinite(call: OpCall, where: torch.Tensor) -> tuple[torch.Tensor, str | None] | None:
    """Which elements at ``where`` are infinite in exact arithmetic, and the largest finite magnitude.

    Returns ``(mask over the output, largest finite exact |value| as text or None)``, or None when
    undecided: the op has no mpmath form, is not elementwise, wrote in place without the tracer
    keeping its input (:attr:`OpCall.before`), or ``where`` holds more than ``_MAX_ELEMENTS`` elements.
    """
    info, out = call.info, call.out
    fn = info.facts.mpmath
    if fn is None or not info.elementwise or (info.written and not call.before):
        return None
    n = int(where.sum())
    arity = fn.__code__.co_argcount
    if n > _MAX_ELEMENTS or len(call.args) < arity:
        return None
    columns = []
    for a in call.args[:arity]:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            b = _broadcast(a.detach().to(torch.float64), out.shape)
            if b is None:
                return None
            columns.append(b[where].tolist())
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            columns.append([float(a)] * n)
        else:
            return None
    infinite = []
    largest = None
    with mp.workdps(_DPS):
        for values in zip(*columns):
            try:
                v = fn(*(mp.mpf(x) for x in values))
            except (ZeroDivisionError, ValueError):  # mpmath's pole
                infinite.append(True)
                continue
            finite = bool(mp.isfinite(v))
            infinite.append(not finite)
            if finite and (largest is None or abs(v) > largest):
                largest = abs(v)
        text = None if largest is None else mp.nstr(largest, 3, min_fixed=0, max_fixed=0)
    mask = torch.zeros(out.shape, dtype=torch.bool, device=where.device)
    mask[where] = torch.tensor(infinite, dtype=torch.bool, device=where.device)
    return mask, text
