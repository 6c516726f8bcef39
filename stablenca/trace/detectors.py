"""Detectors: pure functions from one op call to a :class:`Verdict` (or None).

A detector reads an :class:`OpCall` (the op, its arguments and output, and the provenance
events of its tainted inputs) and says what the output is: an ``underflow`` or a
``cancellation`` precursor, tiny values worth following, a mask, an empty set. It changes
nothing; the :class:`~stablenca.trace.tracer.Tracer` records the verdict as an event (and as a
precursor when ``verdict.precursor`` counts elements). This module holds the checks of
finite outputs that lose information (zeros, tiny values, cancelled bits); masks, empty
reductions and what a finite op carries on are in :mod:`stablenca.trace.zeros`, and the
pattern of a NaN/Inf in :mod:`stablenca.trace.patterns`.

>>> import torch
>>> from stablenca.trace.ops import op_info
>>> x = torch.tensor([-200.0, 0.0])
>>> out = torch.exp(x)
>>> call = OpCall(op_info(torch.ops.aten.exp.default), torch.ops.aten.exp.default, (x,), {}, out, (out,))
>>> v = underflow(call, lo=0.0)
>>> v.kind, v.precursor, v.detail
('underflow', 1, '1 finite input → 0.0: x ≤ -200 (float32 exp(x) rounds to 0.0 below -103.97)')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .ops import _INF, _OpInfo, _as_operand, _broadcast, _flat_tensors, _recompute_float64
from .provenance import _INEXACT, _INEXACT_HOPS, _SMALL, _SMALL_HOPS, _ZERO, _Event, hops_left, taint_of
from .records import _dtype_name, _exp_limits, _fmt, _n, _significand_bits, _small, _tiny


@dataclasses.dataclass
class OpCall:
    """One op call as a detector sees it (read only)."""

    info: _OpInfo
    func: Any  # the OpOverload (for a float64 recompute)
    args: tuple
    kwargs: dict
    out: torch.Tensor  # the floating output checked
    outs: tuple = ()  # every tensor output
    tainted: tuple = ()  # (argument position, provenance event) of inputs worth following back
    #: (position, copy) of the arguments an in-place op overwrote, as they were before it ran
    #: (kept only for :attr:`~stablenca.trace.ops._OpInfo.keep_before` ops); () when gone
    before: tuple = ()


@dataclasses.dataclass
class Verdict:
    """What a detector found in an op's finite output; the tracer turns it into an event."""

    kind: str | None  # underflow, cancellation, empty_set, mask, zero_reduction; None: only carried on
    detail: str
    taint: int  # the taint bits (provenance._ZERO ...) the output carries
    inputs: tuple = ()  # (argument position, event) followed back from here
    extra: dict[str, Any] | None = None  # hops left, mask tensor, rows of an empty set
    precursor: int | None = None  # elements affected, when the verdict is a precursor
    stats: bool = False  # keep the output's statistics in the event


# -- operands ---------------------------------------------------------------------------------


def binary_operands(info, args, kwargs, out):
    """((argpos, a), (argpos, b)) as tensors for a binary arithmetic op, b scaled by alpha/sign."""
    base = info.base
    if base == "reciprocal":
        return (-1, torch.ones((), dtype=out.dtype, device=out.device)), (0, args[0])
    if len(args) < 2:
        return None
    if base == "rsub":  # other - alpha * self
        alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
        a = _as_operand(args[1], out)
        b = _as_operand(args[0], out) * (-alpha)
        return (1, a), (0, b)
    a = _as_operand(args[0], out)
    b = _as_operand(args[1], out)
    if base in ("add", "sub"):
        alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
        if base == "sub":
            alpha = -alpha
        if alpha != 1:
            b = b * alpha
    return (0, a), (1, b)


def indexed_broadcast_operands(info, args, kwargs, out, shape):
    """``(ia, a, ib, b)``: both operands' argument indices and values broadcast to ``shape``, or None."""
    operands = binary_operands(info, args, kwargs, out)
    if operands is None:
        return None
    (ia, a), (ib, b) = operands
    a, b = _broadcast(a, shape), _broadcast(b, shape)
    return None if a is None or b is None else (ia, a, ib, b)


def broadcast_operands(info, args, kwargs, out):
    """Both operands of a binary op broadcast to the output's shape, or (None, None)."""
    operands = indexed_broadcast_operands(info, args, kwargs, out, out.shape)
    return (None, None) if operands is None else (operands[1], operands[3])


