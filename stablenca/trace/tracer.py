"""The :class:`Tracer`: a dispatch mode that sees every ATen op, forward and backward (see
:mod:`stablenca.trace`)."""

from __future__ import annotations

import math
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from .units import UnitCounter
from .records import (PRECURSOR_KINDS, ROOT_CAUSE_KINDS, ChainLink, Finding, Precursor, TraceResult, _dtype_name,
                      _exp_limits, _fmt, _format_source, _json_safe, _n, _significand_bits, _small, _stats_line,
                      _tiny, tensor_stats)

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

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_THIS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # the trace package
_SOURCE_KEY = "stablenca.trace.source"
_INF = math.inf

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

# Op categories (cached per OpOverload).
_C_PLAIN, _C_VIEW, _C_SKIP, _C_UF_POS, _C_UF_SIGNED, _C_CANCEL, _C_REDUCE, _C_MASK = range(8)

_UF_POS = {"exp", "exp2", "_softmax", "sigmoid", "erfc"}  # outputs >= 0
_UF_SIGNED = {"mul", "div", "pow"}
_CANCEL = {"add", "sub", "rsub"}
_REDUCE = {"sum", "mean"}
_MASKCAND = {"_to_copy", "where", "masked_fill"}
_SKIP = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_",
    "set_", "_local_scalar_dense", "zeros", "zeros_like", "ones", "ones_like",
    "eye", "arange", "randperm", "_to_dense",
}
#: Ops whose outputs are exact values (constants): a subtraction of them loses nothing.
_EXACT_CREATE = {"zeros", "zeros_like", "ones", "ones_like", "eye", "arange", "full", "full_like", "new_full",
                 "new_ones", "new_zeros", "scalar_tensor", "lift_fresh_copy"}
#: Ops that only select, move or negate values: exact inputs give exact outputs.
_EXACT_SELECT = {"clone", "copy", "_to_copy", "neg", "abs", "where", "masked_fill", "cat", "stack", "index",
                 "index_select", "gather", "repeat", "expand_copy", "maximum", "minimum", "relu", "flip", "roll",
                 "tril", "triu", "constant_pad_nd", "_unsafe_view", "clamp", "sign"}
#: Arithmetic whose result is exact when the operands are and it is an integer below 2^p.
_EXACT_ARITH = {"add", "sub", "rsub", "mul", "sum"}
_VIEW_EXTRA = {"_unsafe_view", "lift_fresh", "lift_fresh_copy", "detach", "alias"}
#: Ops whose output element i depends only on input element i (after broadcasting).
_ELEMENTWISE = {
    "abs", "add", "sub", "rsub", "mul", "div", "true_divide", "neg", "exp", "exp2", "expm1",
    "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "pow", "reciprocal", "sigmoid", "tanh",
    "sin", "cos", "tan", "sinh", "cosh", "asin", "acos", "atan", "asinh", "acosh", "atanh",
    "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "fmax", "fmin", "where",
    "masked_fill", "_to_copy", "clone", "copy", "square", "xlogy", "lerp", "addcmul",
    "addcdiv", "threshold_backward", "relu", "gelu", "silu", "softplus", "erf", "erfc",
    "lgamma", "digamma", "atan2", "hypot", "fmod", "remainder", "sign", "floor", "ceil",
    "round", "trunc", "frac", "nan_to_num", "logit", "special_xlog1py", "sgn",
}
#: Ops whose output is finite whenever their inputs (and scalar arguments) are finite and
#: that cannot underflow: their output is not checked unless an input is tainted.
_NONCREATING = {
    "neg", "abs", "relu", "clone", "masked_fill", "where", "index", "index_select", "gather", "cat", "stack",
    "maximum", "minimum", "fmax", "fmin", "clamp", "clamp_min", "clamp_max", "sign", "sgn", "threshold_backward",
    "tanh", "hardtanh", "fill", "zero", "constant_pad_nd", "embedding", "index_put", "masked_scatter", "copy",
    "_to_copy", "flip", "roll", "repeat", "tril", "triu", "select_backward", "slice_backward",
    "index_select_backward", "floor", "ceil", "round", "trunc", "new_zeros", "new_ones", "zeros_like",
    "scatter", "full_like", "ones_like",
}
#: Elementwise ops that cannot turn finite inputs into ±inf.
_NO_OVERFLOW = {"neg", "clone", "abs", "masked_fill", "where", "copy", "relu", "clamp", "clamp_min",
                "clamp_max", "maximum", "minimum", "fmax", "fmin", "sign", "sgn", "floor", "ceil", "round",
                "trunc", "frac", "sigmoid", "tanh", "sin", "cos", "threshold_backward", "nan_to_num"}
