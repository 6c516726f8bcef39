"""Chain search: from the first non-finite op back through the tensors that carried the
offending zeros, infinities or tiny values, to the earliest precursor (the root cause)."""

from __future__ import annotations

from typing import Any

import torch

from .detectors import OpCall, binary_operands
from .ops import _broadcast, _positions_for
from .patterns import analyse
from .provenance import _BAD, _INFOK, _SMALL, _Candidate, _Event, _root_eligible
from .records import ChainLink, Finding, _dtype_name, _fmt, _format_source, _small, tensor_stats


class ChainSearch:
    """Mixin of :class:`~stablenca.trace.tracer.Tracer`: builds a :class:`Finding` from a candidate."""

    def _build_finding(self, cand: _Candidate) -> Finding:
        """The full analysis of a confirmed candidate (statistics, pattern, chain, root cause)."""
        info, args, kwargs, out = cand.info, cand.args, cand.kwargs, cand.out
        phase, bnode, module, src = cand.phase, cand.bnode, cand.module, cand.src
        n_bad = cand.n_nan + cand.n_inf
        if out is None:  # too many candidates were pending: only the counts survive
            detail = f"{cand.n_nan} NaN and {cand.n_inf} ±inf in the output"
            first = ChainLink(info.name, phase, f"{detail}, {phase}" + (f" {bnode}" if bnode else ""), None,
                              "source", bnode, module, _format_source(src))
            return Finding(info.name, phase, bnode, module, _format_source(src), [], {}, "unknown", detail,
                           [first], {"op": info.name, "kind": "unknown", "detail": detail}, cand.precursors,
                           cand.index)
        pos_nan = torch.isnan(out)
        pos_inf = torch.isinf(out)
        leaf_bad = cand.leaf_bad
        if leaf_bad:
            pattern = "NaN input" if any(ev.stats and ev.stats.get("nan") for _, ev in leaf_bad) else "inf input"
            kind = "nonfinite_input"
            explain = [(i, self._lookup_tensor(args, kwargs, i), _BAD, None, ev) for i, ev in leaf_bad]
            prec = None
        else:
            verdict = analyse(OpCall(info, cand.func, args, kwargs, out, before=cand.before), pos_nan, pos_inf)
            pattern, kind, explain, prec = verdict.pattern, verdict.kind, verdict.explain, verdict.precursor
            explain = [(i, t, need, p, None) for i, t, need, p in explain]
        tiny = None
        if pattern == "overflow" and not leaf_bad:
            tiny = self._tiny_operand(info, args, kwargs, out, pos_inf)
        detail = f"{pattern} in {n_bad} of {out.numel()} elements"
        if cand.modified():
            detail += " (some inputs were modified in place before the values were used)"
        first_detail = f"{detail}, {phase}" + (f" {bnode}" if bnode else "")
        if tiny is not None:
            # the tiny operand is followed first: on a tie (both operands reach the same
            # precursor) its path is the one shown
            explain = [(i, t, need, p, None) for i, t, need, p in tiny["explain"]] + explain
            first_detail = f"{first_detail}: {tiny['note']}"
            detail = f"{detail}: {tiny['note']}"
            if prec is not None:
                prec = (prec[0], f"{prec[1]}, {tiny['note']}", prec[2])
        precursors = cand.precursors
        if prec is not None:  # the finding is itself a precursor (overflow, empty set)
            pev = _Event(cand.index, info.name, phase, bnode, module, src, prec[0], prec[1], _BAD, (), out,
                         info.elementwise)
            self._precursor(pev, prec[2])
            precursors = precursors + [p for p in self.precursors if p.index == cand.index]
        # the chain
        best: list[_Event] | None = None
        best_entry = None
        for entry, (i, t, need, p, leaf_ev) in enumerate(explain):
            up = leaf_ev if leaf_ev is not None else (self._lookup_any(t) if isinstance(t, torch.Tensor) else None)
            if up is None or not (up.taint & need) or (up.index >= cand.index and up.kind != "input"):
                continue
            upos = _positions_for(p, up.shape) if (p is not None and up.shape is not None) else None
            path = self._walk(up, upos, need, 0, {})
            if best is None:
                best, best_entry = path, entry
            elif tiny is not None and best_entry < len(tiny["explain"]):
                # the tiny operand's path stays unless another reaches an earlier precursor
                a, b = path[-1], best[-1]
                if _root_eligible(a) and (not _root_eligible(b) or a.index < b.index):
                    best, best_entry = path, entry
            elif pattern == "0/0" and path[-1].kind == "zero_reduction":
                best, best_entry = path, entry  # a zero spread makes 0/0 whatever the numerator (x = mean)
            elif self._better(path, best):
                best, best_entry = path, entry
        first = ChainLink(info.name, phase, first_detail, tensor_stats(out), "source", bnode, module,
                          _format_source(src), list(cand.unit) if cand.unit else None)
        chain = [first]
        root = None
        if best:
            from_tiny = tiny is not None and best_entry < len(tiny["explain"])
            prev_phase = phase
            for k, e in enumerate(best):
                link = self._link(e)
                if k == 0 and from_tiny and not link.detail:
                    link.detail = tiny["values"]  # the op that produced the tiny operand
                if link.phase != prev_phase:
                    link.detail = f"{link.detail}, {link.phase}" if link.detail else link.phase
                prev_phase = link.phase
                chain.append(link)
            if _root_eligible(best[-1]) or best[-1].kind == "zero_reduction":
                root = best[-1]  # a zero spread is a root only as the divisor of this 0/0
        if root is not None:
            rkind = {"input": "nonfinite_input", "zero_reduction": "division_by_zero"}.get(root.kind, root.kind)
            root_cause = {"op": "input" if root.kind == "input" else root.op, "kind": rkind, "detail": root.detail}
        else:
            rdetail = detail
            if kind == "division_by_zero":
                rdetail = f"{detail}: the zero is an exact value with no precursor upstream"
            if best and best[-1].kind in ("allowed_inf", "leaf_inf"):
                origin = best[-1].op if best[-1].kind == "allowed_inf" else "an input tensor"
                rdetail = f"{detail}; the infinities came from {origin} (intentional, allow-listed)"
            if prec is not None:
                rdetail = prec[1]
            if tiny is not None and best and best_entry is not None and best_entry < len(tiny["explain"]):
                term = best[-1]
                rdetail += (f"; the tiny {tiny['role']} traces back to {term.op}"
                            + (f" ({term.detail})" if term.detail else "") + ", with no precursor upstream")
            root_cause = {"op": info.name, "kind": kind, "detail": rdetail}
        inputs = []
        for i, a in enumerate(args):
            if isinstance(a, torch.Tensor):
                st = tensor_stats(a)
                st["arg"] = info.argnames[i] if i < len(info.argnames) else str(i)
                inputs.append(st)
            elif isinstance(a, (list, tuple)):
                for j, b in enumerate(a):
                    if isinstance(b, torch.Tensor):
                        st = tensor_stats(b)
                        name = info.argnames[i] if i < len(info.argnames) else str(i)
                        st["arg"] = f"{name}[{j}]"
                        inputs.append(st)
        for k, a in kwargs.items():
            if isinstance(a, torch.Tensor):
                st = tensor_stats(a)
                st["arg"] = k
                inputs.append(st)
        return Finding(
            op=info.name, phase=phase, backward_node=bnode, module=module, source=_format_source(src),
            inputs=inputs, output=first.stats, pattern=pattern, detail=detail, chain=chain,
            root_cause=root_cause, precursors=precursors, index=cand.index,
            unit=list(cand.unit) if cand.unit else None,
        )

    def _tiny_operand(self, info, args, kwargs, out, pos_inf) -> dict[str, Any] | None:
        """An overflow that comes from a tiny divisor (or a tiny base to a negative power).

        ``a / b`` (``div``, ``true_divide``, ``reciprocal`` = ``1 / b``) overflows where
        ``|a / b| > finfo.max``, i.e. ``|b| < |a| / finfo.max``. The divisor is blamed where,
        at an overflowing element with finite operands, ``0 < |b| < 1/sqrt(finfo.max)``
        (5.42e-20 in float32): dividing by ``b`` alone multiplies by more than ``sqrt(max)``,
        more than half of the way to overflow on a log scale, so any numerator up to
        ``sqrt(max)`` overflows. ``pow(a, b)`` blames its base where ``0 < |a| < 1`` and
        ``b < 0``. Returns None, or the note for the first link, the explain entries (the
        tiny operand, at the blamed positions) and the detail of the operand's producer.
        """
        if info.written:
            return None  # in-place: the numerator is overwritten
        base = info.base
        dtype = out.dtype
        shape = out.shape
        if base in ("div", "true_divide", "reciprocal"):
            role = "divisor"
        elif base == "pow":
            role = "base"
        else:
            return None
        operands = binary_operands(info, args, kwargs, out)
        if operands is None:
            return None
        (ia, a), (ib, b) = operands
        a = _broadcast(a, shape)
        b = _broadcast(b, shape)
        if a is None or b is None:
            return None
        ok = pos_inf & torch.isfinite(a) & torch.isfinite(b)
        if role == "divisor":
            pos, t, j, v = ok & (b != 0) & (b.abs() < _small(dtype)), b, ib, args[ib] if ib >= 0 else None
        else:
            pos, t, j, v = ok & (a != 0) & (a.abs() < 1.0) & (b < 0), a, ia, args[ia]
        n = int(pos.sum())
        if n == 0:
            return None
        smallest = float(t.abs()[pos].min())
        note = f"{role} as small as {_fmt(smallest)}"
        if role == "base":
            note += " to a negative power"
        values = ""
        if isinstance(v, torch.Tensor):
            vpos = _positions_for(pos, v.shape)
            if vpos is not None:
                count = int(vpos.sum())
                values = (f"{role} values as small as {_fmt(smallest)}: {count} of {v.numel()} below "
                          f"{_fmt(_small(dtype)) if role == 'divisor' else '1'} where the result overflowed")
        else:
            v = None
        explain = [(j, v, _SMALL, pos)] if v is not None else []
        return {"note": note, "role": role, "explain": explain, "values": values}

    def _better(self, path: list[_Event], best: list[_Event]) -> bool:
        a, b = path[-1], best[-1]
        ra, rb = _root_eligible(a), _root_eligible(b)
        if ra != rb:
            return ra
        if ra and a.index != b.index:
            return a.index < b.index
        return len(path) > len(best) and not rb

    def _walk(self, ev: _Event, pos, need: int, depth: int, memo: dict) -> list[_Event]:
        """The path from ``ev`` upstream to the earliest root-eligible event it can reach."""
        key = (id(ev), need, pos is None)
        if pos is None and key in memo:
            return memo[key]
        go_up = True
        if ev.kind == "input":
            go_up = False
        elif ev.kind == "empty_set" and ev.extra is not None:
            rows_zero = ev.extra.get("rows_zero")
            if rows_zero is None:
                go_up = False
            elif pos is not None and tuple(pos.shape) == tuple(rows_zero.shape):
                go_up = bool((pos & rows_zero).any())
            else:
                go_up = bool(rows_zero.any())
        best: list[_Event] | None = None
        if go_up and depth < 200:
            for _, up in ev.inputs:
                if not (up.taint & need):
                    continue
                upos = None
                if pos is not None and ev.elementwise and up.shape == ev.shape:
                    upos = pos
                path = self._walk(up, upos, need, depth + 1, memo)
                if best is None or self._better(path, best):
                    best = path
        if best is not None and (_root_eligible(best[-1]) or not _root_eligible(ev)):
            result = [ev] + best
        else:
            result = [ev]
        if pos is None:
            memo[key] = result
        return result

    def _link(self, ev: _Event) -> ChainLink:
        stats = ev.stats
        if stats is None and ev.ref is not None:
            t = ev.ref()
            if t is not None:
                stats = tensor_stats(t)
        if stats is None:
            stats = {"shape": list(ev.shape or ()), "dtype": _dtype_name(ev.dtype) if ev.dtype else None}
        kind = ev.kind
        return ChainLink(ev.op, ev.phase, ev.detail, stats, kind, ev.node, ev.module, _format_source(ev.src),
                         list(ev.unit) if ev.unit else None)

    def _check_value(self, value: torch.Tensor, what: str) -> None:
        v = value.detach()
        if v.numel() == 0 or bool(torch.isfinite(v).all()):
            return
        ev = self._map.get(value) or (self._map.get(value._base) if value._base is not None else None)
        origins = (ev.extra or {}).get("origins", ()) if ev is not None else ()
        if origins:  # the candidate's NaN/Inf is the result itself
            self._confirm(origins[:1])
            if self.finding is not None:
                return
        pos = torch.isnan(v) | torch.isinf(v)
        pattern = f"non-finite {what}"
        detail = f"{pattern}: {int(pos.sum())} of {v.numel()} elements"
        chain = [ChainLink(ev.op if ev else "result", ev.phase if ev else "forward", detail, tensor_stats(v),
                           "source", ev.node if ev else None, ev.module if ev else None,
                           _format_source(ev.src) if ev else None)]
        root_cause = {"op": ev.op if ev else "result", "kind": "unknown", "detail": detail}
        if ev is not None:
            path = self._walk(ev, None, _INFOK | _BAD, 0, {})
            for e in path[1:]:
                chain.append(self._link(e))
            term = path[-1]
            if _root_eligible(term):
                is_input = term.kind == "input"
                root_cause = {"op": "input" if is_input else term.op,
                              "kind": "nonfinite_input" if is_input else term.kind, "detail": term.detail}
            elif term.kind == "leaf_inf":
                root_cause = {"op": "input", "kind": "nonfinite_input",
                              "detail": f"{term.detail}; it reached the {what}"}
            elif term.kind == "allowed_inf":
                root_cause["detail"] = f"{detail}; an intentional ±inf from {term.op} reached the {what}"
        finding = Finding(
            op=ev.op if ev else "result", phase=ev.phase if ev else "forward", backward_node=ev.node if ev else None,
            module=ev.module if ev else None, source=_format_source(ev.src) if ev else None, inputs=[],
            output=tensor_stats(v), pattern=pattern, detail=detail, chain=chain, root_cause=root_cause,
            precursors=list(self.precursors), index=ev.index if ev else self._index,
        )
        self.findings.append(finding)
        self.finding = finding
