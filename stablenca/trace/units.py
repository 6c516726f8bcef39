"""Names for "one op" that stay the same across replays in different precisions.

The tracer (working dtype) and the counterfactual replays (:mod:`stablenca.trace.verify`, in
float64 or with one op promoted) must agree on which op is "the suspect". An op is named by
its *unit*:

* forward: ``("forward", "aten.exp", k)``, the k-th call of that overload packet;
* backward: ``("backward", "DivBackward0", k)``, the k-th autograd node of that name to run.
  A backward unit is the whole node: ``DivBackward0`` computes ``-grad * (a / b) / b`` in
  several ATen ops, and only the node's result is a gradient.

Counting per packet (not one global index) keeps a unit's name stable when the dtype adds or
removes an unrelated op (a conversion that is a no-op in one dtype).
"""

from __future__ import annotations

from collections import Counter

import torch

__all__ = ["UnitCounter", "unit_label"]

_PACKETS: dict = {}  # OpOverload -> "aten.exp"
_current_node = getattr(torch._C, "_current_autograd_node", lambda: None)


class UnitCounter:
    """Assigns units to the ops of one run, in dispatch order (call :meth:`key` once per op)."""

    def __init__(self) -> None:
        self._forward: Counter[str] = Counter()
        self._by_name: Counter[str] = Counter()
        self._nodes: dict[int, tuple] = {}
        self._alive: list = []  # keeps node wrappers alive, so an id() is never reused in a run

    def key(self, func) -> tuple:
        node = _current_node()
        if node is None:
            packet = _PACKETS.get(func)
            if packet is None:
                packet = _PACKETS[func] = str(func.overloadpacket)
            k = self._forward[packet]
            self._forward[packet] = k + 1
            return ("forward", packet, k)
        unit = self._nodes.get(id(node))
        if unit is None:
            name = node.name()
            unit = self._nodes[id(node)] = ("backward", name, self._by_name[name])
            self._by_name[name] += 1
            self._alive.append(node)
        return unit


def unit_label(unit) -> str:
    """``exp (forward)``, ``DivBackward0 (backward)``; the occurrence only when it is not the first."""
    phase, name, k = unit
    short = name.split(".")[-1] if phase == "forward" else name
    nth = f" #{k + 1}" if k else ""
    return f"{short}{nth} ({phase})"