_LOG_POLE = {"log": 0.0, "log2": 0.0, "log10": 0.0, "log1p": -1.0}


_INFOS: dict[Any, "_OpInfo"] = {}  # per OpOverload, shared by all tracers
_current_node = getattr(torch._C, "_current_autograd_node", lambda: None)


def _base_name(short: str) -> str:
    return short[:-1] if short.endswith("_") and not short.endswith("__") else short


class _OpInfo:
    __slots__ = ("name", "packet", "short", "base", "cat", "written", "elementwise", "argnames",
                 "full_reduction", "nocreate")

    def __init__(self, func) -> None:
        self.name = str(func)  # aten.div.Tensor
        self.packet = str(func.overloadpacket)  # aten.div
        self.short = func._opname  # div / div_
        self.base = _base_name(self.short)
        schema = func._schema
        self.argnames = tuple(a.name for a in schema.arguments)
        written = [(i, a.name) for i, a in enumerate(schema.arguments)
                   if a.alias_info is not None and a.alias_info.is_write]
        # positions and keyword names of the arguments the op writes to (in-place / out=)
        self.written = frozenset([i for i, _ in written] + [n for _, n in written])
        self.full_reduction = func._overloadname == "default"
        self.elementwise = self.base in _ELEMENTWISE
        self.nocreate = self.base in _NONCREATING
        if func.is_view or self.short in _VIEW_EXTRA:
            self.cat = _C_VIEW
        elif self.short in _SKIP:
            self.cat = _C_SKIP
        elif self.written:  # in-place or out=: the inputs are gone, check NaN/Inf only
            self.cat = _C_PLAIN
        elif self.short in _UF_POS:
            self.cat = _C_UF_POS
        elif self.short in _UF_SIGNED:
            self.cat = _C_UF_SIGNED
        elif self.short in _CANCEL:
            self.cat = _C_CANCEL
        elif self.short in _REDUCE:
            self.cat = _C_REDUCE
        elif self.short in _MASKCAND:
            self.cat = _C_MASK
        else:
            self.cat = _C_PLAIN


# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# internal event graph


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
                 "n_nan", "n_inf", "precursors", "versions", "finding", "unit", "func")

    def __init__(self, info, args, kwargs, out, leaf_bad, index, phase, bnode, module, src, n_nan, n_inf,
                 precursors):
        self.info, self.args, self.kwargs, self.out = info, args, kwargs, out
        self.leaf_bad, self.index = leaf_bad, index
        self.phase, self.bnode, self.module, self.src = phase, bnode, module, src
        self.n_nan, self.n_inf, self.precursors = n_nan, n_inf, precursors
        self.unit = None
        self.func = None
        self.versions = [(t, t._version) for _, t in _flat_tensors(args, kwargs) if not t.is_inference()]
        self.finding: Finding | None = None

    def modified(self) -> bool:
        return any(t._version != v for t, v in self.versions if t is not self.out)

    def drop(self) -> None:
        """Release the tensors (the analysis then only reports counts)."""
        self.args, self.kwargs, self.out, self.versions = (), {}, None, []

    def light(self) -> Finding:
        detail = (f"{self.n_nan} NaN and {self.n_inf} ±inf appeared here but never reached a non-finite "
                  f"result (masked out or absorbed)")
        src = _format_source(self.src)
        first = ChainLink(self.info.name, self.phase, detail, None, "source", self.bnode, self.module, src)
        return Finding(self.info.name, self.phase, self.bnode, self.module, src, [], {}, "discarded", detail,
                       [first], {"op": self.info.name, "kind": "unknown", "detail": detail}, self.precursors,
                       self.index)


