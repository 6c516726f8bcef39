"""One op call as the tracer reads it: :class:`_OpInfo` (cached per ``OpOverload``: names, the
arguments it writes, its facts from :mod:`stablenca.trace.registry`, which checks it gets) and
helpers that read an op's arguments (operands, reduced dimensions, a float64 recompute).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .registry import NAN_PATTERNS, facts_for, functional_packet

_INF = math.inf

# Op categories (cached per OpOverload): which checks an op's output gets.
_C_PLAIN, _C_VIEW, _C_SKIP, _C_UF_POS, _C_UF_SIGNED, _C_CANCEL, _C_REDUCE, _C_MASK = range(8)

_INFOS: dict[Any, "_OpInfo"] = {}  # per OpOverload, shared by all tracers
_current_node = getattr(torch._C, "_current_autograd_node", lambda: None)


def _base_name(short: str) -> str:
    return short[:-1] if short.endswith("_") and not short.endswith("__") else short


class _OpInfo:
    """One op overload as the tracer sees it: names, written arguments, its registered facts."""

    __slots__ = ("name", "packet", "short", "base", "cat", "written", "elementwise", "argnames",
                 "full_reduction", "nocreate", "facts", "rule", "family_rule", "keep_before")

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
        facts = self.facts = facts_for(func)
        self.elementwise = facts.elementwise
        self.nocreate = facts.noncreating
        # the NaN/Inf pattern rule; an in-place op lost its inputs, so only the generic analysis applies
        # unless the tracer kept them (``keep_before``): then its functional op's rule does
        self.family_rule = NAN_PATTERNS.get(functional_packet(func))
        self.rule = None if self.written else self.family_rule
        # An in-place elementwise op that can turn finite inputs into ±inf/NaN (exp_, pow_, lgamma_,
        # div_): the tracer copies the arguments it overwrites before it runs, so that its analysis
        # (the float64/mpmath recompute, the pattern rule) reads the values the op read.
        in_place = self.short.endswith("_") and not self.short.endswith("__")
        self.keep_before = tuple(sorted(i for i in self.written if isinstance(i, int))) \
            if in_place and facts.elementwise and not facts.no_overflow else ()
        if func.is_view or facts.view:
            self.cat = _C_VIEW
        elif facts.skip:
            self.cat = _C_SKIP
        elif self.written:  # in-place or out=: the inputs are gone, check NaN/Inf only
            self.cat = _C_PLAIN
        elif facts.underflow == "positive":
            self.cat = _C_UF_POS
        elif facts.underflow == "signed":
            self.cat = _C_UF_SIGNED
        elif facts.cancels:
            self.cat = _C_CANCEL
        elif facts.reduction:
            self.cat = _C_REDUCE
        elif facts.mask:
            self.cat = _C_MASK
        else:
            self.cat = _C_PLAIN


def op_info(func) -> _OpInfo:
    """The cached :class:`_OpInfo` of an op overload."""
    info = _INFOS.get(func)
    if info is None:
        info = _INFOS[func] = _OpInfo(func)
    return info


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


def copy_before(keep: tuple, args) -> tuple:
    """(position, copy) of the floating arguments at ``keep`` that an in-place op will overwrite.

    float64 ones are not copied: nothing is recomputed for a float64 output (no wider dtype).
    """
    kept = []
    for i in keep:
        a = args[i] if i < len(args) else None
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64 and a.numel():
            kept.append((i, a.detach().clone()))
    return tuple(kept)


def restored_args(args, before) -> tuple:
    """``args`` with the overwritten arguments replaced by their copies from before the op ran."""
    args = list(args)
    for i, a in before:
        args[i] = a
    return tuple(args)


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
