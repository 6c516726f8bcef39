"""The pattern of a NaN/Inf: a pure function from the op that made it to a :class:`NanVerdict`.

:func:`analyse` tries the op's own rule first (registered per op packet with
:func:`~stablenca.trace.registry.register`, like ``torch.utils.flop_counter``'s formulas:
``0/0`` and ``x/0`` for a division, ``log(0)``, ``inf-inf`` ...), then decides from the values
alone: an empty input of a fused op is an empty set; with finite inputs, the op is recomputed
once in float64 (and where float64 overflows too, in mpmath: :mod:`stablenca.trace.exact`),
and a result that is infinite there too is a ``pole``, a NaN there too a ``domain`` error, and
a finite one an ``overflow`` of the working dtype.

>>> import torch
>>> from stablenca.trace.ops import op_info
>>> from stablenca.trace.detectors import OpCall
>>> x = torch.tensor([0.0, 2.0])
>>> out = torch.log(x)
>>> call = OpCall(op_info(torch.ops.aten.log.default), torch.ops.aten.log.default, (x,), {}, out)
>>> v = analyse(call, torch.isnan(out), torch.isinf(out))
>>> v.pattern, v.kind, [lead.arg for lead in v.explain]
('log(0)', 'division_by_zero', [0])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import torch

from .detectors import OpCall, indexed_broadcast_operands
from .exact import exact_infinite
from .ops import _INF, _as_operand, _broadcast, _flat_tensors, _recompute_float64, _reduce_dims, restored_args
from .provenance import _BAD, _INEXACT, _INFOK, _SMALL, _ZERO
from .records import _dtype_name, _exp_limits, _fmt, _n
from .registry import aten, register

_ANY_UP = _ZERO | _INFOK | _BAD | _INEXACT


class Lead(NamedTuple):
    """An input to follow back from a NaN/Inf: which argument, for which taint, at which elements."""

    arg: Any  # position or keyword
    tensor: torch.Tensor | None
    need: int  # taint bits worth following (provenance._ZERO ...)
    positions: torch.Tensor | None  # bool mask over the output, or None for every element


class Flag(NamedTuple):
    """The NaN/Inf is itself a precursor (an overflow, an empty set, a pole)."""

    kind: str
    detail: str
    count: int


@dataclasses.dataclass
class NanVerdict:
    """Why an op's output is NaN/Inf: ``pattern`` (``0/0``, ``log(0)``, ``overflow`` ...), the
    root-cause ``kind`` when nothing upstream explains it, the inputs to follow back, and
    ``precursor`` when the op itself is one."""

    pattern: str
    kind: str
    explain: list[Lead]
    precursor: Flag | None = None


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _leads(tensors, need: int) -> list[Lead]:
    return [Lead(i, a, need, None) for i, a in tensors]


def analyse(call: OpCall, pos_nan: torch.Tensor, pos_inf: torch.Tensor) -> NanVerdict:
    """The verdict for ``call``'s non-finite output (NaN at ``pos_nan``, ±inf at ``pos_inf``)."""
    info, args, kwargs, out = call.info, call.args, call.kwargs, call.out
    dtype, shape = out.dtype, out.shape
    written, rule = info.written, info.rule
    if written and call.before:  # the tracer kept what the in-place op overwrote: analyse what it read
        args = restored_args(args, call.before)
        call = dataclasses.replace(call, args=args)
        written, rule = (), info.family_rule
    tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
               and i not in written]
    finite_inputs = all(bool(torch.isfinite(a).all()) for _, a in tensors)
    base = info.base
    if written:
        if base == "div" and len(args) > 1:  # the divisor survives an in-place division
            b = _broadcast(_as_operand(args[1], out), shape)
            if b is not None and _count((pos_nan | pos_inf) & (b == 0)):
                z = (pos_nan | pos_inf) & (b == 0)
                tb = args[1] if isinstance(args[1], torch.Tensor) else None
                return NanVerdict("x/0 (in-place)", "division_by_zero", [Lead(1, tb, _ZERO, z)])
        base = "<in-place>"  # the overwritten operand is gone: only the generic analysis applies
    if rule is not None:
        found = rule(call, pos_nan, pos_inf, tensors)
        if found is not None:
            return found

    # generic: decided by properties of this op's values, not by its name
    empty = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() and a.numel() == 0]
    if empty and _count(pos_nan):  # a fused op (a loss) that reduced over nothing
        n = _count(pos_nan)
        return NanVerdict("reduction over an empty set", "empty_set", [],
                          Flag("empty_set", f"{info.short} reduced over 0 elements (input {empty[0]} is empty) → NaN",
                               n))
    if finite_inputs:
        n_inf = _count(pos_inf & ~pos_nan)
        n_nan = _count(pos_nan)
        exact = _recompute_float64(call.func, args, kwargs, out)
        beyond, recompute = "", "float64 recompute"
        if exact is not None:
            inf64 = (pos_inf | pos_nan) & torch.isinf(exact)
            e_inf = 0
            if bool(inf64.any()):
                # float64 is itself finite-ranged (700 ** 200, exp(1000)): where it overflows too,
                # mpmath decides; an op without an mpmath form trusts float64 only while every input
                # is below float64's exp limit (709.78)
                decided = exact_infinite(call, inf64)
                if decided is not None:
                    e_inf, recompute = _count(decided[0]), "float64 and mpmath recompute"
                    if decided[1] is not None:
                        beyond = f"; the exact value, up to {decided[1]} (mpmath), is beyond float64 too"
                else:
                    big = max((float(a.abs().max()) for _, a in tensors if a.numel()), default=0.0)
                    e_inf = _count(inf64) if big < math.log(torch.finfo(torch.float64).max) else 0
            e_nan = _count((pos_inf | pos_nan) & torch.isnan(exact))
            if e_inf:
                lo_in = min((float(a.min()) for _, a in tensors if a.numel()), default=0.0)
                hi_in = max((float(a.max()) for _, a in tensors if a.numel()), default=0.0)
                d = (f"{_n(e_inf, 'result')} infinite in exact arithmetic too ({recompute}: ±inf, inputs "
                     f"from {_fmt(lo_in)} to {_fmt(hi_in)}): a pole or an infeasible problem, not an overflow")
                return NanVerdict("pole", "pole", _leads(tensors, _ZERO | _INEXACT), Flag("pole", d, e_inf))
            if e_nan:
                return NanVerdict("NaN from finite inputs", "domain", _leads(tensors, _INEXACT | _ZERO))
        if n_inf and not n_nan:
            return NanVerdict("overflow", "overflow", _leads(tensors, _INEXACT | _SMALL),
                              Flag("overflow", overflow_detail(base, tensors, dtype, n_inf) + beyond, n_inf))
        return NanVerdict("NaN from finite inputs", "domain", _leads(tensors, _INEXACT | _ZERO))
    if _count(pos_nan):
        return NanVerdict("NaN from infinite inputs", "unknown", _leads(tensors, _INFOK | _BAD))
    n_inf = _count(pos_inf)
    return NanVerdict("overflow", "overflow", _leads(tensors, _INEXACT | _SMALL | _INFOK),
                      Flag("overflow", overflow_detail(base, tensors, dtype, n_inf), n_inf))


