"""The naive NaN/Inf checker the tracer is compared with (benchmarks only).

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` that runs every ATen op
and then checks ``torch.isfinite(out).all()`` on each floating-point output, one host
sync per output, remembering the first op that produced a non-finite value. This is
what a per-op NaN checker does; it names the op where NaN appears (``div``), not the
silent precursor, and has no provenance, precursor or source bookkeeping.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class NaiveFiniteChecker(TorchDispatchMode):
    """Per-op ``isfinite(out).all()`` on every floating output; ``first_bad`` is the first offender."""

    def __init__(self) -> None:
        super().__init__()
        self.first_bad: str | None = None
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.numel():
                if not bool(torch.isfinite(o).all()) and self.first_bad is None:
                    self.first_bad = str(func)
        return out
