"""The :class:`Tracer`: a dispatch mode that sees every ATen op, forward and backward (see
:mod:`stablenca.trace`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from . import zeros
from .candidates import Candidates
from .chain import ChainSearch
from .detectors import OpCall, Verdict, cancellation, cannot_create, carried, small_values, underflow, \
    underflow_any_op
from .ops import _C_CANCEL, _C_MASK, _C_PLAIN, _C_REDUCE, _C_SKIP, _C_UF_POS, _C_UF_SIGNED, _C_VIEW, \
    _current_node, _flat_tensors, copy_before, op_info
from .places import Places
from .provenance import _BAD, _Candidate, _Event, Provenance
from .records import Finding, Precursor, _format_source, _significand_bits, _small, _tiny, \
    tensor_stats
from .units import UnitCounter

#: Ops that may write ±inf on purpose when one of their scalar arguments is ±inf.
DEFAULT_ALLOW = (
    "aten.fill_diagonal_",
    "aten.fill_",
    "aten.fill",
    "aten.masked_fill",
    "aten.masked_fill_",
    "aten.full",
    "aten.full_like",
    "aten.new_full",
    "aten.scalar_tensor",
    "aten.where",
    "aten.index_put",
    "aten.index_put_",
    "aten.index_fill",
    "aten.index_fill_",
    "aten.copy_",
)

_INF = math.inf

class _Mode(TorchDispatchMode):
    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        tracer = self.tracer
        if tracer._live:
            # an in-place op about to overwrite values its analysis may need; set for every op,
            # so that a copy left by an op that raised is never read for another op
            keep = op_info(func).keep_before
            tracer._before = copy_before(keep, args) if keep else ()
        out = func(*args, **kwargs)
        tracer._unit = tracer._units.key(func)
        if tracer._live:
            try:
                tracer._observe(func, args, kwargs, out)
            except Exception as exc:  # never break the user's computation
                tracer._give_up(func, exc)
            finally:
                tracer._before = ()
        return out


class Tracer(Places, Provenance, Candidates, ChainSearch):
    """Trace every ATen op run inside the ``with`` block (forward and backward).

    Keyword-only arguments:

    ``model``
        an ``nn.Module`` whose qualified names (``encoder.0``) name the module an op ran in
        and the parameters a non-finite input came from. Without it, the outermost module
        called in the block names its submodules (the root shows as ``<ClassName>``).
    ``allow``
        more ops allowed to write ±inf on purpose: names (``"aten.log"``, ``"aten.log.default"``
        or ``"log"``) and/or predicates ``f(func, args, kwargs) -> bool``. Added to
        :data:`DEFAULT_ALLOW`, whose ops are only allowed when a scalar argument is ±inf.
    ``sources``
        record the forward source line of every autograd node (a short frame walk per op that
        builds one), so that a backward finding names the forward line that created its node.
        Forward findings always get their line.
    ``stop_at_first``
        stop analysing after the first finding (the rest of the block runs unobserved, at
        the cost of the bare dispatch). With False every independent NaN/Inf source whose
        values go on becomes a finding (``findings``).
    ``max_precursors``
        distinct precursors kept (repeats of the same op/kind/line are counted in
        ``occurrences``); the rest are counted in ``precursors_dropped``.
    ``cancellation_bits``
        flag an add/sub that loses at least this many significand bits (default: half the
        dtype's significand, 12 for float32, 26 for float64).

    After the block: ``finding`` (the first :class:`Finding` or None), ``findings``,
    ``precursors``, ``precursors_dropped``, ``discarded`` (NaN/Inf that never went on), and
    :meth:`check_result` for the block's result. Entering again starts a fresh trace. A NaN/Inf
    is analysed when its values are used (see the module docstring); until then the tracer
    keeps the tensors of at most four such candidates.
    """

    def __init__(self, *, model: torch.nn.Module | None = None, allow: Iterable[str | Callable] = (),
                 sources: bool = True, stop_at_first: bool = True, max_precursors: int = 100,
                 cancellation_bits: int | None = None) -> None:
        self.model = model
        if isinstance(allow, (str, bytes)) or callable(allow):
            allow = (allow,)
        allow = tuple(allow)
        self._allow_names_default = frozenset(DEFAULT_ALLOW)
        self._allow_names_user = frozenset(a for a in allow if isinstance(a, str))
        self._allow_preds = tuple(a for a in allow if callable(a) and not isinstance(a, str))
        self.sources = bool(sources)
        self.stop_at_first = bool(stop_at_first)
        self.max_precursors = int(max_precursors)
        self.cancellation_bits = cancellation_bits
        self.finding: Finding | None = None
        self.findings: list[Finding] = []
        self.precursors: list[Precursor] = []
        self.precursors_dropped = 0
        self._live = False
        self._mode: _Mode | None = None
        self._reset()

    # -- lifecycle ------------------------------------------------------------------------

    def _reset(self) -> None:
        self.finding = None
        self.findings = []
        self.precursors = []
        self.precursors_dropped = 0
        self._precursor_keys: dict[tuple, Precursor] = {}
        self._candidates: list[_Candidate] = []
        self._map = WeakIdKeyDictionary()
        self._storages = WeakIdKeyDictionary()  # storage -> [(geometry, _Event)]: lookup fallback
        self._index = 0
        self._units = UnitCounter()
        # exactness: tensors known to hold exact values (masks, constants, integer results of
        # exact ops), and every floating result made under the tracer (the rest are inputs)
        self._exact = WeakIdKeyDictionary()
        self._made = WeakIdKeyDictionary()
        self._unit: tuple | None = None
        self._graph_task = -1  # the backward pass seen last (see _backward_root_check)
        self._pending = None
        self._modules = None  # a ModuleTracker while the block runs (see places.py)
        self._modnames: dict[int, str] = {}
        self._paramnames: dict[int, str] = {}
        self._keepalive: list[Any] = []
        self._internal_cache: dict[str, bool] = {}
        self._gave_up = False
        self._before: tuple = ()  # the overwritten arguments of the in-place op being observed
        if self.model is not None:
            self._register_root(self.model)

    def __enter__(self) -> Tracer:
        self._reset()
        self._modules_enter()
        self._mode = _Mode(self)
        self._mode.__enter__()
        self._live = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._live = False
        try:
            if self._mode is not None:
                self._mode.__exit__(exc_type, exc, tb)
        finally:
            self._mode = None
            self._modules_exit()
            if self._pending is not None:
                try:
                    self._flush_pending()
                except Exception:
                    self._pending = None

    def _release(self) -> None:
        """Drop the provenance map, held tensors and module tables (after the caller is done)."""
        for c in self._candidates:
            c.drop()
        self._map = WeakIdKeyDictionary()
        self._storages = WeakIdKeyDictionary()
        self._keepalive = []
        self._modnames = {}
        self._paramnames = {}

    def _give_up(self, func, exc: Exception) -> None:
        self._live = False
        if not self._gave_up:
            self._gave_up = True
            warnings.warn(f"stablenca.trace: stopped tracing at {func}: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=3)

    # -- the per-op observer --------------------------------------------------------------

    def _observe(self, func, args, kwargs, out) -> None:
        info = op_info(func)
        self._index += 1
        if self._pending is not None:
            self._flush_pending()
        if self._candidates:
            self._backward_root_check()
        cat = info.cat
        mapping = self._map
        if cat == _C_VIEW:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor) \
                    and args[0].is_floating_point():
                (self._exact if self._is_exact(args[0]) else self._made)[out] = True
            if mapping.data and args and isinstance(args[0], torch.Tensor):
                ev = self._lookup(args[0])
                if ev is not None:
                    if isinstance(out, torch.Tensor):
                        mapping[out] = ev
                    elif isinstance(out, (tuple, list)):
                        for o in out:
                            if isinstance(o, torch.Tensor):
                                mapping[o] = ev
            return
        exact_create = info.facts.exact_create
        if cat == _C_SKIP or exact_create:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                (self._exact if exact_create else self._made)[out] = True
        if cat == _C_SKIP:
            if self._candidates and info.short == "_local_scalar_dense" and isinstance(args[0], torch.Tensor):
                ev = self._lookup(args[0])
                if ev is not None and ev.taint & _BAD:
                    self._confirm((ev.extra or {}).get("origins", ()))
            return

        if isinstance(out, torch.Tensor):
            outs = (out,)
        elif isinstance(out, (tuple, list)):
            outs = tuple(o for o in out if isinstance(o, torch.Tensor))
        else:
            outs = ()
        if not outs and info.written:
            outs = tuple(t for i, t in _flat_tensors(args, kwargs) if i in info.written)
        if not exact_create:
            self._track_exact(info, args, kwargs, outs)

        node = _current_node()
        if self.sources and node is None and torch.is_grad_enabled():
            for a in args:
                if isinstance(a, torch.Tensor):
                    needs = a.requires_grad
                elif isinstance(a, (list, tuple)):
                    needs = any(isinstance(b, torch.Tensor) and b.requires_grad for b in a)
                else:
                    continue
                if needs:
                    self._pending = (outs, (self._user_src(), self._module_now()))
                    break

        if info.nocreate and (cat == _C_PLAIN or cat == _C_MASK) and cannot_create(args, kwargs, outs):
            # Finite inputs give a finite output here: skip the check unless an input is tainted.
            if not (mapping.data and self._tainted(args, kwargs)):
                if cat == _C_MASK and outs and outs[0].is_floating_point() and outs[0].numel():
                    verdict = zeros.mask_op(OpCall(info, func, args, kwargs, outs[0], outs))
                    if verdict is not None:
                        self._map_outs(info, outs, self._record(info, node, verdict, outs[0]))
                return
        if node is not None and (cat == _C_UF_SIGNED or cat == _C_CANCEL):
            cat = _C_PLAIN  # mul/div/pow underflow and cancellation: forward ops only
        finite = True
        lo = None  # None: no floating output; else the output's minimum (0.0 when not needed)
        hi = 0.0
        isfinite = math.isfinite
        for o in outs:
            if o.dtype.is_floating_point and o.numel():
                if cat == _C_UF_POS or cat == _C_UF_SIGNED:
                    lo_t, hi_t = torch.aminmax(o)  # NaN propagates into both
                    lo = lo_t.item()
                    hi = hi_t.item()
                    if not (isfinite(lo) and isfinite(hi)):
                        finite = False
                else:
                    # A finite sum proves every element finite (one NaN/inf poisons it); a
                    # non-finite sum may be an overflow of the sum itself: check exactly.
                    lo = 0.0
                    if not isfinite(o.sum().item()):
                        lo_t, hi_t = torch.aminmax(o)
                        if not (isfinite(lo_t.item()) and isfinite(hi_t.item())):
                            finite = False

        tainted = self._tainted(args, kwargs) if mapping.data else None

        if not finite:
            self._nonfinite(info, func, node, args, kwargs, outs, tainted)
            return
        if lo is None and not tainted:
            return  # no floating output

        call = OpCall(info, func, args, kwargs, outs[0] if outs else None, outs, tuple(tainted or ()))
        verdict = self._detect(call, cat, node, lo, hi)
        if verdict is not None:
            self._map_outs(info, outs, self._record(info, node, verdict, call.out))
        elif tainted:
            for o in outs:  # an in-place op may have cleaned a tainted tensor
                if o in mapping:
                    old = mapping[o]
                    del mapping[o]
                    for cand in (old.extra or {}).get("origins", ()):
                        if cand.out is o:
                            cand.drop()  # its NaN/Inf were overwritten: keep only the counts

    def _detect(self, call: OpCall, cat: int, node, lo: float | None, hi: float) -> Verdict | None:
        """The detectors that apply to this op's finite output, in order; the first verdict wins."""
        info, out = call.info, call.out
        forward = node is None
        verdict = None
        if cat == _C_UF_POS:
            if lo is not None and lo < _small(out.dtype):
                if lo < _tiny(out.dtype):
                    verdict = underflow(call, lo)
                if verdict is None:
                    verdict = small_values(call, lo)
        elif cat == _C_UF_SIGNED:
            verdict = zeros.mask_multiply(call)
            if verdict is None and lo is not None:
                tiny = _tiny(out.dtype)
                if lo < tiny and hi > -tiny:  # the range touches zero
                    verdict = underflow(call, lo)
        elif cat == _C_CANCEL:
            if lo is not None:
                if all(self._is_exact(a) for _, a in _flat_tensors(call.args, call.kwargs)):
                    verdict = zeros.exact_difference(call)
                else:
                    verdict = cancellation(call, self._cancel_bits(out.dtype))
        elif cat == _C_REDUCE:
            if forward and lo is not None:
                verdict = zeros.empty_reduction(call)
        elif cat == _C_MASK:
            if lo is not None:
                verdict = zeros.mask_op(call)
        spread = info.facts.spread
        if verdict is None and cat == _C_PLAIN and forward and lo is not None and not info.written \
                and not info.nocreate and not spread:
            verdict = underflow_any_op(call)
        if verdict is None and spread and forward and lo is not None:
            verdict = zeros.zero_spread(call)
        if verdict is None and call.tainted:
            verdict = carried(call)
        return verdict

    def _record(self, info, node, verdict: Verdict, out) -> _Event:
        """A detector's verdict as a provenance event (and a precursor when it counts elements)."""
        ev = self._event(info, node, verdict.kind, verdict.detail, verdict.taint, verdict.inputs, out,
                         stats=verdict.stats)
        ev.extra = verdict.extra
        if verdict.precursor is not None:
            self._precursor(ev, verdict.precursor)
        return ev

    def _cancel_bits(self, dtype) -> int:
        if self.cancellation_bits is not None:
            return int(self.cancellation_bits)
        return _significand_bits(dtype) // 2

    # -- exactness ------------------------------------------------------------------------

    # -- provenance -----------------------------------------------------------------------

    def _event(self, info, node, kind, detail, taint, inputs, out, stats=False) -> _Event:
        phase, bnode, module, src = self._where(node)
        ev = _Event(self._index, info.name, phase, bnode, module, src, kind, detail, taint,
                    tuple(inputs or ()), out, info.elementwise)
        ev.unit = self._unit
        if stats and out is not None:
            ev.stats = tensor_stats(out)
        return ev

    def _precursor(self, ev: _Event, count: int) -> None:
        source = _format_source(ev.src)
        key = (ev.kind, ev.op, ev.phase, ev.node, ev.module, source)
        p = self._precursor_keys.get(key)
        if p is not None:
            p.occurrences += 1
            return
        if len(self.precursors) >= self.max_precursors:
            self.precursors_dropped += 1
            return
        p = Precursor(ev.kind, ev.op, ev.phase, ev.detail, int(count), ev.index, ev.node, ev.module, source)
        self._precursor_keys[key] = p
        self.precursors.append(p)

    # -- used by trace_call ----------------------------------------------------------------

    def check_result(self, value: torch.Tensor, what: str = "result") -> Finding | None:
        """Call after the block with the traced result (or a gradient): returns ``finding``.

        A non-finite ``value`` confirms the candidate whose NaN/Inf it carries, or, when no op
        was blamed (an allow-listed ±inf or an inf-only input reached it), becomes a finding
        itself.
        """
        if self.finding is None and isinstance(value, torch.Tensor) and value.is_floating_point():
            with torch.no_grad():
                self._check_value(value, what)
        return self.finding
