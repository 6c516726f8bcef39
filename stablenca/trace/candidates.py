"""Candidates: a NaN/Inf made from finite values waits until its values go on, then becomes a finding.

An op whose output is not finite is a *candidate*; it is confirmed (and analysed into a
:class:`~stablenca.trace.records.Finding` by :mod:`stablenca.trace.chain`) when a later op
consumes its NaN/Inf and makes a non-finite output, ``.item()`` reads it, a backward pass
starts from it, or it is the traced result. Until then the tracer keeps the tensors of at
most four candidates; the rest are :attr:`discarded`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .detectors import OpCall
from .ops import _current_node, _flat_tensors
from .patterns import new_inf
from .provenance import _BAD, _INFOK, _MAX_HELD, _Candidate, _Event
from .records import Finding
from .zeros import masked_rows


class Candidates:
    """Mixin of :class:`~stablenca.trace.tracer.Tracer`: NaN/Inf outputs, from candidate to finding."""

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
        """An op with a NaN/Inf output: a new candidate, or NaN/Inf carried on from an earlier one."""
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
        call = OpCall(info, func, args, kwargs, out0, outs, tuple(tainted or ()))
        if out_nan or new_inf(call, float_outs):
            self._record_finding(info, func, node, args, kwargs, outs, tainted, leaf_bad=None)
            return
        verdict = None
        if info.base in ("logsumexp", "amax", "max", "_softmax", "_log_softmax"):
            verdict = masked_rows(call)
        if verdict is None:
            ev = self._event(info, node, None, "", _INFOK, in_inf, out0)
        else:
            ev = self._event(info, node, verdict.kind, verdict.detail, _INFOK, in_inf, out0, stats=True)
            ev.extra = verdict.extra
            self._precursor(ev, verdict.precursor)
        self._map_outs(info, outs, ev)

    def _record_finding(self, info, func, node, args, kwargs, outs, tainted, leaf_bad) -> None:
        """A candidate: NaN/Inf appeared here. It becomes a finding once its values go on."""
        float_outs = [o for o in outs if o.dtype.is_floating_point and o.numel()]
        out = float_outs[0]
        if len(float_outs) > 1:
            out = next((o for o in float_outs if not math.isfinite(o.sum().item())), out)
        n_nan = int(torch.count_nonzero(torch.isnan(out)))
        n_inf = int(torch.count_nonzero(torch.isinf(out)))
        phase, bnode, module, src = self._where(node)
        cand = _Candidate(info, args, kwargs, out, leaf_bad, self._index, phase, bnode, module, src, n_nan, n_inf,
                          list(self.precursors))
        cand.unit = self._unit
        cand.func = func
        cand.before = self._before
        ev = _Event(self._index, info.name, phase, bnode, module, src, "source",
                    f"{n_nan} NaN, {n_inf} ±inf", _BAD, (), out, info.elementwise)
        ev.unit = self._unit
        ev.extra = {"origins": (cand,)}
        self._map_outs(info, outs, ev)
        self._candidates.append(cand)
        if len(self._candidates) > _MAX_HELD:
            self._candidates[-_MAX_HELD - 1].drop()
        if leaf_bad:  # the NaN/Inf of a leaf already went through this op: confirmed
            for _, lev in leaf_bad:
                lev.extra = {"origins": (cand,)}
            self._confirm((cand,))

    def _confirm(self, origins) -> None:
        for cand in origins:
            if cand.finding is None and any(cand is c for c in self._candidates):
                self._candidates = [c for c in self._candidates if c is not cand]
                with torch.no_grad():
                    cand.finding = self._build_finding(cand)
                cand.drop()
                self.findings.append(cand.finding)
                if self.finding is None:
                    self.finding = cand.finding
        if self.finding is not None and self.stop_at_first:
            self._live = False
            self._pending = None

    def _backward_root_check(self) -> None:
        """A backward that starts from a pending NaN/Inf: that forward value is the failure.

        ``log(x)`` with ``x = 0`` as the differentiated result: its -inf goes into no later op,
        so it is still a candidate when its own backward (``grad / x``, 1/0 again) runs. The
        first op of a new backward pass that runs in the candidate's autograd node (the graph's
        root) confirms the forward candidate first.
        """
        node = _current_node()
        if node is None:
            return
        task = torch._C._current_graph_task_id()
        if task == self._graph_task:
            return
        self._graph_task = task
        for cand in list(self._candidates):
            out = cand.out
            if cand.finding is None and out is not None and out.grad_fn is node:
                self._confirm((cand,))

    @property
    def discarded(self) -> list[Finding]:
        """NaN/Inf that appeared but never reached a non-finite result (masked out or absorbed).

        For example ``torch.where(x > 0, torch.sqrt(x), 0)`` traced without backward, or
        PyTorch's own ``ratio = grad / dist; ratio.masked_fill_(dist == 0, 0)`` in the
        backward of ``cdist``. Only op, place and counts are kept for these.
        """
        return [c.light() for c in self._candidates]
