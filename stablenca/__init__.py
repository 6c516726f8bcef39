"""stablenca: numerical-stability diagnostics for PyTorch losses.

Flagship case: the NCA loss of a ModernNCA homework on Abalone, whose ratio form
goes NaN because ``exp`` silently underflows to 0.0 long before any NaN appears.

Public names are imported lazily (functions never share a name with a submodule,
which would shadow them once the submodule is imported), so ``import stablenca`` (and the pytest plugin)
does not pay for torch until something is used.
"""

from __future__ import annotations

import importlib

from .errors import StableNCAError, StableNCAWarning

# Bound eagerly: the function shares its name with its module (publish.py imports no torch).
from .publish import capture, publish  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "LOSSES": ("stablenca.losses", "REGISTRY"),
    "LossOutput": ("stablenca.losses", "LossOutput"),
    "Formulation": ("stablenca.losses", "Formulation"),
    "find_nonfinite": ("stablenca.trace", "find_nonfinite"),
    "trace_call": ("stablenca.trace", "trace_call"),
    "Finding": ("stablenca.trace", "Finding"),
    "Tracer": ("stablenca.trace", "Tracer"),
    "watch": ("stablenca.runtime.watcher", "watch"),
    "Watch": ("stablenca.runtime.watcher", "Watch"),
    "run_check": ("stablenca.check", "run_check"),
    "TrainConfig": ("stablenca.training.trainer", "TrainConfig"),
    "retain_freed_memory": ("stablenca.runtime.allocator", "retain_freed_memory"),
}

__all__ = [
    "LOSSES",
    "Finding",
    "Formulation",
    "LossOutput",
    "StableNCAError",
    "StableNCAWarning",
    "TrainConfig",
    "Tracer",
    "Watch",
    "__version__",
    "capture",
    "find_nonfinite",
    "publish",
    "retain_freed_memory",
    "run_check",
    "trace_call",
    "watch",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stablenca' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
