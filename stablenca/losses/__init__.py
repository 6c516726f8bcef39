"""Loss formulations: one interface (:mod:`.base`), the built-ins (:mod:`.builtin`) and their
mpmath references (:mod:`.mp`), user losses (:mod:`.user`), and the registry (:mod:`.registry`).

Every formulation takes ``(distances, labels, candidate_labels, self_mask)`` and returns a
:class:`LossOutput`; see :mod:`.builtin` for the conventions.
"""

from __future__ import annotations

from .base import DEFAULT_DPS, Formulation, LossOutput, MpResult, Reference, Task
from .builtin import MODERNNCA_EPS, RATIO_EPS, difference, modernnca, nca_logspace, ratio, ratio_eps
from .registry import REGISTRY, evaluate, get, is_stable, is_user_spec, resolve

__all__ = [
    "DEFAULT_DPS", "MODERNNCA_EPS", "RATIO_EPS", "REGISTRY", "Formulation", "LossOutput", "MpResult",
    "Reference", "Task", "difference", "evaluate", "get", "is_stable", "is_user_spec", "modernnca",
    "nca_logspace", "ratio", "ratio_eps", "resolve",
]
