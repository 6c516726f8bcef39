"""How a loss publishes its intermediate tensors to whoever listens.

A loss calls :func:`publish` with a name from a small vocabulary, which the probes
read (they never special-case a loss; other names are kept and summarised generically):

* ``distances``: (B, C) query-to-candidate distances, already divided by T
* ``same_class_mask``: (B, C) bool: the candidate has the query's class (self excluded)
* ``same_class_counts``: (B,) int: each row's count of ``same_class_mask`` (optional: a loss
  that knows it cheaply spares the probes a pass over the mask)
* ``self_mask``: (B, C) bool: the candidate is the query itself
* ``exp_out``: (B, C) ``exp(-distances)``, the student's P
* ``p_same``: (B,) sum of P over same-class candidates
* ``p_diff``: (B,) sum of P over other-class candidates
* ``softmax``: (B, C) ``softmax(-distances)`` over candidates
* ``temperature``: Python float T

Without an active :func:`capture`, publishing costs one context-variable lookup and
does nothing else.

>>> import torch
>>> with capture() as published:
...     publish("p_same", torch.tensor([0.5, 0.0]))
>>> sorted(published)
['p_same']
>>> publish("ignored", torch.zeros(1))  # no listener: a no-op
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

_SINKS: contextvars.ContextVar[tuple[dict[str, Any], ...]] = contextvars.ContextVar(
    "stablenca_publish_sinks", default=()
)

def publish(name: str, value: Any) -> None:
    """Offer ``value`` under ``name`` to every active :func:`capture` (detached)."""
    sinks = _SINKS.get()
    if not sinks:
        return
    if hasattr(value, "detach"):
        value = value.detach()
    for sink in sinks:
        sink[name] = value


@contextlib.contextmanager
def capture(into: Any = None) -> Iterator[Any]:
    """Collect what is published inside the block into a dict (last value wins).

    ``into``: collect into this instead of a new dict: anything that takes ``sink[name] = value``,
    such as :class:`stablenca.runtime.probes.PublishedReductions`, which acts on each value as it
    arrives.
    """
    sink = {} if into is None else into
    token = _SINKS.set(_SINKS.get() + (sink,))
    try:
        yield sink
    finally:
        _SINKS.reset(token)
