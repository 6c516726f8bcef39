"""Cheap always-on detection, pre-step snapshots, capsules and replay.

Modes:

* ``sentinel`` (default): each step the loss and gradient norms are checked (one
  host sync, done by the trainer anyway) and the step's pre-state — model
  parameters and buffers, optimizer state, the candidate-sampling generator, the
  global RNG, the batch — is copied into preallocated buffers. On the first
  non-finite step that pre-state is restored and the step is replayed once under
  the full tracer (:mod:`stablenca.trace`) to name the first bad op and its chain.
* ``full``: the tracer runs on every step (slower; precursors of every step are seen).
* ``off``: nothing but the trainer's own finiteness check.

A capsule (``capsule.pt``) holds the pre-state, the config and the chain found in
the run. :mod:`stablenca.artifacts` writes and reads it (``torch.load(weights_only=True)``,
so reading one cannot execute code). :func:`replay` reruns the step from a capsule under the tracer and
gives the same first bad op, bit for bit: the in-run replay goes through the same
:func:`traced_step`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
# Capsule files are read and written by stablenca.artifacts; these names stay importable from here.
from ..artifacts import CAPSULE_FORMAT, CAPSULE_VERSION, REQUIRED_KEYS, load_capsule, save_capsule  # noqa: F401
from ..errors import CapsuleError, ConfigError
from ..trace import Tracer
from ..trace.verify import apply_verification, verify_step
from ..training.trainer import Hook, StepContext, Trainer, TrainConfig

MODES = ("sentinel", "full", "off")


#: Up to this many elements in all, a snapshot's tensors are copied by one concatenation per
#: dtype into flat buffers: the student's 27 small tensors in 14 us instead of 28 us per step.
#: Above it the per-tensor copies are faster (ModernNCA's 110k elements: 39 us, concatenated 102 us).
FLAT_SNAPSHOT_ELEMENTS = 1 << 14


class _Copies:
    """Copies of ``live`` (views of flat buffers when they are few and small), kept current by
    :meth:`refresh`; made current at construction."""

    def __init__(self, live: list[torch.Tensor]) -> None:
        self.live = live
        self._concatenations: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        if sum(t.numel() for t in live) > FLAT_SNAPSHOT_ELEMENTS or not all(t.is_contiguous() for t in live):
            self.copies = [t.clone() for t in live]
            return
        self.copies = list(live)  # replaced below, slot by slot
        groups: dict[tuple, list[int]] = {}
        for index, tensor in enumerate(live):
            groups.setdefault((tensor.dtype, tensor.device), []).append(index)
        for (dtype, device), indices in groups.items():
            buffer = torch.empty(sum(live[i].numel() for i in indices), dtype=dtype, device=device)
            for i, part in zip(indices, buffer.split([live[i].numel() for i in indices])):
                self.copies[i] = part.view(live[i].shape)
            self._concatenations.append(([live[i].view(-1) for i in indices], buffer))
        self.refresh()

    def refresh(self) -> None:
        if self._concatenations:
            for flat_live, buffer in self._concatenations:
                torch.cat(flat_live, out=buffer)
        else:
            torch._foreach_copy_(self.copies, self.live)


class Snapshot:
    """Pre-step state of a model and its optimizer, copied into reusable buffers."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                 generator: torch.Generator | None = None) -> None:
        self.model, self.optimizer, self.generator = model, optimizer, generator
        self._model_keys = list(model.state_dict(keep_vars=True))
        self._model_live = [t.detach() for t in model.state_dict(keep_vars=True).values()]
        self._optimizer_live: list[torch.Tensor] = []
        self._copies = _Copies(self._model_live)  # model then optimizer tensors
        self._model_copy, self._optimizer_copy = self._copies.copies, []
        self.generator_state: torch.Tensor | None = None
        self.rng_state: torch.Tensor | None = None
        self.extra: dict[str, Any] = {}

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        if self.optimizer is None:
            return []
        return [value for state in self.optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor)]

    def restore(self) -> None:
        """Put the snapshot back into the live model, optimizer, generator and global RNG."""
        with torch.no_grad():
            torch._foreach_copy_(self._model_live, self._model_copy)
            if self._optimizer_live:
                torch._foreach_copy_(self._optimizer_live, self._optimizer_copy)
        if self.generator is not None and self.generator_state is not None:
            self.generator.set_state(self.generator_state)
        if self.rng_state is not None:
            torch.set_rng_state(self.rng_state)

    def take(self, **extra: Any) -> None:
        """Copy the current state (cheap: one fused copy into buffers allocated once)."""
        live = self._optimizer_tensors()
        if len(live) != len(self._optimizer_live) or any(a is not b for a, b in zip(live, self._optimizer_live)):
            # Adam creates its state lazily at the first step.
            self._optimizer_live = live
            self._copies = _Copies(self._model_live + live)
            self._model_copy = self._copies.copies[:len(self._model_live)]
            self._optimizer_copy = self._copies.copies[len(self._model_live):]
        else:
            self._copies.refresh()
        self.generator_state = self.generator.get_state() if self.generator is not None else None
        self.rng_state = torch.get_rng_state()
        self.extra = extra

    def model_state(self) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in zip(self._model_keys, self._model_copy)}

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state_dict with the snapshot's tensors in place of the live ones."""
        state_dict = self.optimizer.state_dict()
        copies = {id(live): copy for live, copy in zip(self._optimizer_live, self._optimizer_copy)}
        state_dict["state"] = {
            index: {key: (copies[id(value)].clone() if id(value) in copies else
                          (torch.zeros_like(value) if isinstance(value, torch.Tensor) else value))
                    for key, value in state.items()}
            for index, state in state_dict["state"].items()
        }
        if not self._optimizer_live:
            state_dict["state"] = {}
        return state_dict


