"""Provenance: which op produced a tensor worth following back, and which values are exact.

:class:`_Event` is one typed node of the event graph (op, place, kind, taint bits, inputs);
:class:`_Candidate` a NaN/Inf waiting to be confirmed; :class:`Provenance` the tracer's tables
(tensor -> event, storage -> events, exact and computed tensors).
"""

from __future__ import annotations

import weakref

import torch

from .ops import _flat_tensors
from .records import PRECURSOR_KINDS, ChainLink, Finding, _dtype_name, _format_source, _significand_bits, tensor_stats

# Taint bits: why a tensor produced under the tracer is worth following back.
_ZERO = 1  # carries zeros of interest (underflow, cancellation to 0, mask, empty set)
_INFOK = 2  # carries intentional ±inf (allow-listed writer, or an inf-only leaf)
_BAD = 4  # carries NaN/Inf of a finding, or of a NaN leaf / non-finite parameter
_INEXACT = 8  # carries precision loss (cancellation), followed for a few ops only
_INEXACT_HOPS = 8
# carries values near underflow (zeros/subnormals of an underflow, or positive outputs of
# exp/softmax/sigmoid/erfc below 1/sqrt(finfo.max)), followed for a few ops only: it lets an
# overflow from dividing by a tiny number walk back through the divisor (see _tiny_operand)
_SMALL = 16
_SMALL_HOPS = 8



class _Event:
    """What produced a tainted tensor (internal; never holds the output tensor strongly)."""

    __slots__ = ("index", "op", "phase", "node", "module", "src", "kind", "detail", "taint", "inputs",
                 "shape", "dtype", "stats", "ref", "extra", "elementwise", "unit", "__weakref__")

    def __init__(self, index, op, phase, node, module, src, kind, detail, taint, inputs, out, elementwise):
        self.index = index
        self.op = op
        self.phase = phase
        self.node = node
        self.module = module
        self.src = src
        self.kind = kind
        self.detail = detail
        self.taint = taint
        self.inputs = inputs  # tuple of (arg position, _Event)
        self.elementwise = elementwise
        self.stats = None
        self.extra = None
        self.unit = None  # see stablenca.trace.units
        if out is not None:
            self.shape = tuple(out.shape)
            self.dtype = out.dtype
            try:
                self.ref = weakref.ref(out)
            except TypeError:
                self.ref = None
        else:
            self.shape = None
            self.dtype = None
            self.ref = None


_MAX_HELD = 4  # candidates whose tensors are kept for a later analysis


class _Candidate:
    """NaN/Inf produced from finite values, kept until it is used (then analysed) or dropped."""

    __slots__ = ("info", "args", "kwargs", "out", "leaf_bad", "index", "phase", "bnode", "module", "src",
                 "n_nan", "n_inf", "precursors", "versions", "finding", "unit", "func", "before")

    def __init__(self, info, args, kwargs, out, leaf_bad, index, phase, bnode, module, src, n_nan, n_inf,
                 precursors):
        self.info, self.args, self.kwargs, self.out = info, args, kwargs, out
        self.leaf_bad, self.index = leaf_bad, index
        self.phase, self.bnode, self.module, self.src = phase, bnode, module, src
        self.n_nan, self.n_inf, self.precursors = n_nan, n_inf, precursors
        self.unit = None
        self.func = None
        self.before: tuple = ()  # an in-place op's overwritten arguments as they were (OpCall.before)
        self.versions = [(t, t._version) for _, t in _flat_tensors(args, kwargs) if not t.is_inference()]
        self.finding: Finding | None = None

    def modified(self) -> bool:
        return any(t._version != v for t, v in self.versions if t is not self.out)

    def drop(self) -> None:
        """Release the tensors (the analysis then only reports counts)."""
        self.args, self.kwargs, self.out, self.versions, self.before = (), {}, None, [], ()

    def light(self) -> Finding:
        detail = (f"{self.n_nan} NaN and {self.n_inf} ±inf appeared here but never reached a non-finite "
                  f"result (masked out or absorbed)")
        src = _format_source(self.src)
        first = ChainLink(self.info.name, self.phase, detail, None, "source", self.bnode, self.module, src)
        return Finding(self.info.name, self.phase, self.bnode, self.module, src, [], {}, "discarded", detail,
                       [first], {"op": self.info.name, "kind": "unknown", "detail": detail}, self.precursors,
                       self.index)


def taint_of(tainted, bits: int) -> list[tuple[int, _Event]]:
    """The (argument position, event) pairs of ``tainted`` that carry any of ``bits``."""
    return [(i, ev) for i, ev in (tainted or ()) if ev.taint & bits]


def hops_left(tainted, bit: int, key: str) -> int:
    """Hops left for ``bit`` after this op (0: do not carry it further)."""
    hops = 0
    for _, ev in tainted or ():
        if ev.taint & bit and ev.extra:
            hops = max(hops, ev.extra.get(key, 0) - 1)
    return hops


def upstream_kinds(ev: _Event, limit: int = 64) -> set[str]:
    """The kinds of the events upstream of ``ev`` (itself included), at most ``limit`` events."""
    kinds: set[str] = set()
    stack = [ev]
    seen: set[int] = set()
    while stack and len(seen) < limit:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if e.kind:
            kinds.add(e.kind)
        stack.extend(u for _, u in e.inputs)
    return kinds


def _root_eligible(ev: _Event) -> bool:
    return ev.kind in PRECURSOR_KINDS or ev.kind == "input"


