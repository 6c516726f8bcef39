"""Training: the configuration, the trainer and the ``Hook`` protocol through which the
runtime (probes, recorder, sentinel) watches a step without training knowing about it."""

from __future__ import annotations

from .trainer import FitResult, Hook, StepContext, TrainConfig, Trainer, load_data, train

__all__ = ["FitResult", "Hook", "StepContext", "TrainConfig", "Trainer", "load_data", "train"]