def new_inf(call: OpCall, float_outs) -> bool:
    """An elementwise op that put ±inf where all its inputs were finite (hidden overflow)."""
    info = call.info
    if not info.elementwise or len(float_outs) != 1 or info.facts.no_overflow:
        return False
    out = float_outs[0]
    fresh = torch.isinf(out)
    for _, a in _flat_tensors(call.args, call.kwargs):
        if a.dtype.is_floating_point:
            fa = _broadcast(torch.isfinite(a), out.shape)
            if fa is None:
                return False
            fresh = fresh & fa
    return bool(fresh.any())


def overflow_detail(base: str, tensors, dtype: torch.dtype, n: int) -> str:
    big = 0.0
    for _, a in tensors:
        fa = a[torch.isfinite(a)]
        if fa.numel():
            big = max(big, float(fa.abs().max()))
    if base in ("exp", "exp2", "expm1"):
        lim = _exp_limits(dtype)[1]
        if base == "exp2":
            lim /= math.log(2)
        return (f"{_n(n, 'finite input')} → inf (largest input {_fmt(big)}; {_dtype_name(dtype)} "
                f"{base}(x) overflows above {lim:.2f})")
    return (f"{_n(n, 'finite result')} beyond ±{_fmt(torch.finfo(dtype).max)} → ±inf "
            f"(largest input magnitude {_fmt(big)})")


# -- the ops' own rules: rule(call, pos_nan, pos_inf, tensors) -> NanVerdict or None --------------


def _tensor_arg(args, i):
    return args[i] if 0 <= i < len(args) and isinstance(args[i], torch.Tensor) else None


def _operands(call: OpCall):
    return indexed_broadcast_operands(call.info, call.args, call.kwargs, call.out, call.out.shape)


@register(aten.div, aten.true_divide, aten.reciprocal)
def _division(call, pos_nan, pos_inf, tensors):
    ops = _operands(call)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta, tb = (call.args[ia] if ia >= 0 else None), call.args[ib]
    z00 = pos_nan & (a == 0) & (b == 0)
    if _count(z00):
        return NanVerdict("0/0", "division_by_zero", [Lead(ia, ta, _ZERO, z00), Lead(ib, tb, _ZERO, z00)])
    zx0 = pos_inf & (b == 0) & torch.isfinite(a)
    if _count(zx0):
        return NanVerdict("1/0" if call.info.base == "reciprocal" else "x/0", "division_by_zero",
                          [Lead(ib, tb, _ZERO, zx0)])
    iii = pos_nan & torch.isinf(a) & torch.isinf(b)
    if _count(iii):
        return NanVerdict("inf/inf", "unknown", [Lead(ia, ta, _INFOK | _BAD, iii), Lead(ib, tb, _INFOK | _BAD, iii)])
    ovf = pos_inf & (b != 0) & torch.isfinite(a) & torch.isfinite(b)
    if _count(ovf):
        n = _count(ovf)
        return NanVerdict("overflow", "overflow", [Lead(ia, ta, _INEXACT | _SMALL, None),
                                                   Lead(ib, tb, _INEXACT | _SMALL, None)],
                          Flag("overflow", overflow_detail(call.info.base, tensors, call.out.dtype, n), n))
    return None