def cannot_create(args, kwargs, outs) -> bool:
    """No non-finite scalar argument and no narrowing float conversion."""
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, float):
            if not math.isfinite(a):
                return False
        elif isinstance(a, torch.Tensor):
            if a.dim() == 0 and a.is_floating_point() and not math.isfinite(a.item()):
                return False
    if outs and args and isinstance(args[0], torch.Tensor):
        src = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0]  # copy_(self, src)
        dst = outs[0]
        if src.dtype != dst.dtype and src.is_floating_point() and dst.is_floating_point():
            if torch.finfo(dst.dtype).max < torch.finfo(src.dtype).max:
                return False  # a narrowing copy can overflow
    return True


# -- zeros and tiny values ----------------------------------------------------------------------


def _zeros_explained(call: OpCall, lo: float) -> bool:
    """Cheap pre-check: every exact zero of the output is explained by its operands (no underflow)."""
    info, args, out = call.info, call.args, call.out
    base = info.base
    x = args[0]
    if info.facts.underflow == "positive":
        if isinstance(x, torch.Tensor) and x.shape == out.shape and lo == 0.0:
            # exact zeros that an infinite input explains (a mask) are fine
            x_lo, x_hi = (v.item() for v in torch.aminmax(x))
            if (x_hi if base == "erfc" else x_lo) in (_INF, -_INF):
                masked = (x == _INF) if base == "erfc" else (x == -_INF)
                n_zero = out.numel() - int(torch.count_nonzero(out))
                return n_zero == int(torch.count_nonzero(masked))  # (subnormals next to a mask not counted)
        return False
    other = args[1] if len(args) > 1 else None
    if isinstance(other, (int, float)) and not isinstance(other, bool) and base != "pow":
        m = abs(float(other))
        if (base == "mul" and m >= 1.0) or (base == "div" and 0.0 < m <= 1.0):
            return True  # |x * s| >= |x|, |x / s| >= |x|: no new zero
    n_zero = out.numel() - int(torch.count_nonzero(out))
    if n_zero == 0:
        return True  # only subnormals in a signed output: not counted
    operands = binary_operands(info, args, call.kwargs, out)
    if operands is None:
        return True
    (_, a), (_, b) = operands
    numel = out.numel()
    explained = (a.numel() - int(torch.count_nonzero(a))) * (numel // max(a.numel(), 1))
    if base == "mul":
        explained += (b.numel() - int(torch.count_nonzero(b))) * (numel // max(b.numel(), 1))
    elif not math.isfinite(b.sum().item()):
        explained += int(torch.count_nonzero(torch.isinf(b))) * (numel // max(b.numel(), 1))
    return n_zero <= explained


def underflow(call: OpCall, lo: float) -> Verdict | None:
    """Finite non-zero inputs that became exact zeros (or subnormals) in exp-like ops and mul/div/pow.

    ``lo`` is the output's minimum (0.0 where only the signed ops' range was checked).
    """
    info, args, out = call.info, call.args, call.out
    base = info.base
    if _zeros_explained(call, lo):
        return None
    dtype = out.dtype
    tiny = torch.finfo(dtype).tiny
    x = args[0]
    zero = out == 0
    sub = (out != 0) & (out.abs() < tiny)
    if base in ("exp", "exp2", "sigmoid", "erfc"):
        if not isinstance(x, torch.Tensor):
            return None
        uf = zero & torch.isfinite(x)
        n = int(uf.sum())
        n_sub = int(sub.sum())
        if n == 0 and n_sub == 0:
            return None
        lo_x, hi_x = (float(v) for v in torch.aminmax(x[uf])) if n else (None, None)
        limit = _exp_limits(dtype)[0]
        if base == "exp2":
            limit = limit / math.log(2)
        if n:
            if base in ("exp", "exp2"):
                detail = (f"{_n(n, 'finite input')} → 0.0: x ≤ {_fmt(hi_x)} ({_dtype_name(dtype)} {base}(x) "
                          f"rounds to 0.0 below {limit:.2f})")
            else:
                detail = f"{_n(n, 'finite input')} → 0.0 (x from {_fmt(lo_x)} to {_fmt(hi_x)})"
        else:
            detail = "no exact zeros"
    elif base == "_softmax":
        if not isinstance(x, torch.Tensor):
            return None
        dim = args[1] if len(args) > 1 else -1
        fin = torch.isfinite(x)
        uf = zero & fin
        n = int(uf.sum())
        n_sub = int(sub.sum())
        if n == 0 and n_sub == 0:
            return None
        if n:
            gap = (torch.amax(x.masked_fill(~fin, -_INF), dim=dim, keepdim=True) - x)[uf]
            detail = (f"{n} of {out.numel()} entries → 0.0 from finite logits (gap to the row max "
                      f"≥ {_fmt(float(gap.min()))}; {_dtype_name(dtype)} exp rounds to 0.0 beyond "
                      f"{-_exp_limits(dtype)[0]:.2f})")
        else:
            detail = "no exact zeros"
    else:  # mul, div, pow
        a, b = broadcast_operands(info, args, call.kwargs, out)
        if a is None:
            return None
        if base == "pow":
            ok = (a != 0) & torch.isfinite(a) & torch.isfinite(b)
        else:
            ok = (a != 0) & (b != 0) & torch.isfinite(a) & torch.isfinite(b)
        uf = zero & ok
        n = int(uf.sum())
        n_sub = int((sub & ok).sum())
        if n == 0 and n_sub == 0:
            return None
        sym = {"mul": "×", "div": "/", "pow": "^"}[base]
        if n:
            idx = int(uf.reshape(-1).nonzero()[0])
            ex = f"{_fmt(float(a.reshape(-1)[idx]))} {sym} {_fmt(float(b.reshape(-1)[idx]))}"
            detail = f"{_n(n, 'result')} of finite non-zero operands → 0.0 (e.g. {ex})"
        else:
            detail = "no exact zeros"
    if n_sub:
        detail += f"; {n_sub} subnormal outputs"
    extra = {"small": _SMALL_HOPS} if n else {"hops": _INEXACT_HOPS, "small": _SMALL_HOPS}
    return Verdict("underflow", detail, (_ZERO if n else _INEXACT) | _SMALL,
                   tuple(taint_of(call.tainted, _INEXACT | _ZERO | _SMALL)), extra, n or n_sub)


def small_values(call: OpCall, lo: float) -> Verdict | None:
    """Positive outputs of exp/softmax/sigmoid/erfc below 1/sqrt(finfo.max), none zero or
    subnormal (or only zeros that a -inf mask explains): not a precursor, but tiny values worth
    following, so that an overflow from dividing by them can walk back to this op."""
    out = call.out
    small = _small(out.dtype)
    if lo > 0.0:
        m = lo  # free: the minimum is known
    else:  # zeros from a mask (exp(-inf)): the smallest positive output
        m = float(out.masked_fill(out == 0, _INF).amin())
        if not m < small:
            return None
    detail = f"outputs below {_fmt(small)}, as small as {_fmt(m)}"
    if call.info.base == "exp":
        detail += f" at x = {_fmt(math.log(m))}"
    if m < _tiny(out.dtype):
        detail += " (subnormal, next to zeros that a -inf input explains)"
    else:
        detail += (f"; no zero or subnormal output ({_dtype_name(out.dtype)} normal numbers reach "
                   f"{_fmt(_tiny(out.dtype))})")
    return Verdict(None, detail, _SMALL, tuple(taint_of(call.tainted, _SMALL)), {"small": _SMALL_HOPS})


def underflow_any_op(call: OpCall) -> Verdict | None:
    """Any op (a product, a determinant, a fused kernel): an exact 0.0 whose float64 value is not 0."""
    out = call.out
    if out.dtype == torch.float64 or not out.numel():
        return None
    # Cost bound: recompute only ops that do not expand their inputs (reductions such as prod
    # or det, elementwise ops); a cdist's exact zero self-distances would cost a float64 cdist.
    largest = max((a.numel() for _, a in _flat_tensors(call.args, call.kwargs) if a.is_floating_point()),
                  default=0)
    if out.numel() > largest or int(torch.count_nonzero(out)) == out.numel():
        return None
    exact = _recompute_float64(call.func, call.args, call.kwargs, out)
    if exact is None:
        return None
    uf = (out == 0) & (exact != 0) & (exact.abs() < _tiny(out.dtype))
    n = int(uf.sum())
    if n == 0:
        return None
    detail = (f"{_n(n, 'result')} → 0.0 whose float64 value is not zero (as large as "
              f"{_fmt(float(exact[uf].abs().max()))}; {_dtype_name(out.dtype)} normal numbers reach "
              f"{_fmt(_tiny(out.dtype))})")
    return Verdict("underflow", detail, _ZERO | _SMALL, tuple(taint_of(call.tainted, _INEXACT | _ZERO | _SMALL)),
                   {"small": _SMALL_HOPS}, n)


# -- cancellation -------------------------------------------------------------------------------


def cancellation(call: OpCall, bits: int) -> Verdict | None:
    """An add/sub of inexact operands whose results lost at least ``bits`` significand bits.

    (Exact operands are the tracer's business: their difference is rounded once and loses
    nothing; see :func:`stablenca.trace.zeros.exact_difference`.)
    """
    info, args, kwargs, out = call.info, call.args, call.kwargs, call.out
    k = 2.0 ** bits - 1.0
    first = args[0]
    scale = 1.0
    if info.base == "rsub":
        alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
        scale = abs(float(alpha)) if alpha else 0.0
    if scale == 0.0 or not isinstance(first, torch.Tensor):
        return None
    if not bool(torch.gt(first.abs() * scale, out.abs() * k).any()):
        return None
    a, b = broadcast_operands(info, args, kwargs, out)
    if a is None:
        return None
    m = torch.maximum(a.abs(), b.abs())
    valid = torch.isfinite(a) & torch.isfinite(b) & (m > 0)
    r = out.abs()
    total = valid & (r == 0)
    with_bits = valid & (r > 0)
    lost = torch.where(with_bits, torch.log2(m / torch.where(with_bits, r, torch.ones_like(r))),
                       torch.zeros_like(r))
    flagged = total | (with_bits & (lost >= bits))
    n = int(flagged.sum())
    if n == 0:
        return None
    n_total = int(total.sum())
    p = _significand_bits(out.dtype)
    if n_total:
        idx = int(total.reshape(-1).nonzero()[0])
    else:
        idx = int(torch.where(with_bits, lost, torch.full_like(lost, -1)).reshape(-1).argmax())
    av = float(a.reshape(-1)[idx])
    bv = float(b.reshape(-1)[idx])
    rv = float(out.reshape(-1)[idx])
    op_sym = "+"
    if bv < 0:
        op_sym, bv = "−", -bv
    example = f"{av:.9g} {op_sym} {bv:.9g} = {rv:.9g}"
    if n_total:
        detail = (f"{n_total} of {out.numel()} results cancelled to exactly 0.0 (e.g. {example}): all "
                  f"{p} significand bits lost")
        if n > n_total:
            detail += f"; {n - n_total} more lost ≥ {bits} bits"
    else:
        max_lost = float(lost[with_bits].max())
        detail = (f"{n} of {out.numel()} results lost ≥ {bits} of {p} significand bits "
                  f"(max {max_lost:.1f}, e.g. {example})")
    taint = (_ZERO if n_total else 0) | _INEXACT
    return Verdict("cancellation", detail, taint, tuple(taint_of(call.tainted, _ZERO | _INEXACT)),
                   {"hops": _INEXACT_HOPS}, n)


def huge_quotient(call: OpCall) -> str:
    """A finite quotient above sqrt(finfo.max) from a divisor that carries tiny values ("" if none)."""
    info, out = call.info, call.out
    if info.written or not (out.is_floating_point() and out.numel()):
        return ""
    divisor_pos = 0 if info.base == "reciprocal" else 1
    if not any(i == divisor_pos and ev.taint & _SMALL for i, ev in call.tainted):
        return ""
    q = float(out.abs().max())
    if not q >= 1.0 / _small(out.dtype):
        return ""
    operands = binary_operands(info, call.args, call.kwargs, out)
    if operands is None:
        return ""
    b = operands[1][1].abs()
    b = b[b != 0]
    if not b.numel():
        return ""
    return f"quotient up to {_fmt(q)} from a divisor as small as {_fmt(float(b.min()))}"


def carried(call: OpCall) -> Verdict | None:
    """No finding of its own: which taints (zeros, lost bits, tiny values) the output carries on."""
    bits = 0
    zero_in = taint_of(call.tainted, _ZERO)
    inputs: list[tuple[Any, _Event]] = []
    if zero_in:
        for o in call.outs:
            if o.dtype.is_floating_point and o.numel() and int(torch.count_nonzero(o)) < o.numel():
                bits |= _ZERO
                inputs.extend(zero_in)
                break
    extra = {}
    for bit, key in ((_INEXACT, "hops"), (_SMALL, "small")):
        hops = hops_left(call.tainted, bit, key)
        if hops > 0:
            bits |= bit
            extra[key] = hops
            for i, ev in call.tainted:
                if ev.taint & bit and ev.extra and ev.extra.get(key, 0) > 0 and (i, ev) not in inputs:
                    inputs.append((i, ev))
    if not bits:
        return None
    detail = ""
    if bits & _SMALL and call.out is not None and call.info.base in ("div", "true_divide", "reciprocal"):
        detail = huge_quotient(call)
    return Verdict(None, detail, bits, tuple(inputs), extra or None)