def traced_step(trainer: Trainer, capsule: dict[str, Any]) -> tuple[Any, StepContext]:
    """Restore a capsule's pre-state into ``trainer`` and rerun its step under the tracer.

    The optimizer update is traced too when the gradients are finite, so a step that
    turns the parameters non-finite is explained as well.
    """
    trainer.model.load_state_dict(capsule["model_state"])
    # A copy: load_state_dict keeps the capsule's own tensors as the optimizer's state, and the step
    # below would update them in place (a capsule saved after its replay would hold the updated state).
    trainer.optimizer.load_state_dict(copy.deepcopy(capsule["optimizer_state"]))
    if capsule.get("generator_state") is not None:
        trainer.generator.set_state(capsule["generator_state"])
    torch.set_rng_state(capsule["rng_state"])
    ctx = StepContext(capsule["epoch"], capsule["step"], capsule["step_in_epoch"], capsule["batch_indices"])
    with Tracer(model=trainer.model) as tracer:
        trainer.forward_backward(ctx)
        if ctx.finite:
            trainer.optimizer.step()
    return tracer.finding, ctx


def verify_capsule(trainer: Trainer, capsule: dict[str, Any], finding) -> None:
    """Counterfactual replays of the capsule's step (:mod:`stablenca.trace.verify`) for ``finding``.

    The float64 replays use a float64 copy of the trainer fed the working-dtype training
    inputs (cast up exactly), so both precisions start from the same numbers.
    """
    trainers = {trainer.dtype: trainer}

    def forward(dtype):
        if dtype not in trainers:
            other = Trainer(dataclasses.replace(trainer.config, dtype=str(dtype).replace("torch.", "")),
                            data=trainer.data)
            other.x_train = trainer.x_train.to(dtype)
            trainers[dtype] = other
        t = trainers[dtype]
        t.model.load_state_dict(capsule["model_state"])
        if capsule.get("generator_state") is not None:
            t.generator.set_state(capsule["generator_state"])
        torch.set_rng_state(capsule["rng_state"])
        t.model.train()
        t.optimizer.zero_grad(set_to_none=True)
        output, _ = t.compute_loss(capsule["batch_indices"])
        return output.loss, [p for p in t.model.parameters() if p.requires_grad]

    apply_verification(finding, verify_step(forward, finding, working=trainer.dtype))


