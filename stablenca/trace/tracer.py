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

from .units import UnitCounter
from .records import Finding, Precursor, TraceResult, _format_source, _small, _tiny, \
    tensor_stats

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
from .chain import ChainSearch
from .places import Places
from .detectors import Detectors
from .ops import _INFOS, _C_CANCEL, _C_MASK, _C_PLAIN, _C_REDUCE, _C_SKIP, _C_UF_POS, _C_UF_SIGNED, \
    _C_VIEW, _EXACT_CREATE, _SPREAD, _OpInfo, _current_node, _flat_tensors
from .provenance import _BAD, _MAX_HELD, _Candidate, _Event, Provenance

class _Mode(TorchDispatchMode):
    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        out = func(*args, **kwargs)
        tracer = self.tracer
        tracer._unit = tracer._units.key(func)
        if tracer._live:
            try:
                tracer._observe(func, args, kwargs, out)
            except Exception as exc:  # never break the user's computation
                tracer._give_up(func, exc)
        return out


class Tracer(Places, Provenance, Detectors, ChainSearch):
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
        self._modstack: list[str] = []
        self._modnames: dict[int, str] = {}
        self._paramnames: dict[int, str] = {}
        self._keepalive: list[Any] = []
        self._internal_cache: dict[str, bool] = {}
        self._handles: list[Any] = []
        self._gave_up = False
        if self.model is not None:
            self._register_root(self.model)

    def __enter__(self) -> Tracer:
        self._reset()
        mm = torch.nn.modules.module
        self._handles = [
            mm.register_module_forward_pre_hook(self._pre_hook),
            mm.register_module_forward_hook(self._post_hook, always_call=True),
        ]
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
            for h in self._handles:
                h.remove()
            self._handles = []
            if self._pending is not None:
                try:
                    self._flush_pending()
                except Exception:
                    self._pending = None
            self._modstack = []

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
        info = _INFOS.get(func)
        if info is None:
            info = _INFOS[func] = _OpInfo(func)
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
        if cat == _C_SKIP or info.base in _EXACT_CREATE:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                (self._exact if info.base in _EXACT_CREATE else self._made)[out] = True
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
        if info.base not in _EXACT_CREATE:
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
                    self._pending = (outs, (self._user_src(), self._modstack[-1] if self._modstack else None))
                    break

        if info.nocreate and (cat == _C_PLAIN or cat == _C_MASK) and self._cannot_create(args, kwargs, outs):
            # Finite inputs give a finite output here: skip the check unless an input is tainted.
            if not (mapping.data and self._tainted(args, kwargs)):
                if cat == _C_MASK and outs and outs[0].is_floating_point() and outs[0].numel():
                    ev = self._check_mask_op(info, node, args, kwargs, outs[0], None)
                    if ev is not None:
                        self._map_outs(info, outs, ev)
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

        ev = None
        if cat == _C_UF_POS:
            if lo is not None and lo < _small(outs[0].dtype):
                if lo < _tiny(outs[0].dtype):
                    ev = self._check_underflow(info, node, args, kwargs, outs[0], tainted, lo)
                if ev is None:
                    ev = self._check_small(info, node, args, outs[0], tainted, lo)
        elif cat == _C_UF_SIGNED:
            ev = self._check_mask_mul(info, node, args, outs[0], tainted)
            if ev is None and lo is not None:
                tiny = _tiny(outs[0].dtype)
                if lo < tiny and hi > -tiny:  # the range touches zero
                    ev = self._check_underflow(info, node, args, kwargs, outs[0], tainted, lo)
        elif cat == _C_CANCEL:
            if lo is not None:
                ev = self._check_cancellation(info, node, args, kwargs, outs[0], tainted)
        elif cat == _C_REDUCE:
            if node is None and lo is not None:
                ev = self._check_empty_reduction(info, node, args, kwargs, outs[0], tainted)
        elif cat == _C_MASK:
            if lo is not None:
                ev = self._check_mask_op(info, node, args, kwargs, outs[0], tainted)
        if ev is None and cat == _C_PLAIN and node is None and lo is not None and not info.written \
                and not info.nocreate and info.base not in _SPREAD:
            ev = self._check_underflow_any(func, info, node, args, kwargs, outs[0], tainted)
        if ev is None and info.base in _SPREAD and node is None and lo is not None:
            ev = self._check_zero_spread(info, node, args, outs[0], tainted)
        if ev is None and tainted:
            ev = self._propagate_finite(info, node, args, kwargs, outs, tainted)
        if ev is not None:
            self._map_outs(info, outs, ev)
        elif tainted:
            for o in outs:  # an in-place op may have cleaned a tainted tensor
                if o in mapping:
                    old = mapping[o]
                    del mapping[o]
                    for cand in (old.extra or {}).get("origins", ()):
                        if cand.out is o:
                            cand.drop()  # its NaN/Inf were overwritten: keep only the counts

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

    # -- precursor checks (finite outputs) ------------------------------------------------

    # -- non-finite outputs ---------------------------------------------------------------

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

    @property
    def discarded(self) -> list[Finding]:
        """NaN/Inf that appeared but never reached a non-finite result (masked out or absorbed).

        For example ``torch.where(x > 0, torch.sqrt(x), 0)`` traced without backward, or
        PyTorch's own ``ratio = grad / dist; ratio.masked_fill_(dist == 0, 0)`` in the
        backward of ``cdist``. Only op, place and counts are kept for these.
        """
        return [c.light() for c in self._candidates]

    # -- findings -------------------------------------------------------------------------

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