class Provenance:
    """Mixin of :class:`~stablenca.trace.tracer.Tracer`: its provenance and exactness tables."""

    def _is_exact(self, t) -> bool:
        """Does ``t`` hold exact values: not floating (a bool or integer tensor), a constant,
        a mask, an integer result of exact ops, or an input (its values are given, not computed)?"""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return True
        for x in (t, t._base):
            if x is not None and x in self._exact:
                return True
        return not (t in self._made or (t._base is not None and t._base in self._made))

    def _track_exact(self, info, args, kwargs, outs) -> None:
        floating = [o for o in outs if o.is_floating_point()]
        if not floating:
            return
        exact = False
        facts = info.facts
        if facts.exact_select or facts.exact_arith:
            exact = all(self._is_exact(a) for _, a in _flat_tensors(args, kwargs))
            if exact and facts.exact_arith:
                limit = 2.0 ** _significand_bits(floating[0].dtype)  # integers below it are exact
                for o in floating:
                    if o.numel() and not (bool(torch.equal(o, torch.round(o))) and float(o.abs().max()) <= limit):
                        exact = False
        if info.base == "_to_copy" and exact and args and isinstance(args[0], torch.Tensor) \
                and args[0].is_floating_point():
            exact = torch.finfo(floating[0].dtype).bits >= torch.finfo(args[0].dtype).bits  # widening only
        table = self._exact if exact else self._made
        for o in floating:
            table[o] = True
            if exact and o in self._made:  # an in-place write made it exact again
                del self._made[o]
            elif not exact and o in self._exact:
                del self._exact[o]

    def _map_outs(self, info, outs, ev: _Event) -> None:
        mapping = self._map
        for o in outs:
            mapping[o] = ev
            if info.written:  # an in-place write into a view also changes its base
                base = o._base
                if base is not None:
                    mapping[base] = ev
            self._register_storage(o, ev)

    @staticmethod
    def _geometry(t: torch.Tensor) -> tuple:
        return (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)

    def _register_storage(self, t: torch.Tensor, ev: _Event) -> None:
        """Remember ``ev`` under ``t``'s storage and geometry (see :meth:`_lookup_any`)."""
        try:
            storage = t.untyped_storage()
            key = self._geometry(t)
        except Exception:  # no storage (sparse, some subclasses)
            return
        entries = self._storages.get(storage)
        if entries is None:
            entries = self._storages[storage] = []
        entries.append((key, ev))
        if len(entries) > 8:
            del entries[0]

    def _lookup_any(self, t: torch.Tensor) -> _Event | None:
        """:meth:`_lookup`, falling back to a tensor with the same storage and geometry.

        The autograd engine hands a backward formula the very tensor object saved in the
        forward pass for saved inputs (the identity lookup works); a different object that
        views the same storage (an engine that rewraps, ``set_``) is matched by storage
        (held weakly: a freed storage cannot be confused with a new one at the same
        address), offset, shape, stride and dtype.
        """
        ev = self._lookup(t)
        if ev is not None or not self._storages.data:
            return ev
        try:
            entries = self._storages.get(t.untyped_storage())
            key = self._geometry(t)
        except Exception:
            return None
        for k, e in reversed(entries or ()):
            if k == key:
                return e
        return None

    def _lookup(self, t: torch.Tensor) -> _Event | None:
        ev = self._map.get(t)
        if ev is None:
            base = t._base
            if base is not None:
                ev = self._map.get(base)
        return ev

    def _tainted(self, args, kwargs) -> list[tuple[int, _Event]]:
        found = []
        for i, a in _flat_tensors(args, kwargs):
            ev = self._lookup(a)
            if ev is not None:
                found.append((i, ev))
        return found

    def _lookup_tensor(self, args, kwargs, pos):
        if isinstance(pos, int) and 0 <= pos < len(args) and isinstance(args[pos], torch.Tensor):
            return args[pos]
        if isinstance(pos, str) and isinstance(kwargs.get(pos), torch.Tensor):
            return kwargs[pos]
        return None

    @staticmethod
    def _origins(bad_inputs) -> tuple[Finding, ...]:
        found: dict[int, Finding] = {}
        for _, ev in bad_inputs:
            for f in (ev.extra or {}).get("origins", ()):
                found.setdefault(id(f), f)
        return tuple(sorted(found.values(), key=lambda f: f.index))

    def _leaf_event(self, info, node, t: torch.Tensor) -> _Event | None:
        """An event for a non-finite tensor that was not produced under the tracer."""
        has_nan = bool(torch.isnan(t).any())
        if not has_nan and not bool(torch.isinf(t).any()):
            return None
        owner = t._base if t._base is not None else t  # a view such as weight.t() names its base
        name = self._paramnames.get(id(owner))
        is_param = (isinstance(owner, torch.nn.Parameter) or name is not None
                    or (owner.is_leaf and owner.requires_grad))
        st = tensor_stats(t)
        what = f"parameter {name}" if name else ("a parameter" if is_param else "an input tensor")
        if owner is not t:
            what += " (seen through a view)"
        counts = ", ".join(f"{st[k]} {lbl}" for k, lbl in (("nan", "NaN"), ("posinf", "+inf"),
                                                           ("neginf", "-inf")) if st[k])
        detail = (f"{what} {_dtype_name(t.dtype)}{list(t.shape)} already holds {counts} "
                  f"(not produced under the tracer)")
        bad = has_nan or is_param
        ev = _Event(self._index, "input", "forward" if node is None else "backward", None, None, None,
                    "input" if bad else "leaf_inf", detail, _BAD if bad else _INFOK, (), t, False)
        ev.stats = st
        self._map[t] = ev
        if owner is not t:
            self._map[owner] = ev
        return ev
