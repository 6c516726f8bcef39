"""What the tracer knows about each ATen op: categories, and helpers that read an op's arguments.

An op's rules live in one place: :class:`OpInfo` (cached per ``OpOverload``) says whether it is
a view, a creation op, elementwise, a reduction, which arguments it writes; the NaN/Inf pattern
rules are registered per op with :func:`nan_pattern` in :mod:`stablenca.trace.detectors`, the way
``torch.utils.flop_counter`` registers its formulas.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_INF = math.inf

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


#: Reductions whose exact zero is a fact about the data (every reduced value equal, or all zero).
_SPREAD = {"std", "var", "std_mean", "var_mean", "norm", "linalg_vector_norm"}


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