# ----------------------------------------------------------------------------------------
# convenience entry points


def _loss_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    loss = getattr(value, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def trace_call(fn: Callable, *args, model: torch.nn.Module | None = None, backward: bool = True,
               allow: Iterable[str | Callable] = (), sources: bool = True, stop_at_first: bool = True,
               max_precursors: int = 100, cancellation_bits: int | None = None, **kwargs) -> TraceResult:
    """Run ``fn(*args, **kwargs)`` under a :class:`Tracer` and return a :class:`TraceResult`.

    If the result is a tensor (or has a tensor ``.loss``, like a ``LossOutput``) that requires
    grad, its backward pass (``.sum().backward()`` when it is not a scalar) also runs under
    the tracer, so a NaN that only appears in backward is found; gradients accumulate into
    ``.grad`` as usual. Backward is skipped once the forward pass already has a finding.
    A non-finite result (or, with ``model``, a non-finite parameter gradient) that no op was
    blamed for, for example an allow-listed inf that reached the loss, becomes a finding too.
    The keywords above are the tracer's; every other keyword goes to ``fn``.
    """
    tracer = Tracer(model=model, allow=allow, sources=sources, stop_at_first=stop_at_first,
                    max_precursors=max_precursors, cancellation_bits=cancellation_bits)
    with tracer:
        value = fn(*args, **kwargs)
        loss = _loss_tensor(value)
        if backward and loss is not None and loss.requires_grad and tracer.finding is None:
            (loss if loss.dim() == 0 else loss.sum()).backward()
    if tracer.finding is None and loss is not None:
        tracer.check_result(loss, "result")
    if tracer.finding is None and model is not None and backward:
        for name, p in model.named_parameters():
            if p.grad is not None:
                tracer.check_result(p.grad, f"gradient of {name}")
                if tracer.finding is not None:
                    break
    result = TraceResult(value, tracer.finding, list(tracer.findings), list(tracer.precursors),
                         tracer.precursors_dropped)
    tracer._release()
    return result


def find_nonfinite(fn: Callable, *args, model: torch.nn.Module | None = None, backward: bool = True,
                   **kwargs) -> Finding | None:
    """Run ``fn(*args, **kwargs)`` (and its backward) under the tracer; the first finding or None.

    The tracer keywords ``allow``, ``sources``, ``stop_at_first``, ``max_precursors`` and
    ``cancellation_bits`` are accepted too; use :func:`trace_call` to also get the
    precursors of a clean run.

    >>> find_nonfinite(lambda x: torch.exp(x) - torch.exp(x), torch.tensor([100.0])).root_cause["kind"]
    'overflow'
    >>> find_nonfinite(lambda x: (x * 2).sum(), torch.ones(3, requires_grad=True)) is None
    True
    """
    return trace_call(fn, *args, model=model, backward=backward, **kwargs).finding
