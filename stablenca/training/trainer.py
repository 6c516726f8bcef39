"""Training and evaluation. Knows nothing about diagnosis.

:class:`Trainer` runs one configuration end to end (TALENT's schedule for
ModernNCA, the homework's for SeedNCA) and offers hook points — before a step,
around forward+backward, after backward, after the optimizer step, at the end of
an epoch and of the fit — where probes, the sentinel and the recorder attach.

A step whose loss or gradients are not finite is never applied: the run stops,
is marked ``diverged`` and reports the epoch and step. Ctrl-C stops the run
between steps and marks it ``interrupted``; nothing already done is lost.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import floats, losses
from ..errors import ConfigError, StableNCAError, UserLossError
from ..data import load_dataset, prepare
from ..models import ModernNCA, SeedNCA
from ..models.fused import fused_objective
from ..models.neighbours import (Rows, in_batch_pairs, knn_readout, onehot_targets, sampled_pool_pairs,
                                sampled_pool_rows, soft_neighbour_readout)
from ..publish import capture
from ..records import deferred_interrupts

MODELS = ("modernnca", "seed")
TASKS = ("multiclass", "regression")
KERNELS = ("eager", "fused")

#: Per-model defaults: TALENT's for ModernNCA, the homework's for the student's model.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "modernnca": dict(loss="modernnca", epochs=200, batch_size=1024, optimizer="adamw", lr=0.01,
                      weight_decay=2e-4, patience=20, candidates="sampled", readout="soft"),
    "seed": dict(loss="ratio", epochs=30, batch_size=32, optimizer="adam", lr=0.01,
                 weight_decay=0.0, patience=None, candidates="in_batch", readout="knn"),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` means "the model's default".

    >>> TrainConfig(model="seed").resolved().batch_size
    32
    >>> TrainConfig(model="seed", batch_size=1).resolved()
    Traceback (most recent call last):
    ...
    stablenca.errors.ConfigError: batch_size=1 is too small: distances need at least two rows per batch; fix: use --batch-size 2 or more
    """

    model: str = "modernnca"
    loss: str | None = None
    task: str | None = None  # None: the task the data declares (multiclass for the embedded Abalone)
    epochs: int | None = None
    seed: int = 0
    dtype: str = "float32"
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    patience: int | None | str = "default"
    candidates: str | None = None  # "sampled" (TALENT) or "in_batch" (the student)
    readout: str | None = None  # "soft" (TALENT) or "knn" (the student, k=3)
    sample_rate: float = 0.5
    chunk_size: int = 4096
    #: "fused": TALENT's objective (loss ``modernnca``) and ``nca_logspace`` from embeddings with
    #: their closed-form backward (:mod:`stablenca.models.fused`); "eager": distances, then the
    #: registered loss on autograd's tape. Other losses always run eager. Same forward bits either way.
    kernel: str = "fused"
    device: str = "cpu"
    data: str | None = None  # None = embedded Abalone
    target: str | None = None
    split_seed: int = 0
    numerical: str = "standard"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def resolved(self) -> TrainConfig:
        """Fill the model's defaults and validate every field."""
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}", fix=f"use one of {', '.join(MODELS)}")
        config = self
        if config.task is None:
            from ..data import data_task

            config = dataclasses.replace(config, task=data_task(config.data, target=config.target))
        if config.task not in TASKS:
            raise ConfigError(f"unknown task {config.task!r}", fix=f"use one of {', '.join(TASKS)}")
        if self.dtype not in floats.TRAIN_DTYPES:
            raise ConfigError(f"unsupported dtype {self.dtype!r}", fix="use float32 or float64")
        defaults = MODEL_DEFAULTS[self.model]
        # patience=None means "no early stopping"; "default" means the model's default.
        changes = {k: v for k, v in defaults.items()
                   if (k != "patience" and getattr(self, k) is None) or (k == "patience" and self.patience == "default")}
        if self.loss is None and config.task == "regression":
            changes["loss"] = "modernnca"
        config = dataclasses.replace(config, **changes)
        config._check_types()
        if not 0 <= config.seed <= _MAX_SEED:
            raise ConfigError(f"seed={config.seed} is out of range", fix=f"use --seed between 0 and {_MAX_SEED}")
        if config.epochs < 1:
            raise ConfigError(f"epochs={config.epochs} must be >= 1", fix="use --epochs 1 or more")
        if config.batch_size < 2:
            raise ConfigError(f"batch_size={config.batch_size} is too small: distances need at least two "
                              "rows per batch", fix="use --batch-size 2 or more")
        if not (config.lr > 0 and math.isfinite(config.lr)):
            raise ConfigError(f"lr={config.lr} must be a positive number", fix="use --lr such as 0.01")
        if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
            raise ConfigError(f"weight_decay={config.weight_decay} must be >= 0", fix="use 0 or a small value")
        if config.patience is not None and config.patience < 0:
            raise ConfigError(f"patience={config.patience} must be >= 0", fix="use 20 (TALENT) or more")
        if config.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"unknown optimizer {config.optimizer!r}", fix="use adam or adamw")
        if config.candidates not in ("sampled", "in_batch"):
            raise ConfigError(f"unknown candidate scheme {config.candidates!r}", fix="use sampled or in_batch")
        if config.readout not in ("soft", "knn"):
            raise ConfigError(f"unknown readout {config.readout!r}", fix="use soft or knn")
        if not 0 < config.sample_rate <= 1:
            raise ConfigError(f"sample_rate={config.sample_rate} must be in (0, 1]", fix="use 0.5 (TALENT)")
        if config.kernel not in KERNELS:
            raise ConfigError(f"unknown kernel {config.kernel!r}", fix=f"use one of {', '.join(KERNELS)}")
        if config.chunk_size < 1:
            raise ConfigError(f"chunk_size={config.chunk_size} must be >= 1", fix="use 4096 or so")
        losses.resolve(config.loss, config.task)  # unknown loss, or a loss that does not fit the task
        _check_device(config.device)
        return config

    def _check_types(self) -> None:
        """Reject values of the wrong type (the API takes any object) with the option to fix."""
        def option(name: str) -> str:
            return "--" + name.replace("_", "-")

        integers = ["epochs", "seed", "batch_size", "chunk_size", "split_seed"]
        if self.patience is not None:
            integers.append("patience")
        for name in integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"{name}={value!r} is not an integer", fix=f"use {option(name)} with a whole number")
        for name in ("lr", "weight_decay", "sample_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"{name}={value!r} is not a number", fix=f"use {option(name)} with a number")
        for name in ("loss", "device", "kernel"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not a string", fix=f"use {option(name)} NAME")
        if not isinstance(self.model_options, dict):
            raise ConfigError(f"model_options={self.model_options!r} is not a dict",
                              fix="pass a dict of keyword arguments")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: torch seeds are unsigned 64-bit integers.
_MAX_SEED = 2 ** 64 - 1


def _check_device(device: str) -> None:
    """A device this machine has: an unknown or absent one is a ConfigError, not a torch traceback."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device",
                          fix="use --device cpu (or cuda, cuda:1, mps)") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r} is not available: this torch sees no CUDA GPU",
                              fix="use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device {device!r} is not available: there are {count} CUDA device(s)",
                              fix=f"use --device cuda:0 to cuda:{count - 1}")
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} is not available on this machine", fix="use --device cpu")
        return
    raise ConfigError(f"device type {parsed.type!r} is not supported", fix="use --device cpu, cuda or mps")


@dataclasses.dataclass
class StepContext:
    """One training step, as the hooks see it."""

    epoch: int
    step: int  # global step, 0-based
    step_in_epoch: int
    batch_indices: torch.Tensor
    loss: torch.Tensor | None = None
    loss_output: losses.LossOutput | None = None
    published: dict[str, Any] = dataclasses.field(default_factory=dict)
    grad_norms: torch.Tensor | None = None  # per parameter, in named_parameters order
    param_norms: torch.Tensor | None = None  # the same after the optimizer step (applied steps only)
    finite: bool = True
    applied: bool = False


@dataclasses.dataclass
class FitResult:
    """What ``stablenca train --json`` prints."""

    model: str
    loss: str
    task: str
    seed: int
    dtype: str
    status: str  # "completed", "early_stopped", "diverged" or "interrupted"
    epochs_run: int
    steps_run: int
    diverged: bool
    diverged_at: dict[str, int] | None
    best_epoch: int | None
    val: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    excluded_rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Hook:
    """Base class for training hooks; override what you need."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def before_step(self, trainer: Trainer, ctx: StepContext) -> None: ...
    def step_context(self, trainer: Trainer, ctx: StepContext) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()
    def after_backward(self, trainer: Trainer, ctx: StepContext) -> None: ...
    def after_step(self, trainer: Trainer, ctx: StepContext) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, val_metrics: dict[str, float]) -> None: ...
    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None: ...


def build_model(config: TrainConfig, d_num: int, d_cat: int) -> torch.nn.Module:
    def build() -> torch.nn.Module:
        if config.model == "modernnca":
            return ModernNCA(d_num=d_num, d_cat=d_cat, sample_rate=config.sample_rate, **config.model_options)
        return SeedNCA(d_in=d_num + d_cat, **config.model_options)

    if not config.model_options:
        return build()
    model_class = ModernNCA if config.model == "modernnca" else SeedNCA
    try:
        return build()
    except (TypeError, ValueError, RuntimeError) as exc:  # an unknown option or an impossible value
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(f"model_options={config.model_options!r} do not fit {model_class.__name__} ({detail})",
                          fix=f"pass only keyword arguments that {model_class.__name__}() accepts") from None


def load_data(config: TrainConfig):
    """The prepared data a config names (the embedded Abalone by default)."""
    raw = load_dataset(config.data, task=config.task, target=config.target, split_seed=config.split_seed)
    if raw.task != config.task:
        raise ConfigError(f"the data's task is {raw.task!r} but --task {config.task} was asked for",
                          fix=f"use --task {raw.task}")
    return prepare(raw, numerical=config.numerical)


def check_data_fits(config: TrainConfig, data) -> None:
    """Reject a resolved config that cannot train on ``data``, before any step is taken."""
    n_train = len(data.y["train"])
    if n_train < 2:
        raise ConfigError(f"the training split has {n_train} row(s)", fix="provide at least two training rows")
    batch_size = config.batch_size
    if config.candidates == "in_batch" and batch_size < n_train and n_train % batch_size == 1:
        # A one-row batch has no in-batch neighbour at all: an empty candidate set (and
        # BatchNorm cannot train on one row). Refuse before training, not at the last batch.
        better = next(b for b in range(batch_size + 1, n_train + 1) if n_train % b != 1)
        raise ConfigError(
            f"with {n_train} training rows and batch_size={batch_size} the last batch of every epoch holds "
            "1 row, whose in-batch candidate set is empty", fix=f"use --batch-size {better}")


class Trainer:
    """Train one configuration; see the module docstring.

    ``data`` is a :class:`stablenca.data.PreparedData`; when omitted the config's
    data source is loaded.
    """

    def __init__(self, config: TrainConfig, data=None, hooks: Iterable[Hook] = (), progress: bool = False):
        self.config = config.resolved()
        self.data = data if data is not None else load_data(self.config)
        self.hooks = list(hooks)
        self.progress = progress
        self.dtype = floats.as_dtype(self.config.dtype)
        self.device = torch.device(self.config.device)
        self.task = self.config.task
        self.n_classes = self.data.n_classes
        self.formulation = losses.resolve(self.config.loss, self.task)
        if self.formulation.user:
            self.formulation = _guard_user_loss(self.formulation)
        #: The fused kernel computes the built-in ModernNCA and nca_logspace objectives; anything else
        #: (the student's losses, whose ops the tracer names, and user losses) runs eager.
        self.fused_objective = fused_objective(self.formulation.fn, self.config.kernel)
        self.fused = self.fused_objective is not None
        torch.manual_seed(self.config.seed)
        self.model = build_model(self.config, self.data.n_num, self.data.n_onehot).to(self.device, self.dtype)
        self.parameter_names = [name for name, _ in self.model.named_parameters()]
        #: Batches and training candidates are drawn from this generator (replayable). It starts
        #: where the initialisation left the global stream, so, as in TALENT's single global
        #: stream, the shuffles do not reuse the random numbers that drew the initial weights.
        #: (Seeding it with ``seed`` again made epoch 0's batch order a function of the init.)
        self.generator = torch.Generator()
        self.generator.set_state(torch.get_rng_state())
        self.x_train, self.y_train = (t.to(self.device) for t in self.data.tensors("train", self.dtype))
        check_data_fits(self.config, self.data)
        self.epoch = 0
        self.global_step = 0
        self.excluded_rows = 0
        self.diverged_at: dict[str, int] | None = None

    # -- building blocks -------------------------------------------------------------
    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """Made on first use: the first optimizer of a process imports ``torch._dynamo`` (1-3 s), which a
        Trainer that only rebuilds a step's batch (``stablenca report``'s scale sweep) never needs."""
        optimizer = torch.optim.AdamW if self.config.optimizer == "adamw" else torch.optim.Adam
        return optimizer(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def epoch_batches(self) -> list[torch.Tensor]:
        """TALENT's ``randperm(N).split(batch_size)``: no drop_last."""
        n_train = len(self.x_train)
        # A batch size above N gives the same single batch; min() keeps a huge value from overflowing.
        return list(torch.randperm(n_train, generator=self.generator).split(min(self.config.batch_size, n_train)))

    def pairs(self, batch_indices: torch.Tensor):
        batch_indices = batch_indices.to(self.device)
        if self.config.candidates == "in_batch":
            return in_batch_pairs(self.model, self.x_train[batch_indices], self.y_train[batch_indices])
        return sampled_pool_pairs(self.model, self.x_train, self.y_train, batch_indices,
                                  sample_rate=self.config.sample_rate, generator=self.generator)

    def rows(self, batch_indices: torch.Tensor) -> Rows:
        """The batch and its candidates, embedded (the batch first: self pairs on the leading diagonal)."""
        batch_indices = batch_indices.to(self.device)
        if self.config.candidates == "in_batch":
            y = self.y_train[batch_indices]
            return Rows(self.model(self.x_train[batch_indices]), y, y)
        return sampled_pool_rows(self.model, self.x_train, self.y_train, batch_indices,
                                 sample_rate=self.config.sample_rate, generator=self.generator)

    def compute_loss(self, batch_indices: torch.Tensor) -> tuple[losses.LossOutput, dict[str, Any]]:
        """Forward pass of one batch; returns the loss output and what the loss published."""
        # Always collected, even with no hook to read it: a replayed step must run the same ops
        # as the recorded one (the tracer numbers them, and publishing detaches).
        temperature = getattr(self.model, "temperature", 1.0)
        with capture() as published:
            if self.fused:
                rows = self.rows(batch_indices)
                published["temperature"] = temperature
                output = self.fused_objective(rows.embeddings[:len(rows.labels)], rows.embeddings, rows.labels,
                                              rows.candidate_labels, task=self.task, n_classes=self.n_classes,
                                              temperature=temperature)
                return output, published
            pairs = self.pairs(batch_indices)
            published["temperature"] = temperature
            output = losses.evaluate(self.formulation, pairs.distances, pairs.labels, pairs.candidate_labels,
                                     pairs.self_mask, task=self.task, n_classes=self.n_classes)
        return output, published

    def forward_backward(self, ctx: StepContext) -> None:
        """Zero grads, forward, backward; fills ``ctx`` (no optimizer step)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        ctx.loss_output, ctx.published = self.compute_loss(ctx.batch_indices)
        ctx.loss = ctx.loss_output.loss
        if ctx.loss.requires_grad:
            ctx.loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros((), dtype=p.dtype, device=p.device)
                 for p in self.model.parameters()]
        # float64 norms: a finite gradient with entries near 1e35 must not read as non-finite
        ctx.grad_norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)) if grads else torch.zeros(0)
        # One host sync: the loss and the gradient norms are checked together.
        ctx.finite = bool(torch.isfinite(torch.cat([ctx.loss.detach().reshape(1).to(ctx.grad_norms.dtype),
                                                    ctx.grad_norms])).all())

    def run_step(self, ctx: StepContext) -> StepContext:
        for hook in self.hooks:
            hook.before_step(self, ctx)
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook.step_context(self, ctx))
            self.forward_backward(ctx)
        self.excluded_rows += ctx.loss_output.n_excluded
        for hook in self.hooks:
            hook.after_backward(self, ctx)
        if ctx.finite:
            self.optimizer.step()
            ctx.applied = True
            parameters = [p.detach() for p in self.model.parameters()]
            ctx.param_norms = torch.stack(torch._foreach_norm(parameters, 2, dtype=torch.float64))
            ctx.finite = bool(torch.isfinite(ctx.param_norms).all())
        for hook in self.hooks:
            hook.after_step(self, ctx)
        return ctx

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
        self.model.eval()
        if len(x) <= batch_size:  # one chunk: no concatenated copy
            return self.model(x)
        return torch.cat([self.model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def predict(self, split: str) -> np.ndarray:
        """Class probabilities (n, K), or regression values in original units (n,)."""
        x, _ = self.data.tensors(split, self.dtype)
        x = x.to(self.device)
        # Candidate embeddings once per evaluation, not once per query batch (TALENT
        # recomputes them for every batch).
        train_embeddings = self.embed(self.x_train)
        query_embeddings = self.embed(x)
        if not (_all_finite(train_embeddings) and _all_finite(query_embeddings)):
            # Finite weights can still overflow the embeddings (a huge learning rate): no prediction,
            # which evaluate() reports as NaN metrics instead of a scikit-learn error.
            shape = (len(x),) if self.task == "regression" else (len(x), self.n_classes)
            return np.full(shape, np.nan)
        if self.config.readout == "knn":
            prediction = knn_readout(train_embeddings.cpu().double().numpy(), self.y_train.cpu().numpy(),
                                     query_embeddings.cpu().double().numpy(), task=self.task,
                                     n_classes=self.n_classes)
        else:
            targets = onehot_targets(self.y_train, self.task, self.n_classes, self.dtype)
            chunks = [soft_neighbour_readout(query_embeddings[i:i + 1024], train_embeddings, targets,
                                             temperature=getattr(self.model, "temperature", 1.0),
                                             chunk_size=self.config.chunk_size)
                      for i in range(0, len(query_embeddings), 1024)]
            prediction = (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).cpu().double().numpy()
            if self.task == "regression":
                prediction = prediction[:, 0]
        if self.task == "regression":
            prediction = prediction * self.data.y_std + self.data.y_mean
        return prediction

    def evaluate(self, split: str) -> dict[str, float]:
        """accuracy and macro_f1 (classification); rmse and mae in original units (regression)."""
        prediction = self.predict(split)
        truth = self.data.y_raw[split]
        if not np.all(np.isfinite(prediction)):
            nan = float("nan")
            return {"accuracy": nan, "macro_f1": nan} if self.task != "regression" else {"rmse": nan, "mae": nan}
        if self.task == "regression":
            error = prediction - truth
            return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}
        labels = prediction.argmax(axis=1)
        return {"accuracy": float(np.mean(labels == truth)), "macro_f1": macro_f1(truth, labels, self.n_classes)}

    def _improved(self, metrics: dict[str, float], best: float | None) -> tuple[bool, float]:
        # TALENT selects on accuracy (classification) or MAE (regression); ties count.
        value = metrics["accuracy"] if self.task != "regression" else -metrics["mae"]
        return (best is None or value >= best), value

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> FitResult:
        config = self.config
        started = time.perf_counter()
        status = "completed"
        best_value: float | None = None
        best_epoch: int | None = None
        best_state: dict[str, torch.Tensor] | None = None
        epochs_without_improvement = 0
        last_val: dict[str, float] = {}
        for hook in self.hooks:
            hook.on_fit_start(self)
        progress = _progress_bar(config.epochs, enabled=self.progress, desc=f"{config.model}/{config.loss}")
        try:
            for epoch in range(config.epochs):
                self.epoch = epoch
                for step_in_epoch, batch_indices in enumerate(self.epoch_batches()):
                    # Ctrl-C lands between steps: a step, its hooks and its record are done whole.
                    with deferred_interrupts():
                        ctx = self.run_step(StepContext(epoch, self.global_step, step_in_epoch, batch_indices))
                        self.global_step += 1
                        if not ctx.finite:
                            self.diverged_at = {"epoch": epoch, "step": ctx.step, "step_in_epoch": step_in_epoch}
                            status = "diverged"
                    if status == "diverged":
                        break
                if status == "diverged":
                    break
                last_val = self.evaluate("val")
                for hook in self.hooks:
                    hook.on_epoch_end(self, epoch, last_val)
                improved, value = self._improved(last_val, best_value)
                if improved:
                    best_value, best_epoch, epochs_without_improvement = value, epoch, 0
                    if config.patience is not None:
                        best_state = copy.deepcopy(self.model.state_dict())
                else:
                    epochs_without_improvement += 1
                progress.update(1)
                progress.set_postfix_str(_postfix(last_val))
                # TALENT stops once more than `patience` epochs passed without improvement.
                if config.patience is not None and epochs_without_improvement > config.patience:
                    status = "early_stopped"
                    break
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            progress.close()
        if best_state is not None and status != "interrupted":
            self.model.load_state_dict(best_state)
        try:
            result = self._result(status, best_epoch, started)
        except KeyboardInterrupt:  # Ctrl-C during the final evaluation: keep the run, without metrics
            result = self._result("interrupted", best_epoch, started, evaluate=False)
        for hook in self.hooks:
            hook.on_fit_end(self, result)
        return result

    def _result(self, status: str, best_epoch: int | None, started: float, evaluate: bool = True) -> FitResult:
        config = self.config
        train_seconds = time.perf_counter() - started
        finite_model = evaluate and all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        val = self.evaluate("val") if finite_model else {}
        test = self.evaluate("test") if finite_model else {}
        epochs_run = self.epoch + 1 if self.global_step else 0
        return FitResult(
            model=config.model, loss=config.loss, task=config.task, seed=config.seed, dtype=config.dtype,
            status=status, epochs_run=epochs_run, steps_run=self.global_step, diverged=status == "diverged",
            diverged_at=self.diverged_at, best_epoch=best_epoch, val=val, test=test,
            train_seconds=round(train_seconds, 3), excluded_rows=self.excluded_rows,
        )


def macro_f1(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Macro-averaged F1 over the classes that are true or predicted in this split.

    TALENT's ``metric`` calls scikit-learn's ``f1_score(average="macro")``, whose default labels are
    those present in ``truth`` or ``predicted``: a class absent from both (a rare class that a small
    validation split lacks) is left out of the mean, not counted as 0. This is that value in the same
    float64 steps (2 tp / (true + predicted) per class, then the mean), from three bincounts, without
    its input validation (about 1 ms per validation). ``n_classes`` only sizes the bincounts.

    NOTE[DIFF]: for ``binclass`` TALENT reports ``f1_score(average="binary")``, the F1 of class 1;
    stablenca reports this macro F1 (over both classes) for every classification task. Accuracy, which
    early stopping reads, is the same.

    >>> macro_f1(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 4)  # class 3 is absent: left out
    0.7777777777777777
    """
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    true_positives = np.bincount(truth[truth == predicted], minlength=n_classes).astype(np.float64)
    denominator = (np.bincount(truth, minlength=n_classes) + np.bincount(predicted, minlength=n_classes))
    present = denominator > 0
    return float(np.mean(2.0 * true_positives[present] / denominator[present].astype(np.float64)))


def _all_finite(x: torch.Tensor) -> bool:
    """No NaN or infinity in ``x``: its minimum and maximum in one pass (NaN propagates to both).

    >>> _all_finite(torch.tensor([1.0, -2.0])), _all_finite(torch.tensor([1.0, float("inf")]))
    (True, False)
    """
    return x.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())


def _guard_user_loss(formulation: losses.Formulation) -> losses.Formulation:
    """A user loss whose exceptions become one-line :class:`UserLossError` s (Ctrl-C passes through)."""
    function = formulation.fn

    def guarded(distances, labels, candidate_labels, self_mask):
        try:
            return function(distances, labels, candidate_labels, self_mask)
        except StableNCAError:
            raise
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            problem = f"loss {formulation.name!r} raised {type(exc).__name__}" + (f": {detail}" if detail else "")
            raise UserLossError(problem,
                                fix="fix the function; try it on a small batch of "
                                    "(distances, labels, candidate_labels, self_mask) first") from None

    return dataclasses.replace(formulation, fn=guarded)  # the reference and the other fields stay


def _postfix(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _progress_bar(total: int, *, enabled: bool, desc: str):
    return tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)


def train(config: TrainConfig, data=None, hooks: Iterable[Hook] = (), progress: bool = False) -> FitResult:
    """Train one configuration and return its result (the API behind ``stablenca train``)."""
    return Trainer(config, data=data, hooks=hooks, progress=progress).fit()