@register(aten.log, aten.log2, aten.log10, aten.log1p)
def _logarithm(call, pos_nan, pos_inf, tensors):
    x, pole = call.args[0], call.info.facts.pole
    at_pole = pos_inf & (x == pole)
    if _count(at_pole):
        pattern = "log(0)" if pole == 0 else "log1p(-1)"
        return NanVerdict(pattern, "division_by_zero", [Lead(0, x, _ZERO if pole == 0 else _ANY_UP, at_pole)])
    below = pos_nan & (x < pole)
    if _count(below):
        return NanVerdict("log(negative)", "domain", [Lead(0, x, _INEXACT | _ZERO, below)])
    return None


@register(aten.sqrt, aten.rsqrt)
def _square_root(call, pos_nan, pos_inf, tensors):
    x, base = call.args[0], call.info.base
    if base == "rsqrt":
        z = pos_inf & (x == 0)
        if _count(z):
            return NanVerdict("1/sqrt(0)", "division_by_zero", [Lead(0, x, _ZERO, z)])
    neg = pos_nan & (x < 0)
    if _count(neg):
        return NanVerdict(f"{base}(negative)", "domain", [Lead(0, x, _INEXACT | _ZERO, neg)])
    return None


@register(aten.pow)
def _power(call, pos_nan, pos_inf, tensors):
    ops = _operands(call)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta = _tensor_arg(call.args, ia)
    frac = pos_nan & (a < 0) & (b != torch.round(b))
    if _count(frac):
        return NanVerdict("pow(negative, fractional)", "domain", [Lead(ia, ta, _INEXACT | _ZERO, frac)])
    zneg = pos_inf & (a == 0) & (b < 0)
    if _count(zneg):
        return NanVerdict("0^negative", "division_by_zero", [Lead(ia, ta, _ZERO, zneg)])
    return None


@register(aten.mul)
def _product(call, pos_nan, pos_inf, tensors):
    ops = _operands(call)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta, tb = _tensor_arg(call.args, ia), _tensor_arg(call.args, ib)
    za = pos_nan & (a == 0) & torch.isinf(b)
    zb = pos_nan & torch.isinf(a) & (b == 0)
    explain = []
    if _count(za):
        explain += [Lead(ib, tb, _INFOK | _BAD, za), Lead(ia, ta, _ZERO, za)]
    if _count(zb):
        explain += [Lead(ia, ta, _INFOK | _BAD, zb), Lead(ib, tb, _ZERO, zb)]
    return NanVerdict("0*inf", "unknown", explain) if explain else None


@register(aten.add, aten.sub, aten.rsub)
def _sum_of_infinities(call, pos_nan, pos_inf, tensors):
    ops = _operands(call)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ii = pos_nan & torch.isinf(a) & torch.isinf(b)
    if not _count(ii):
        return None
    ta, tb = _tensor_arg(call.args, ia), _tensor_arg(call.args, ib)
    return NanVerdict("inf-inf", "unknown", [Lead(ia, ta, _INFOK | _BAD, ii), Lead(ib, tb, _INFOK | _BAD, ii)])


@register(aten._softmax, aten._log_softmax)
def _softmax_of_masked_row(call, pos_nan, pos_inf, tensors):
    x, args, out = call.args[0], call.args, call.out
    dim = args[1] if len(args) > 1 else -1
    rows = torch.all(x == -_INF, dim=dim, keepdim=True) if x.dim() else (x == -_INF)
    m = pos_nan & _broadcast(rows, out.shape)
    if not _count(m):
        return None
    n_rows = int(rows.sum())
    return NanVerdict(f"softmax of an all -inf row ({n_rows} rows)", "empty_set", [Lead(0, x, _INFOK | _BAD, None)],
                      Flag("empty_set", f"{call.info.short} over {n_rows} rows whose every entry is -inf → NaN",
                           n_rows))


@register(aten.mean)
def _mean_of_nothing(call, pos_nan, pos_inf, tensors):
    x, info, out = call.args[0], call.info, call.out
    if not isinstance(x, torch.Tensor) or not x.dim():
        return None
    dims = list(range(x.dim())) if info.full_reduction else _reduce_dims(call.args, call.kwargs, x.dim())[0]
    if not any(x.shape[d] == 0 for d in dims):
        return None
    return NanVerdict("mean of an empty set", "empty_set", [],
                      Flag("empty_set", f"mean over 0 elements → NaN in {out.numel()} rows", out.numel()))