class Sentinel(Hook):
    """Training hook: detect the first non-finite step, trace it, write its capsule."""

    def __init__(self, *, mode: str = "sentinel", run_dir: str | Path | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
        self.mode = mode
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.snapshot: Snapshot | None = None
        self.finding = None
        self.capsule: dict[str, Any] | None = None
        self._tracer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.mode != "off":
            self.snapshot = Snapshot(trainer.model, trainer.optimizer, trainer.generator)

    def before_step(self, trainer: Trainer, ctx: StepContext) -> None:
        if self.snapshot is not None and self.capsule is None:
            self.snapshot.take()

    def step_context(self, trainer: Trainer, ctx: StepContext):
        if self.mode != "full" or self.capsule is not None:
            return contextlib.nullcontext()
        self._tracer = Tracer(model=trainer.model)
        return self._tracer

    def after_step(self, trainer: Trainer, ctx: StepContext) -> None:
        if ctx.finite or self.capsule is not None or self.snapshot is None:
            return
        self.capsule = build_capsule(trainer, ctx, self.snapshot)
        # Replay from the capsule exactly as `stablenca replay` does, so both give the same chain.
        finding, _ = traced_step(trainer, self.capsule)
        if finding is not None and finding.unit is not None:
            verify_capsule(trainer, self.capsule, finding)
        if self.mode == "full" and self._tracer is not None and self._tracer.finding is not None:
            live = self._tracer.finding
            if finding is None or live.to_dict() != finding.to_dict():
                finding = live if finding is None else finding
        self.finding = finding
        self.capsule["finding"] = finding.to_dict() if finding is not None else None
        if self.run_dir is not None:
            save_capsule(self.run_dir / artifacts.CAPSULE, self.capsule)
            artifacts.write_run_json(self.run_dir, artifacts.FINDING, self.capsule["finding"])


def build_capsule(trainer: Trainer, ctx: StepContext, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "format": CAPSULE_FORMAT,
        "version": CAPSULE_VERSION,
        "torch_version": str(torch.__version__),
        # Float reductions split by thread; a replay with the recorded count repeats the step bit for bit.
        "threads": torch.get_num_threads(),
        "config": trainer.config.to_dict(),
        "epoch": ctx.epoch,
        "step": ctx.step,
        "step_in_epoch": ctx.step_in_epoch,
        "batch_indices": ctx.batch_indices.clone(),
        "model_state": snapshot.model_state(),
        "optimizer_state": snapshot.optimizer_state(),
        "generator_state": snapshot.generator_state,
        "rng_state": snapshot.rng_state,
        "finding": None,
    }


def replay(path: str | Path, data=None):
    """Rerun a capsule's step under the tracer; returns ``(finding, capsule)``."""
    capsule = load_capsule(path)
    if capsule.get("source") == "watch":  # written around the user's own loop: only the user can rerun it
        raise CapsuleError(f"capsule {path} was written by stablenca.watch around your own training loop, "
                           "which `stablenca replay` cannot rerun",
                           fix="torch.load it (weights_only=True), load model_state and optimizer_state into your "
                               "model and optimizer, and run that step again under stablenca.watch(mode='full')")
    try:
        config = TrainConfig(**capsule["config"])
    except TypeError:
        raise CapsuleError(f"capsule {path} holds a config that is not a TrainConfig",
                           fix="re-run stablenca diagnose with this version of stablenca") from None
    trainer = Trainer(config, data=data)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(capsule.get("threads", threads)))  # capsules before the field: the current count
    try:
        finding, _ = traced_step(trainer, capsule)
        if finding is not None and finding.unit is not None:
            verify_capsule(trainer, capsule, finding)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise CapsuleError(f"capsule {path} does not fit its own config ({type(exc).__name__})",
                           fix="re-run stablenca diagnose to write a fresh capsule") from None
    finally:
        torch.set_num_threads(threads)
    return finding, capsule
