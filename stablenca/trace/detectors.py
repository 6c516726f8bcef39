"""Detectors: precursors (finite but silently wrong results) and the pattern of a NaN/Inf.

Each check looks at one op's values (exact zeros from non-zero inputs, lost significand bits
of inexact operands, reductions over nothing, a float64 recompute of a non-finite result) and
returns an :class:`~stablenca.trace.provenance._Event` or None; the tracer records it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .ops import (_INF, _LOG_POLE, _NO_OVERFLOW, _UF_POS, _as_operand, _broadcast, _flat_tensors,
                  _recompute_float64, _reduce_dims, _scalar_value)
from .provenance import (_BAD, _INEXACT, _INEXACT_HOPS, _INFOK, _SMALL, _SMALL_HOPS, _ZERO, _Event)
from .records import _dtype_name, _exp_limits, _fmt, _n, _significand_bits, _small, _tiny


class Detectors:
    """Mixin of :class:`~stablenca.trace.tracer.Tracer`: the checks of one op's values."""

    @staticmethod
    def _cannot_create(args, kwargs, outs) -> bool:
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

    def _check_underflow(self, info, node, args, kwargs, out, tainted, lo) -> _Event | None:
        base = info.base
        dtype = out.dtype
        tiny = torch.finfo(dtype).tiny
        x = args[0]
        if base in _UF_POS and isinstance(x, torch.Tensor) and x.shape == out.shape and lo == 0.0:
            # Cheap pre-check: exact zeros that an infinite input explains (a mask) are fine.
            x_lo, x_hi = (v.item() for v in torch.aminmax(x))
            if (x_hi if base == "erfc" else x_lo) in (_INF, -_INF):
                masked = (x == _INF) if base == "erfc" else (x == -_INF)
                n_zero = out.numel() - int(torch.count_nonzero(out))
                if n_zero == int(torch.count_nonzero(masked)):
                    return None  # (subnormal outputs next to a mask are not counted)
        if base not in _UF_POS:
            # Cheap pre-check: an underflow needs more exact zeros than the operands explain.
            other = args[1] if len(args) > 1 else None
            if isinstance(other, (int, float)) and not isinstance(other, bool) and base != "pow":
                m = abs(float(other))
                if (base == "mul" and m >= 1.0) or (base == "div" and 0.0 < m <= 1.0):
                    return None  # |x * s| >= |x|, |x / s| >= |x|: no new zero
            n_zero = out.numel() - int(torch.count_nonzero(out))
            if n_zero == 0:
                return None  # only subnormals in a signed output: not counted
            operands = self._binary_operands(info, args, kwargs, out)
            if operands is None:
                return None
            (_, a), (_, b) = operands
            numel = out.numel()
            explained = (a.numel() - int(torch.count_nonzero(a))) * (numel // max(a.numel(), 1))
            if base == "mul":
                explained += (b.numel() - int(torch.count_nonzero(b))) * (numel // max(b.numel(), 1))
            elif not math.isfinite(b.sum().item()):
                explained += int(torch.count_nonzero(torch.isinf(b))) * (numel // max(b.numel(), 1))
            if n_zero <= explained:
                return None
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
            if n_sub:
                detail += f"; {n_sub} subnormal outputs"
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
            if n_sub:
                detail += f"; {n_sub} subnormal outputs"
        else:  # mul, div, pow
            a, b = self._broadcast_operands(info, args, kwargs, out)
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
        ev = self._event(info, node, "underflow", detail, (_ZERO if n else _INEXACT) | _SMALL,
                         self._taint_of(tainted, _INEXACT | _ZERO | _SMALL), out)
        ev.extra = {"small": _SMALL_HOPS} if n else {"hops": _INEXACT_HOPS, "small": _SMALL_HOPS}
        self._precursor(ev, n or n_sub)
        return ev

    def _check_small(self, info, node, args, out, tainted, lo) -> _Event | None:
        """Positive outputs of exp/softmax/sigmoid/erfc below 1/sqrt(finfo.max), none zero or
        subnormal (or only zeros that a -inf mask explains): not a precursor, but a ``_SMALL``
        event, so that an overflow from dividing by them can walk back to this op."""
        small = _small(out.dtype)
        if lo > 0.0:
            m = lo  # free: the minimum is known
        else:  # zeros from a mask (exp(-inf)): the smallest positive output
            m = float(out.masked_fill(out == 0, _INF).amin())
            if not m < small:
                return None
        detail = f"outputs below {_fmt(small)}, as small as {_fmt(m)}"
        if info.base == "exp":
            detail += f" at x = {_fmt(math.log(m))}"
        if m < _tiny(out.dtype):
            detail += " (subnormal, next to zeros that a -inf input explains)"
        else:
            detail += (f"; no zero or subnormal output ({_dtype_name(out.dtype)} normal numbers reach "
                       f"{_fmt(_tiny(out.dtype))})")
        ev = self._event(info, node, None, detail, _SMALL, self._taint_of(tainted, _SMALL), out)
        ev.extra = {"small": _SMALL_HOPS}
        return ev

    def _indexed_broadcast_operands(self, info, args, kwargs, out, shape):
        """``(ia, a, ib, b)``: both operands' argument indices and values broadcast to ``shape``, or None."""
        operands = self._binary_operands(info, args, kwargs, out)
        if operands is None:
            return None
        (ia, a), (ib, b) = operands
        a, b = _broadcast(a, shape), _broadcast(b, shape)
        return None if a is None or b is None else (ia, a, ib, b)

    def _broadcast_operands(self, info, args, kwargs, out):
        """Both operands of a binary op broadcast to the output's shape, or (None, None)."""
        operands = self._indexed_broadcast_operands(info, args, kwargs, out, out.shape)
        return (None, None) if operands is None else (operands[1], operands[3])

    def _binary_operands(self, info, args, kwargs, out):
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

    def _cancel_bits(self, dtype) -> int:
        if self.cancellation_bits is not None:
            return int(self.cancellation_bits)
        return _significand_bits(dtype) // 2

    def _check_cancellation(self, info, node, args, kwargs, out, tainted) -> _Event | None:
        if all(self._is_exact(a) for _, a in _flat_tensors(args, kwargs)):
            # Exact operands: the result is the exact difference rounded once, so nothing was lost
            # (1 - 1 = 0 in a mask). Its zeros are exact: followed as a mask, never blamed.
            if out.numel() and int(torch.count_nonzero(out)) < out.numel():
                return self._mask_event(info, node, out, tainted, out, False)
            return None
        bits = self._cancel_bits(out.dtype)
        k = 2.0 ** bits - 1.0
        if info.base == "rsub":
            alpha = args[2] if len(args) > 2 else kwargs.get("alpha", 1)
            first = args[0]
            scale = abs(float(alpha)) if alpha else 0.0
        else:
            first = args[0]
            scale = 1.0
        if scale == 0.0:
            return None
        if isinstance(first, torch.Tensor):
            if not bool(torch.gt(first.abs() * scale, out.abs() * k).any()):
                return None
        else:
            return None
        a, b = self._broadcast_operands(info, args, kwargs, out)
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
        op_sym = "+"
        if n_total:
            idx = int(total.reshape(-1).nonzero()[0])
        else:
            idx = int(torch.where(with_bits, lost, torch.full_like(lost, -1)).reshape(-1).argmax())
        av = float(a.reshape(-1)[idx])
        bv = float(b.reshape(-1)[idx])
        rv = float(out.reshape(-1)[idx])
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
        ev = self._event(info, node, "cancellation", detail, taint, self._taint_of(tainted, _ZERO | _INEXACT),
                         out)
        ev.extra = {"hops": _INEXACT_HOPS}
        self._precursor(ev, n)
        return ev

    def _check_empty_reduction(self, info, node, args, kwargs, out, tainted) -> _Event | None:
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
        zero_in = self._taint_of(tainted, _ZERO)
        if reduced == 0 and x.dim():
            n = out.numel()
            detail = f"{info.base} over 0 elements → 0.0 in {n} rows (an empty selection)"
            ev = self._event(info, node, "empty_set", detail, _ZERO, (), out)
            ev.extra = {"rows_mask": torch.ones(out.shape, dtype=torch.bool), "rows_zero": None}
            self._precursor(ev, n)
            return ev
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
        upstream = self._upstream_kinds(src_ev)
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
        ev = self._event(info, node, "empty_set", detail, _ZERO, zero_in, out)
        ev.extra = {"rows_mask": rows_mask, "rows_zero": rows_zero}
        self._precursor(ev, n_rows)
        return ev

    def _check_underflow_any(self, func, info, node, args, kwargs, out, tainted) -> _Event | None:
        """Any op (a product, a determinant, a fused kernel): an exact 0.0 whose float64 value is not 0."""
        if out.dtype == torch.float64 or not out.numel():
            return None
        # Cost bound: recompute only ops that do not expand their inputs (reductions such as prod
        # or det, elementwise ops); a cdist's exact zero self-distances would cost a float64 cdist.
        largest = max((a.numel() for _, a in _flat_tensors(args, kwargs) if a.is_floating_point()), default=0)
        if out.numel() > largest or int(torch.count_nonzero(out)) == out.numel():
            return None
        exact = _recompute_float64(func, args, kwargs, out)
        if exact is None:
            return None
        uf = (out == 0) & (exact != 0) & (exact.abs() < _tiny(out.dtype))
        n = int(uf.sum())
        if n == 0:
            return None
        detail = (f"{_n(n, 'result')} → 0.0 whose float64 value is not zero (as large as "
                  f"{_fmt(float(exact[uf].abs().max()))}; {_dtype_name(out.dtype)} normal numbers reach "
                  f"{_fmt(_tiny(out.dtype))})")
        ev = self._event(info, node, "underflow", detail, _ZERO | _SMALL,
                         self._taint_of(tainted, _INEXACT | _ZERO | _SMALL), out)
        ev.extra = {"small": _SMALL_HOPS}
        self._precursor(ev, n)
        return ev

    def _check_zero_spread(self, info, node, args, out, tainted) -> _Event | None:
        """A std/var/norm that is exactly 0: a divisor's zero that names its reduction."""
        if not out.is_floating_point() or not out.numel():
            return None
        n = out.numel() - int(torch.count_nonzero(out))
        if n == 0:
            return None
        what = "every reduced value is equal" if info.base.startswith(("std", "var")) else "every reduced value is 0"
        detail = f"{info.base} is exactly 0 in {n} of {out.numel()} outputs ({what})"
        ev = self._event(info, node, "zero_reduction", detail, _ZERO, self._taint_of(tainted, _ZERO), out)
        return ev

    def _mask_event(self, info, node, out, tainted, mask_t, inverted) -> _Event:
        small_hops = self._hops(tainted, _SMALL, "small")
        ev = self._event(info, node, "mask", "mask multiply" if info.base == "mul" else "mask",
                         _ZERO | (_SMALL if small_hops else 0), self._taint_of(tainted, _ZERO | _SMALL), out)
        ev.extra = {"mask": (mask_t, inverted)}
        if small_hops:
            ev.extra["small"] = small_hops
        return ev

    def _check_mask_mul(self, info, node, args, out, tainted) -> _Event | None:
        if info.base != "mul" or len(args) < 2:
            return None
        for a in args[:2]:
            if isinstance(a, torch.Tensor) and a.dtype == torch.bool:
                return self._mask_event(info, node, out, tainted, a, False)
        for i, ev in tainted or ():
            if ev.kind == "mask" and ev.extra and i in (0, 1) and "mask" in ev.extra:
                return self._mask_event(info, node, out, tainted, args[i], False)
        return None

    def _check_mask_op(self, info, node, args, kwargs, out, tainted) -> _Event | None:
        base = info.base
        if base == "_to_copy":
            x = args[0]
            if isinstance(x, torch.Tensor) and x.dtype == torch.bool and out.is_floating_point():
                return self._mask_event(info, node, out, tainted, x, False)
            return None
        if base == "where" and len(args) >= 3 and isinstance(args[0], torch.Tensor):
            for pos, inverted in ((2, False), (1, True)):
                v = _scalar_value(args[pos]) if not (isinstance(args[pos], torch.Tensor) and args[pos].dim()) else None
                if v == 0.0:
                    return self._mask_event(info, node, out, tainted, args[0], inverted)
            return None
        if base == "masked_fill" and len(args) >= 3 and isinstance(args[1], torch.Tensor):
            if _scalar_value(args[2]) == 0.0:
                return self._mask_event(info, node, out, tainted, args[1], True)
        return None

    def _propagate_finite(self, info, node, args, kwargs, outs, tainted) -> _Event | None:
        carried = 0
        zero_in = self._taint_of(tainted, _ZERO)
        inputs = []
        if zero_in:
            for o in outs:
                if o.dtype.is_floating_point and o.numel() and int(torch.count_nonzero(o)) < o.numel():
                    carried |= _ZERO
                    inputs.extend(zero_in)
                    break
        extra = {}
        for bit, key in ((_INEXACT, "hops"), (_SMALL, "small")):
            hops = self._hops(tainted, bit, key)
            if hops > 0:
                carried |= bit
                extra[key] = hops
                for i, ev in tainted:
                    if ev.taint & bit and ev.extra and ev.extra.get(key, 0) > 0 and (i, ev) not in inputs:
                        inputs.append((i, ev))
        if not carried:
            return None
        out = outs[0] if outs else None
        detail = ""
        if carried & _SMALL and out is not None and info.base in ("div", "true_divide", "reciprocal"):
            detail = self._huge_quotient(info, args, kwargs, out, tainted)
        ev = self._event(info, node, None, detail, carried, inputs, out)
        if extra:
            ev.extra = extra
        return ev

    def _huge_quotient(self, info, args, kwargs, out, tainted) -> str:
        """A finite quotient above sqrt(finfo.max) from a divisor that carries tiny values."""
        if info.written or not (out.is_floating_point() and out.numel()):
            return ""
        divisor_pos = 0 if info.base == "reciprocal" else 1
        if not any(i == divisor_pos and ev.taint & _SMALL for i, ev in tainted):
            return ""
        q = float(out.abs().max())
        if not q >= 1.0 / _small(out.dtype):
            return ""
        operands = self._binary_operands(info, args, kwargs, out)
        if operands is None:
            return ""
        b = operands[1][1].abs()
        b = b[b != 0]
        if not b.numel():
            return ""
        return f"quotient up to {_fmt(q)} from a divisor as small as {_fmt(float(b.min()))}"

    def _new_inf(self, info, args, kwargs, float_outs) -> bool:
        """An elementwise op that put ±inf where all its inputs were finite (hidden overflow)."""
        if not info.elementwise or len(float_outs) != 1 or info.base in _NO_OVERFLOW:
            return False
        out = float_outs[0]
        fresh = torch.isinf(out)
        for _, a in _flat_tensors(args, kwargs):
            if a.dtype.is_floating_point:
                fa = _broadcast(torch.isfinite(a), out.shape)
                if fa is None:
                    return False
                fresh = fresh & fa
        return bool(fresh.any())

    def _inf_rows(self, info, args, kwargs, out) -> tuple[str | None, str, int]:
        x = args[0]
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None, "", 0
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
        if not dims:
            dims = tuple(range(x.dim()))
        all_neg = torch.all(x == -_INF, dim=dims)
        n = int(all_neg.sum())
        if n == 0:
            return None, "", 0
        return "empty_set", f"{info.short} over {n} rows whose every entry is -inf (masked) → -inf", n

    def _analyse(self, info, args, kwargs, out, pos_nan, pos_inf, func=None):
        """(pattern, root kind if nothing upstream, [(argpos, tensor, need, positions)], precursor).

        An op's own rule (:data:`NAN_PATTERNS`) first, then the generic analysis from the values.
        """
        base = info.base
        dtype = out.dtype
        shape = out.shape
        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
                   and i not in info.written]
        finite_inputs = all(bool(torch.isfinite(a).all()) for _, a in tensors)
        if info.written:
            if base == "div" and len(args) > 1:  # the divisor survives an in-place division
                b = _broadcast(_as_operand(args[1], out), shape)
                if b is not None and _count((pos_nan | pos_inf) & (b == 0)):
                    z = (pos_nan | pos_inf) & (b == 0)
                    tb = args[1] if isinstance(args[1], torch.Tensor) else None
                    return "x/0 (in-place)", "division_by_zero", [(1, tb, _ZERO, z)], None
            base = "<in-place>"  # the overwritten operand is gone: only the generic analysis applies
        rule = NAN_PATTERNS.get(base)
        if rule is not None:
            found = rule(self, info, args, kwargs, out, pos_nan, pos_inf, tensors)
            if found is not None:
                return found
        cnt = _count

        def ov_detail(n):
            return _overflow_detail(base, tensors, dtype, n)

        # generic: decided by properties of this op's values, not by its name
        empty = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dim() and a.numel() == 0]
        if empty and cnt(pos_nan):  # a fused op (a loss) that reduced over nothing
            n = cnt(pos_nan)
            return ("reduction over an empty set", "empty_set", [],
                    ("empty_set", f"{info.short} reduced over 0 elements (input {empty[0]} is empty) → NaN", n))
        if finite_inputs:
            n_inf = cnt(pos_inf & ~pos_nan)
            n_nan = cnt(pos_nan)
            exact = _recompute_float64(func, args, kwargs, out)
            if exact is not None:
                # float64 is itself finite-ranged: exp(x) for x > 709.78 is inf there too. An input that
                # large can overflow float64, so only smaller inputs make an infinite recompute a pole.
                big = max((float(a.abs().max()) for _, a in tensors if a.numel()), default=0.0)
                e_inf = cnt((pos_inf | pos_nan) & torch.isinf(exact)) if big < math.log(torch.finfo(
                    torch.float64).max) else 0
                e_nan = cnt((pos_inf | pos_nan) & torch.isnan(exact))
                if e_inf:
                    lo_in = min((float(a.min()) for _, a in tensors if a.numel()), default=0.0)
                    hi_in = max((float(a.max()) for _, a in tensors if a.numel()), default=0.0)
                    d = (f"{_n(e_inf, 'result')} infinite in exact arithmetic too (float64 recompute: ±inf, inputs "
                         f"from {_fmt(lo_in)} to {_fmt(hi_in)}): a pole or an infeasible problem, not an overflow")
                    return "pole", "pole", [(i, a, _ZERO | _INEXACT, None) for i, a in tensors], ("pole", d, e_inf)
                if e_nan:
                    return ("NaN from finite inputs", "domain",
                            [(i, a, _INEXACT | _ZERO, None) for i, a in tensors], None)
            if n_inf and not n_nan:
                d = ov_detail(n_inf)
                return "overflow", "overflow", [(i, a, _INEXACT | _SMALL, None) for i, a in tensors], \
                    ("overflow", d, n_inf)
            return "NaN from finite inputs", "domain", [(i, a, _INEXACT | _ZERO, None) for i, a in tensors], None
        if cnt(pos_nan):
            return "NaN from infinite inputs", "unknown", [(i, a, _INFOK | _BAD, None) for i, a in tensors], None
        n_inf = cnt(pos_inf)
        return "overflow", "overflow", [(i, a, _INEXACT | _SMALL | _INFOK, None) for i, a in tensors], \
            ("overflow", ov_detail(n_inf), n_inf)

    def _allowed(self, info, func, args, kwargs) -> bool:
        if info.name in self._allow_names_user or info.packet in self._allow_names_user \
                or info.short in self._allow_names_user:
            return True
        for pred in self._allow_preds:
            if pred(func, args, kwargs):
                return True
        if info.packet in self._allow_names_default or info.name in self._allow_names_default:
            for a in list(args[1:]) + list(kwargs.values()):
                if isinstance(a, (int, float)) and not isinstance(a, bool) and math.isinf(a):
                    return True
        return False

    def _nonfinite(self, info, func, node, args, kwargs, outs, tainted) -> None:
        float_outs = [o for o in outs if o.dtype.is_floating_point and o.numel()]
        out_nan = any(math.isnan(torch.aminmax(o)[0].item()) for o in float_outs)  # NaN propagates
        in_bad: list[tuple[Any, _Event]] = []
        in_inf: list[tuple[Any, _Event]] = []
        in_nonfinite = False
        written = info.written
        for i, a in _flat_tensors(args, kwargs):
            if not (a.dtype.is_floating_point and a.numel()):
                continue
            ev = self._lookup(a)
            if ev is None:
                if i in written:  # overwritten by this op: its old values are gone
                    continue
                lo_t, hi_t = torch.aminmax(a)
                if math.isfinite(lo_t.item()) and math.isfinite(hi_t.item()):
                    continue
                ev = self._leaf_event(info, node, a)
                if ev is None:
                    continue
            if ev.taint & _BAD:
                in_nonfinite = True
                in_bad.append((i, ev))
            elif ev.taint & _INFOK:
                in_nonfinite = True
                in_inf.append((i, ev))
        out0 = float_outs[0] if float_outs else outs[0]

        if not in_nonfinite:
            if not out_nan and self._allowed(info, func, args, kwargs):
                ev = self._event(info, node, "allowed_inf", f"intentional ±inf ({info.short})", _INFOK, (), out0)
                self._map_outs(info, outs, ev)
                return
            self._record_finding(info, func, node, args, kwargs, outs, tainted, leaf_bad=None)
            return
        if in_bad:
            fresh = [(i, ev) for i, ev in in_bad if ev.kind == "input" and not (ev.extra or {}).get("origins")]
            if fresh:
                self._record_finding(info, func, node, args, kwargs, outs, tainted, leaf_bad=fresh)
                return
            ev = self._event(info, node, None, "", _BAD, in_bad, out0)
            origins = self._origins(in_bad)
            ev.extra = {"origins": origins}
            self._map_outs(info, outs, ev)
            self._confirm(origins)  # the NaN/Inf of an earlier candidate went on: it is real
            return
        # only intentional infinities come in
        if out_nan or self._new_inf(info, args, kwargs, float_outs):
            self._record_finding(info, func, node, args, kwargs, outs, tainted, leaf_bad=None)
            return
        kind, detail, n_rows = None, "", 0
        if info.base in ("logsumexp", "amax", "max", "_softmax", "_log_softmax"):
            kind, detail, n_rows = self._inf_rows(info, args, kwargs, out0)
        ev = self._event(info, node, kind, detail, _INFOK, in_inf, out0, stats=kind is not None)
        if kind is not None:
            ev.extra = {"rows_zero": None}
            self._precursor(ev, n_rows)
        self._map_outs(info, outs, ev)


# ----------------------------------------------------------------------------------------
# NaN/Inf patterns per op: rule(tracer, info, args, kwargs, out, pos_nan, pos_inf, tensors)
# returns (pattern, kind, explain, precursor) or None (then the generic analysis decides)

#: base op name -> pattern rule; filled by :func:`nan_pattern` (like ``register_flop_formula``).
NAN_PATTERNS: dict[str, Callable] = {}
_ANY_UP = _ZERO | _INFOK | _BAD | _INEXACT


def nan_pattern(*bases: str) -> Callable:
    """Register a rule that names the NaN/Inf pattern of the ops ``bases`` (``div``, ``log`` ...)."""
    def register(rule: Callable) -> Callable:
        for base in bases:
            NAN_PATTERNS[base] = rule
        return rule
    return register


def _count(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _overflow_detail(base: str, tensors, dtype: torch.dtype, n: int) -> str:
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


def _tensor_arg(args, i):
    return args[i] if 0 <= i < len(args) and isinstance(args[i], torch.Tensor) else None


@nan_pattern("div", "true_divide", "reciprocal")
def _division(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    ops = tr._indexed_broadcast_operands(info, args, kwargs, out, out.shape)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta, tb = (args[ia] if ia >= 0 else None), args[ib]
    z00 = pos_nan & (a == 0) & (b == 0)
    if _count(z00):
        return "0/0", "division_by_zero", [(ia, ta, _ZERO, z00), (ib, tb, _ZERO, z00)], None
    zx0 = pos_inf & (b == 0) & torch.isfinite(a)
    if _count(zx0):
        return ("1/0" if info.base == "reciprocal" else "x/0"), "division_by_zero", [(ib, tb, _ZERO, zx0)], None
    iii = pos_nan & torch.isinf(a) & torch.isinf(b)
    if _count(iii):
        return "inf/inf", "unknown", [(ia, ta, _INFOK | _BAD, iii), (ib, tb, _INFOK | _BAD, iii)], None
    ovf = pos_inf & (b != 0) & torch.isfinite(a) & torch.isfinite(b)
    if _count(ovf):
        n = _count(ovf)
        return "overflow", "overflow", [(ia, ta, _INEXACT | _SMALL, None), (ib, tb, _INEXACT | _SMALL, None)], \
            ("overflow", _overflow_detail(info.base, tensors, out.dtype, n), n)
    return None


@nan_pattern(*_LOG_POLE)
def _logarithm(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    x, pole = args[0], _LOG_POLE[info.base]
    at_pole = pos_inf & (x == pole)
    if _count(at_pole):
        pattern = "log(0)" if pole == 0 else "log1p(-1)"
        return pattern, "division_by_zero", [(0, x, _ZERO if pole == 0 else _ANY_UP, at_pole)], None
    below = pos_nan & (x < pole)
    if _count(below):
        return "log(negative)", "domain", [(0, x, _INEXACT | _ZERO, below)], None
    return None


@nan_pattern("sqrt", "rsqrt")
def _square_root(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    x = args[0]
    if info.base == "rsqrt":
        z = pos_inf & (x == 0)
        if _count(z):
            return "1/sqrt(0)", "division_by_zero", [(0, x, _ZERO, z)], None
    neg = pos_nan & (x < 0)
    if _count(neg):
        return f"{info.base}(negative)", "domain", [(0, x, _INEXACT | _ZERO, neg)], None
    return None


@nan_pattern("pow")
def _power(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    ops = tr._indexed_broadcast_operands(info, args, kwargs, out, out.shape)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta = _tensor_arg(args, ia)
    frac = pos_nan & (a < 0) & (b != torch.round(b))
    if _count(frac):
        return "pow(negative, fractional)", "domain", [(ia, ta, _INEXACT | _ZERO, frac)], None
    zneg = pos_inf & (a == 0) & (b < 0)
    if _count(zneg):
        return "0^negative", "division_by_zero", [(ia, ta, _ZERO, zneg)], None
    return None


@nan_pattern("mul")
def _product(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    ops = tr._indexed_broadcast_operands(info, args, kwargs, out, out.shape)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ta, tb = _tensor_arg(args, ia), _tensor_arg(args, ib)
    za = pos_nan & (a == 0) & torch.isinf(b)
    zb = pos_nan & torch.isinf(a) & (b == 0)
    explain = []
    if _count(za):
        explain += [(ib, tb, _INFOK | _BAD, za), (ia, ta, _ZERO, za)]
    if _count(zb):
        explain += [(ia, ta, _INFOK | _BAD, zb), (ib, tb, _ZERO, zb)]
    return ("0*inf", "unknown", explain, None) if explain else None


@nan_pattern("add", "sub", "rsub")
def _sum_of_infinities(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    ops = tr._indexed_broadcast_operands(info, args, kwargs, out, out.shape)
    if ops is None:
        return None
    ia, a, ib, b = ops
    ii = pos_nan & torch.isinf(a) & torch.isinf(b)
    if not _count(ii):
        return None
    ta, tb = _tensor_arg(args, ia), _tensor_arg(args, ib)
    return "inf-inf", "unknown", [(ia, ta, _INFOK | _BAD, ii), (ib, tb, _INFOK | _BAD, ii)], None


@nan_pattern("_softmax", "_log_softmax")
def _softmax_of_masked_row(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    x = args[0]
    dim = args[1] if len(args) > 1 else -1
    rows = torch.all(x == -_INF, dim=dim, keepdim=True) if x.dim() else (x == -_INF)
    m = pos_nan & _broadcast(rows, out.shape)
    if not _count(m):
        return None
    n_rows = int(rows.sum())
    return (f"softmax of an all -inf row ({n_rows} rows)", "empty_set", [(0, x, _INFOK | _BAD, None)],
            ("empty_set", f"{info.short} over {n_rows} rows whose every entry is -inf → NaN", n_rows))


@nan_pattern("mean")
def _mean_of_nothing(tr, info, args, kwargs, out, pos_nan, pos_inf, tensors):
    x = args[0]
    if not isinstance(x, torch.Tensor) or not x.dim():
        return None
    dims = list(range(x.dim())) if info.full_reduction else _reduce_dims(args, kwargs, x.dim())[0]
    if not any(x.shape[d] == 0 for d in dims):
        return None
    return ("mean of an empty set", "empty_set", [],
            ("empty_set", f"mean over 0 elements → NaN in {out.numel()} rows", out.numel()))
