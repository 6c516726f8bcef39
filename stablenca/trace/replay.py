"""Replays of one step with chosen units (forward ops, backward nodes) in another precision.

:class:`_Precision` is a dispatch mode that computes the chosen units in float64 and casts
their results back to the working dtype (``promote``), or rounds their results to the working
dtype (``inject``); :func:`_replays` runs a step's forward once and its backward once per
pass, capturing the failing quantity. The verdicts built from these replays are in
:mod:`stablenca.trace.verify`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from .units import UnitCounter

_REFERENCE = torch.float64
_COMPUTES: dict = {}  # per OpOverload: does it compute new values (not a view, copy or in-place write)?
_CONVERSIONS = {"aten._to_copy", "aten.copy_", "aten.to", "aten.clone", "aten.detach", "aten.lift_fresh"}

#: A step to replay: ``forward(dtype)`` restores the pre-state and runs the forward pass with
#: every floating tensor in ``dtype``; it returns the loss and the tensors whose gradients count.
Forward = Callable[[torch.dtype], tuple[torch.Tensor, Sequence[torch.Tensor]]]


class _Precision(TorchDispatchMode):
    """Replays a step with chosen units computed in another precision.

    ``how``: ``"promote"`` (compute in float64, cast forward results back to ``working``; a
    backward node's results are cast back by the autograd engine) or ``"inject"`` (round the
    results to ``working`` and back). Records every unit that computes a floating result.
    """

    def __init__(self, working: torch.dtype, how: str | None = None, units: Iterable[tuple] = ()) -> None:
        super().__init__()
        self.working, self.how, self.units = working, how, frozenset(tuple(u) for u in units)
        self.forward_units = frozenset(u for u in self.units if u[0] == "forward")
        self.counter = UnitCounter()
        self.seen: dict[tuple, None] = {}  # ordered set of computing units
        self.made = WeakIdKeyDictionary()  # float64 results of promoted backward ops

    def _cast_back(self, value):
        if isinstance(value, torch.Tensor):
            promoted = value.dtype == _REFERENCE and (value in self.made or (
                value._base is not None and value._base in self.made))
            return value.to(self.working) if promoted else value
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast_back(v) for v in value)
        if isinstance(value, dict):
            return {k: self._cast_back(v) for k, v in value.items()}
        return value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        unit = self.counter.key(func)
        computing = _COMPUTES.get(func)
        if computing is None:
            computing = _COMPUTES[func] = not (func.is_view or str(func.overloadpacket) in _CONVERSIONS
                                               or _writes(func))
        computing = computing and not (unit[0] == "backward" and unit[1] == "torch::autograd::AccumulateGrad")
        if not computing:
            return func(*args, **kwargs)
        if unit not in self.seen and _floating(args, kwargs):
            self.seen[unit] = None
        if unit not in self.units or self.how is None:
            if self.how == "promote" and self.made:
                # a float64 gradient of a promoted node that the engine did not cast back (it reached
                # this op through an accumulation buffer): cast back before a consumer sees it
                args, kwargs = self._cast_back(args), self._cast_back(kwargs)
            return func(*args, **kwargs)
        if self.how == "promote":
            out = func(*_cast(args, self.working, _REFERENCE), **_cast(kwargs, self.working, _REFERENCE))
            if unit[0] != "backward":
                return _cast(out, _REFERENCE, self.working)
            for o in (out if isinstance(out, (list, tuple)) else (out,)):
                if isinstance(o, torch.Tensor) and o.dtype == _REFERENCE:
                    self.made[o] = True
            return out
        out = func(*args, **kwargs)  # inject: this unit's results rounded to the working dtype
        return _cast(_cast(out, _REFERENCE, self.working), self.working, _REFERENCE)


def _writes(func) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _floating(args, kwargs) -> bool:
    return any(isinstance(a, torch.Tensor) and a.is_floating_point() for a in (*args, *kwargs.values()))


def _cast(value, src: torch.dtype, dst: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dst) if value.dtype == src else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, src, dst) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, src, dst) for k, v in value.items()}
    return value


@dataclasses.dataclass
class _Outcome:
    finite: bool  # loss and every gradient finite (and, in float64, within the working range)
    quantity: torch.Tensor | None  # the failing quantity (loss, or the node's gradient), float64
    seen: list[tuple]


class _QuantityFailed(Exception):
    """Raised from a backward hook: the failing quantity already left the working range."""


def _replay(forward: Forward, dtype: torch.dtype, working: torch.dtype, target: list | None,
            how: str | None = None, units: Iterable[tuple] = (), stop_early: bool = False) -> _Outcome:
    """One replay; ``target`` names the failing quantity (a backward unit) or None (the loss)."""
    units = [tuple(u) for u in units]
    backward = [u for u in units if u[0] == "backward"]
    return _replays(forward, dtype, working, target, how, units, [(how, backward, stop_early)])[0]


def _replays(forward: Forward, dtype: torch.dtype, working: torch.dtype, target: list | None,
             how: str | None, units: Iterable[tuple], passes: list[tuple]) -> list[_Outcome]:
    """One forward pass (with ``units`` done ``how``), then one backward pass per entry of ``passes``.

    Each pass is ``(how, backward units, stop_early)``: replays that differ only in backward
    units share the forward (the graph is retained between passes). ``stop_early``: once the
    failing quantity leaves the working range the run counts as failed and the rest of that
    backward pass is skipped. For an injection that is the definition of a causal rounding;
    otherwise it is the failure the working-dtype step had (this quantity went non-finite and
    failed the step), so the replay has reproduced it.
    """
    mode = _Precision(working, how, units)
    limit = torch.finfo(working).max
    outcomes = []
    with mode:
        loss, leaves = forward(dtype)
        for k, (pass_how, pass_units, stop_early) in enumerate(passes):
            mode.how, mode.units = pass_how, mode.forward_units | frozenset(tuple(u) for u in pass_units)
            for t in leaves:
                t.grad = None
            captured: list[torch.Tensor] = []
            handles = []
            if target is not None and target[0] == "backward" and loss.grad_fn is not None:
                fired = []

                def hook(grad_inputs, grad_outputs, _fired=fired, _captured=captured, _stop=stop_early):
                    _fired.append(None)
                    if len(_fired) == target[2] + 1:
                        _captured.extend(g.detach().to(_REFERENCE) for g in grad_inputs if g is not None)
                        if _stop and not all(bool((g.abs() <= limit).all()) for g in _captured):
                            raise _QuantityFailed

                handles = [n.register_hook(hook) for n in _graph_nodes(loss.grad_fn) if n.name() == target[1]]
            stopped = False
            try:
                if loss.requires_grad:
                    (loss if loss.dim() == 0 else loss.sum()).backward(retain_graph=k < len(passes) - 1)
            except _QuantityFailed:
                stopped = True
            finally:
                for handle in handles:
                    handle.remove()
            with torch.no_grad():
                values = [loss.detach()] + [t.grad for t in leaves if t.grad is not None]
                finite = not stopped and all(bool((v.abs() <= limit).all()) for v in values)  # NaN: False
            quantity = None
            if target is None or target[0] != "backward":
                quantity = loss.detach().to(_REFERENCE).reshape(-1)
            elif captured:
                quantity = torch.cat([g.reshape(-1) for g in captured])
            outcomes.append(_Outcome(finite, quantity, list(mode.seen)))
    return outcomes


def _graph_nodes(root) -> list:
    seen, stack, nodes = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return nodes
