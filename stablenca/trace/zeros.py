"""Detectors of exact zeros that are facts, not rounding: masks, reductions over nothing, zero spreads.

Pure functions like those of :mod:`stablenca.trace.detectors`: each reads an
:class:`~stablenca.trace.detectors.OpCall` and returns a
:class:`~stablenca.trace.detectors.Verdict` or None.

>>> import torch
>>> from stablenca.trace.ops import op_info
>>> from stablenca.trace.detectors import OpCall
>>> x = torch.ones(3, 4)
>>> out = x.std(dim=0)
>>> func = torch.ops.aten.std.correction
>>> zero_spread(OpCall(op_info(func), func, (x, [0]), {}, out, (out,))).detail
'std is exactly 0 in 4 of 4 outputs (every reduced value is equal)'
"""

from __future__ import annotations

import torch

from .detectors import OpCall, Verdict
from .ops import _INF, _broadcast, _reduce_dims, _scalar_value
from .provenance import _SMALL, _ZERO, hops_left, taint_of, upstream_kinds


def mask(call: OpCall, mask_t: torch.Tensor, inverted: bool) -> Verdict:
    """The output holds exact zeros where ``mask_t`` (inverted: where it is 0) selects nothing."""
    small_hops = hops_left(call.tainted, _SMALL, "small")
    extra = {"mask": (mask_t, inverted)}
    if small_hops:
        extra["small"] = small_hops
    return Verdict("mask", "mask multiply" if call.info.base == "mul" else "mask",
                   _ZERO | (_SMALL if small_hops else 0), tuple(taint_of(call.tainted, _ZERO | _SMALL)), extra)


def exact_difference(call: OpCall) -> Verdict | None:
    """An add/sub of exact operands: rounded once, nothing lost (``1 - 1 = 0`` in a mask).

    Its zeros are exact: followed as a mask, never blamed as a cancellation.
    """
    out = call.out
    if out.numel() and int(torch.count_nonzero(out)) < out.numel():
        return mask(call, out, False)
    return None


def mask_multiply(call: OpCall) -> Verdict | None:
    """``x * m`` with a bool mask, or with a tensor that an earlier op made into a mask."""
    args = call.args
    if call.info.base != "mul" or len(args) < 2:
        return None
    for a in args[:2]:
        if isinstance(a, torch.Tensor) and a.dtype == torch.bool:
            return mask(call, a, False)
    for i, ev in call.tainted:
        if ev.kind == "mask" and ev.extra and i in (0, 1) and "mask" in ev.extra:
            return mask(call, args[i], False)
    return None


def mask_op(call: OpCall) -> Verdict | None:
    """A bool cast to float, ``where(c, x, 0)``, ``masked_fill(m, 0)``: a mask."""
    base, args, out = call.info.base, call.args, call.out
    if base == "_to_copy":
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dtype == torch.bool and out.is_floating_point():
            return mask(call, x, False)
        return None
    if base == "where" and len(args) >= 3 and isinstance(args[0], torch.Tensor):
        for pos, inverted in ((2, False), (1, True)):
            v = _scalar_value(args[pos]) if not (isinstance(args[pos], torch.Tensor) and args[pos].dim()) else None
            if v == 0.0:
                return mask(call, args[0], inverted)
        return None
    if base == "masked_fill" and len(args) >= 3 and isinstance(args[1], torch.Tensor):
        if _scalar_value(args[2]) == 0.0:
            return mask(call, args[1], True)
    return None