def _root_eligible(ev: _Event) -> bool:
    return ev.kind in PRECURSOR_KINDS or ev.kind in ("input", "zero_reduction")


#: Reductions whose exact zero is a fact about the data (every reduced value equal, or all zero).
_SPREAD = {"std", "var", "std_mean", "var_mean", "norm", "linalg_vector_norm", "_euclidean_dist"}


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


def _flat_tensors(args, kwargs):
    """(position or keyword, tensor) for every tensor argument, one level of lists flattened."""
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            yield i, a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield i, b
    for k, a in kwargs.items():
        if isinstance(a, torch.Tensor):
            yield k, a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, torch.Tensor):
                    yield k, b


def _scalar_value(a) -> float | None:
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return float(a)
    if isinstance(a, torch.Tensor) and a.numel() == 1 and a.dim() == 0 and (a.is_floating_point()):
        return float(a)
    return None


def _as_operand(a, like: torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(like.dtype) if a.dtype != like.dtype else a
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def _broadcast(t: torch.Tensor, shape) -> torch.Tensor | None:
    try:
        return torch.broadcast_to(t, shape)
    except RuntimeError:
        return None


def _positions_for(pos: torch.Tensor | None, shape) -> torch.Tensor | None:
    """Map a bool mask over an op's output to one of its (broadcast) inputs."""
    if pos is None:
        return None
    shape = tuple(shape)
    if tuple(pos.shape) == shape:
        return pos
    try:
        return pos.to(torch.int32).sum_to_size(shape) > 0
    except RuntimeError:
        return None


def _reduce_dims(args, kwargs, ndim: int) -> tuple[list[int], bool]:
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = bool(args[2]) if len(args) > 2 else bool(kwargs.get("keepdim", False))
    if isinstance(dim, int):
        dim = [dim]
    if dim is None or len(dim) == 0:
        return list(range(ndim)), keepdim
    return [d % max(ndim, 1) for d in dim], keepdim


def _recompute_float64(func, args, kwargs, out: torch.Tensor) -> torch.Tensor | None:
    """``func`` once more with its floating inputs in float64 (aligned with ``out``), or None.

    Separates an overflow (the exact result is finite, only the dtype's range is exceeded)
    from a pole or a domain error (the exact result is not finite either). None for float64
    outputs (no wider dtype) and for ops that fail or change shape.
    """
    if func is None or out.dtype == torch.float64 or not out.is_floating_point():
        return None

    def up(a):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.detach().to(torch.float64)
        if isinstance(a, (list, tuple)):
            return type(a)(up(b) for b in a)
        return a

    try:
        with torch.no_grad():
            exact = func(*up(tuple(args)), **{k: up(v) for k, v in kwargs.items()})
    except Exception:
        return None
    if isinstance(exact, (tuple, list)):
        exact = next((e for e in exact if isinstance(e, torch.Tensor) and e.shape == out.shape), None)
    if not isinstance(exact, torch.Tensor) or exact.shape != out.shape:
        return None
    return exact


# ----------------------------------------------------------------------------------------
# the tracer


class Tracer:
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

    # -- modules --------------------------------------------------------------------------

    def _register_root(self, root: torch.nn.Module) -> None:
        self._keepalive.append(root)
        for name, m in root.named_modules():
            self._modnames.setdefault(id(m), name if name else f"<{type(root).__name__}>")
        for name, p in root.named_parameters():
            self._paramnames.setdefault(id(p), name)

    def _pre_hook(self, module, args) -> None:
        name = self._modnames.get(id(module))
        if name is None:
            if not self._modstack:
                self._register_root(module)
                name = self._modnames.get(id(module))
            if name is None:
                name = f"<{type(module).__name__}>"
        self._modstack.append(name)

    def _post_hook(self, module, args, output) -> None:
        if self._modstack:
            self._modstack.pop()

    # -- sources --------------------------------------------------------------------------

    def _user_src(self) -> tuple[str, int] | None:
        f = sys._getframe(1)
        cache = self._internal_cache
        while f is not None:
            fn = f.f_code.co_filename
            internal = cache.get(fn)
            if internal is None:
                absfn = os.path.abspath(fn) if not fn.startswith("<") else fn
                internal = absfn.startswith(_TORCH_DIR) or absfn.startswith(_THIS_DIR) or fn.startswith("<frozen")
                cache[fn] = internal
            if not internal:
                return fn, f.f_lineno
            f = f.f_back
        return None

    def _flush_pending(self) -> None:
        outs, info = self._pending
        self._pending = None
        for o in outs:
            gf = o.grad_fn
            if gf is not None:
                md = gf.metadata
                if _SOURCE_KEY not in md:
                    md[_SOURCE_KEY] = info

    # -- the per-op observer --------------------------------------------------------------

    def _observe(self, func, args, kwargs, out) -> None:
        info = _INFOS.get(func)
        if info is None:
            info = _INFOS[func] = _OpInfo(func)
        self._index += 1
        if self._pending is not None:
            self._flush_pending()
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

    # -- exactness ------------------------------------------------------------------------

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
        if info.base in _EXACT_SELECT or info.base in _EXACT_ARITH:
            exact = all(self._is_exact(a) for _, a in _flat_tensors(args, kwargs))
            if exact and info.base in _EXACT_ARITH:
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

    # -- provenance -----------------------------------------------------------------------

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

    def _where(self, node) -> tuple[str, str | None, str | None, tuple | None]:
        """(phase, backward node name, module, raw source) for an op being observed now."""
        if node is not None:
            meta = None
            try:
                meta = node.metadata.get(_SOURCE_KEY)
            except Exception:
                meta = None
            src, module = meta if meta else (None, None)
            return "backward", node.name(), module, src
        module = self._modstack[-1] if self._modstack else None
        return "forward", None, module, self._user_src()

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

    @staticmethod
    def _taint_of(tainted, bits) -> list[tuple[int, _Event]]:
        return [(i, ev) for i, ev in (tainted or ()) if ev.taint & bits]

    # -- precursor checks (finite outputs) ------------------------------------------------

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
        if out.dtype == torch.float64 or not out.numel() or int(torch.count_nonzero(out)) == out.numel():
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

    def _upstream_kinds(self, ev: _Event, limit: int = 64) -> set[str]:
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

    def _mask_event(self, info, node, out, tainted, mask_t, inverted) -> _Event:
        small_hops = self._hops(tainted, _SMALL, "small")
        ev = self._event(info, node, "mask", "mask multiply" if info.base == "mul" else "mask",
                         _ZERO | (_SMALL if small_hops else 0), self._taint_of(tainted, _ZERO | _SMALL), out)
        ev.extra = {"mask": (mask_t, inverted)}
        if small_hops:
            ev.extra["small"] = small_hops
        return ev

    @staticmethod
    def _hops(tainted, bit: int, key: str) -> int:
        """Hops left for ``bit`` after this op (0: do not carry it further)."""
        hops = 0
        for _, ev in tainted or ():
            if ev.taint & bit and ev.extra:
                hops = max(hops, ev.extra.get(key, 0) - 1)
        return hops

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

    # -- non-finite outputs ---------------------------------------------------------------

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

    @staticmethod
    def _origins(bad_inputs) -> tuple[Finding, ...]:
        found: dict[int, Finding] = {}
        for _, ev in bad_inputs:
            for f in (ev.extra or {}).get("origins", ()):
                found.setdefault(id(f), f)
        return tuple(sorted(found.values(), key=lambda f: f.index))

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

    def _lookup_tensor(self, args, kwargs, pos):
        if isinstance(pos, int) and 0 <= pos < len(args) and isinstance(args[pos], torch.Tensor):
            return args[pos]
        if isinstance(pos, str) and isinstance(kwargs.get(pos), torch.Tensor):
            return kwargs[pos]
        return None

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
            pattern, kind, explain, prec = self._analyse(info, args, kwargs, out, pos_nan, pos_inf, cand.func)
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
            if _root_eligible(best[-1]):
                root = best[-1]
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
        operands = self._binary_operands(info, args, kwargs, out)
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

    def _analyse(self, info, args, kwargs, out, pos_nan, pos_inf, func=None):
        """(pattern, root kind if nothing upstream, [(argpos, tensor, need, positions)], precursor)."""
        base = info.base
        dtype = out.dtype
        shape = out.shape
        anyup = _ZERO | _INFOK | _BAD | _INEXACT

        def cnt(m):
            return int(m.sum())

        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()
                   and i not in info.written]
        finite_inputs = all(bool(torch.isfinite(a).all()) for _, a in tensors)
        if info.written:
            if base == "div" and len(args) > 1:  # the divisor survives an in-place division
                b = _broadcast(_as_operand(args[1], out), shape)
                if b is not None and cnt((pos_nan | pos_inf) & (b == 0)):
                    z = (pos_nan | pos_inf) & (b == 0)
                    tb = args[1] if isinstance(args[1], torch.Tensor) else None
                    return "x/0 (in-place)", "division_by_zero", [(1, tb, _ZERO, z)], None
            base = "<in-place>"  # the overwritten operand is gone: only the generic analysis applies

        def ov_detail(n):
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

        if base in ("div", "true_divide", "reciprocal"):
            ops = self._indexed_broadcast_operands(info, args, kwargs, out, shape)
            if ops is not None:
                ia, a, ib, b = ops
                z00 = pos_nan & (a == 0) & (b == 0)
                zx0 = pos_inf & (b == 0) & torch.isfinite(a)
                iii = pos_nan & torch.isinf(a) & torch.isinf(b)
                ovf = pos_inf & (b != 0) & torch.isfinite(a) & torch.isfinite(b)
                ta = args[ia] if ia >= 0 else None
                tb = args[ib]
                if cnt(z00):
                    ex = [(ia, ta, _ZERO, z00), (ib, tb, _ZERO, z00)]
                    return "0/0", "division_by_zero", ex, None
                if cnt(zx0):
                    return ("1/0" if base == "reciprocal" else "x/0"), "division_by_zero", \
                        [(ib, tb, _ZERO, zx0)], None
                if cnt(iii):
                    return "inf/inf", "unknown", [(ia, ta, _INFOK | _BAD, iii), (ib, tb, _INFOK | _BAD, iii)], None
                if cnt(ovf):
                    d = ov_detail(cnt(ovf))
                    return "overflow", "overflow", [(ia, ta, _INEXACT | _SMALL, None),
                                                    (ib, tb, _INEXACT | _SMALL, None)], \
                        ("overflow", d, cnt(ovf))
        elif base in _LOG_POLE:
            x = args[0]
            pole = _LOG_POLE[base]
            at_pole = pos_inf & (x == pole)
            below = pos_nan & (x < pole)
            if cnt(at_pole):
                pat = "log(0)" if pole == 0 else "log1p(-1)"
                return pat, "division_by_zero", [(0, x, _ZERO if pole == 0 else anyup, at_pole)], None
            if cnt(below):
                return "log(negative)", "domain", [(0, x, _INEXACT | _ZERO, below)], None
        elif base in ("sqrt", "rsqrt"):
            x = args[0]
            neg = pos_nan & (x < 0)
            if base == "rsqrt":
                z = pos_inf & (x == 0)
                if cnt(z):
                    return "1/sqrt(0)", "division_by_zero", [(0, x, _ZERO, z)], None
            if cnt(neg):
                return f"{base}(negative)", "domain", [(0, x, _INEXACT | _ZERO, neg)], None
        elif base == "pow":
            ops = self._indexed_broadcast_operands(info, args, kwargs, out, shape)
            if ops is not None:
                ia, a, ib, b = ops
                ta = args[ia] if isinstance(args[ia], torch.Tensor) else None
                frac = pos_nan & (a < 0) & (b != torch.round(b))
                zneg = pos_inf & (a == 0) & (b < 0)
                if cnt(frac):
                    return "pow(negative, fractional)", "domain", [(ia, ta, _INEXACT | _ZERO, frac)], None
                if cnt(zneg):
                    return "0^negative", "division_by_zero", [(ia, ta, _ZERO, zneg)], None
        elif base == "mul":
            ops = self._indexed_broadcast_operands(info, args, kwargs, out, shape)
            if ops is not None:
                ia, a, ib, b = ops
                za = pos_nan & (a == 0) & torch.isinf(b)
                zb = pos_nan & torch.isinf(a) & (b == 0)
                ta = args[ia] if isinstance(args[ia], torch.Tensor) else None
                tb = args[ib] if isinstance(args[ib], torch.Tensor) else None
                if cnt(za) or cnt(zb):
                    ex = []
                    if cnt(za):
                        ex += [(ib, tb, _INFOK | _BAD, za), (ia, ta, _ZERO, za)]
                    if cnt(zb):
                        ex += [(ia, ta, _INFOK | _BAD, zb), (ib, tb, _ZERO, zb)]
                    return "0*inf", "unknown", ex, None
        elif base in ("add", "sub", "rsub"):
            ops = self._indexed_broadcast_operands(info, args, kwargs, out, shape)
            if ops is not None:
                ia, a, ib, b = ops
                ii = pos_nan & torch.isinf(a) & torch.isinf(b)
                if cnt(ii):
                    ta = args[ia] if isinstance(args[ia], torch.Tensor) else None
                    tb = args[ib] if isinstance(args[ib], torch.Tensor) else None
                    return "inf-inf", "unknown", [(ia, ta, _INFOK | _BAD, ii), (ib, tb, _INFOK | _BAD, ii)], None
        elif base in ("_softmax", "_log_softmax"):
            x = args[0]
            dim = args[1] if len(args) > 1 else -1
            rows = torch.all(x == -_INF, dim=dim, keepdim=True) if x.dim() else (x == -_INF)
            m = pos_nan & _broadcast(rows, shape)
            if cnt(m):
                n_rows = int(rows.sum())
                return (f"softmax of an all -inf row ({n_rows} rows)", "empty_set",
                        [(0, x, _INFOK | _BAD, None)],
                        ("empty_set", f"{info.short} over {n_rows} rows whose every entry is -inf → NaN", n_rows))
        elif base == "mean":
            x = args[0]
            if isinstance(x, torch.Tensor):
                dims = list(range(x.dim())) if info.full_reduction else _reduce_dims(args, kwargs, x.dim())[0]
                if x.dim() and any(x.shape[d] == 0 for d in dims):
                    return ("mean of an empty set", "empty_set", [],
                            ("empty_set", f"mean over 0 elements → NaN in {out.numel()} rows", out.numel()))
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


# ----------------------------------------------------------------------------------------
# convenience entry points

_TRACER_KWARGS = ("allow", "sources", "stop_at_first", "max_precursors", "cancellation_bits")


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