def empty_reduction(call: OpCall) -> Verdict | None:
    """A sum/mean over zero elements, or whose rows are exact zeros because every term is 0.

    Names why the rows are empty: a mask that selected nothing, or zeros from upstream
    (an underflow, a cancellation).
    """
    info, args, kwargs, out = call.info, call.args, call.kwargs, call.out
    x = args[0]
    if not isinstance(x, torch.Tensor):
        return None
    if info.full_reduction:
        dims, keepdim = list(range(x.dim())), False
    else:
        dims, keepdim = _reduce_dims(args, kwargs, x.dim())
    reduced = 1
    for d in dims:
        reduced *= x.shape[d] if x.dim() else 1
    zero_in = taint_of(call.tainted, _ZERO)
    if reduced == 0 and x.dim():
        n = out.numel()
        detail = f"{info.base} over 0 elements → 0.0 in {n} rows (an empty selection)"
        return Verdict("empty_set", detail, _ZERO, (),
                       {"rows_mask": torch.ones(out.shape, dtype=torch.bool), "rows_zero": None}, n)
    if not zero_in:
        return None
    out_zero = out == 0
    if not bool(out_zero.any()):
        return None
    if x.dim():
        all_zero = ~torch.any(x != 0, dim=tuple(dims), keepdim=keepdim)
    else:
        all_zero = x == 0
    rows = out_zero & all_zero
    n_rows = int(rows.sum())
    if n_rows == 0:
        return None
    # Why are the rows empty: a mask that selected nothing, or zeros carried from upstream?
    src_ev = zero_in[0][1]
    rows_mask = rows_zero = None
    mask_info = src_ev.extra.get("mask") if (src_ev.kind == "mask" and src_ev.extra) else None
    if mask_info is not None:
        mask_t, inverted = mask_info
        sel = (mask_t == 0) if inverted else (mask_t != 0)
        sel = _broadcast(sel, x.shape)
        if sel is not None:
            selected_any = torch.any(sel, dim=tuple(dims), keepdim=keepdim) if x.dim() else sel
            rows_mask = rows & ~selected_any
            rows_zero = rows & selected_any
    upstream = upstream_kinds(src_ev)
    if rows_mask is None:
        if "mask" in upstream and not (upstream & {"underflow", "cancellation", "empty_set"}):
            rows_mask, rows_zero = rows, torch.zeros_like(rows)
        else:
            rows_mask, rows_zero = torch.zeros_like(rows), rows
    n_mask = int(rows_mask.sum())
    n_zero = n_rows - n_mask
    why = []
    if n_mask:
        why.append(f"the mask selected nothing in {n_mask}" if n_zero else "the mask selected nothing")
    if n_zero:
        cause = "underflow upstream" if "underflow" in upstream else (
            "cancellation upstream" if "cancellation" in upstream else "zeros upstream")
        what = f"every selected term was 0.0, {cause}"
        why.append(f"{what} in {n_zero}" if n_mask else what)
    detail = f"exact 0 in {n_rows} of {out.numel()} rows: " + "; ".join(why)
    return Verdict("empty_set", detail, _ZERO, tuple(zero_in), {"rows_mask": rows_mask, "rows_zero": rows_zero},
                   n_rows)


def zero_spread(call: OpCall) -> Verdict | None:
    """A std/var/norm that is exactly 0: a divisor's zero that names its reduction."""
    out = call.out
    if not out.is_floating_point() or not out.numel():
        return None
    n = out.numel() - int(torch.count_nonzero(out))
    if n == 0:
        return None
    base = call.info.base
    what = "every reduced value is equal" if base.startswith(("std", "var")) else "every reduced value is 0"
    detail = f"{base} is exactly 0 in {n} of {out.numel()} outputs ({what})"
    return Verdict("zero_reduction", detail, _ZERO, tuple(taint_of(call.tainted, _ZERO)))


def masked_rows(call: OpCall) -> Verdict | None:
    """A logsumexp/amax/softmax over rows whose every entry is -inf (masked): an empty set."""
    x, args, kwargs = call.args[0], call.args, call.kwargs
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    if not dims:
        dims = tuple(range(x.dim()))
    n = int(torch.all(x == -_INF, dim=dims).sum())
    if n == 0:
        return None
    return Verdict("empty_set", f"{call.info.short} over {n} rows whose every entry is -inf (masked) → -inf",
                   0, (), {"rows_zero": None}, n, stats=True)
