"""A Lightning ``Callback`` that watches every training batch (extra: ``pip install stablenca[lightning]``).

>>> from stablenca.integrations.lightning import StableNCACallback   # doctest: +SKIP
>>> trainer = lightning.pytorch.Trainer(callbacks=[StableNCACallback(out="runs/pl")])   # doctest: +SKIP

It drives the same :class:`~stablenca.runtime.watcher.Watch` as a hand-written loop, from
Lightning's hooks (automatic optimisation):

* ``on_train_batch_start``: copy the pre-step state, start collecting what the loss
  publishes (:func:`stablenca.publish`);
* ``on_before_backward``: keep the loss;
* ``on_before_optimizer_step``: the gradients exist: record the batch through the
  recorder's probes; on the first non-finite step, replay ``training_step`` + backward
  under the tracer from the pre-step state (inside Lightning's precision context, so
  ``precision="bf16-mixed"``/``"16-mixed"`` replays in half precision, and the float32
  counterfactual switches that autocast off), verify the root cause by replaying
  ``training_step`` on float64 and float32 copies of the module (as ``watch.step(loss_fn, ...)``
  does), write the capsule and the finding, drop the gradients (so the optimizer does not apply
  NaN) and set ``trainer.should_stop``.
  With ``precision="16-mixed"`` the plugin's GradScaler is handed to the watch: a step it
  skips is recorded as ``skipped``, not a failure.

On ``on_fit_end`` (or an exception) the run set is closed: ``stablenca report OUT``
reads it. Under ``strategy="ddp"`` (tested on CPU, gloo, 2 processes) the watch agrees
across ranks as in :mod:`.distributed`: every rank stops at the same step and writes its own
run and finding. The replays call ``training_step`` on the module itself, not through
Lightning's DDP wrapper; every rank replays the same step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..errors import ConfigError
from ..publish import capture
from ..runtime.watcher import Watch


class StableNCACallback(pl.Callback):
    """Record every training batch and stop cleanly at the first non-finite one.

    ``out``: run-set directory (``None``: in memory); ``mode``: ``sentinel`` or ``off``;
    ``force``: replace an earlier run set in ``out``. After ``fit``: :attr:`watch`
    holds the records, ``watch.finding`` and ``watch.failed_at``.
    """

    def __init__(self, out: str | Path | None = None, *, mode: str = "sentinel", force: bool = False,
                 run: str = "lightning") -> None:
        super().__init__()
        self.out, self.mode, self.force, self.run = out, mode, force, run
        self.watch: Watch | None = None
        self._published: contextlib.ExitStack | None = None
        self._sink: dict[str, Any] = {}
        self._loss: torch.Tensor | None = None
        self._batch: tuple[Any, int] | None = None
        self._precision = None
        self._takes_batch_idx = True

    # -- set-up and tear-down ----------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise ConfigError("StableNCACallback needs automatic optimisation (it replays training_step)",
                              fix="use stablenca.watch(...) inside a manual-optimisation training_step")
        # Lightning passes batch_idx only when training_step's signature takes it
        self._takes_batch_idx = is_param_in_hook_signature(pl_module.training_step, "batch_idx", min_args=2)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        # precision="16-mixed" scales the loss with a GradScaler: its skips are not failures.
        self._precision = trainer.precision_plugin
        scaler = getattr(self._precision, "scaler", None)
        self.watch = Watch(pl_module, optimizer, out=self.out, mode=self.mode, force=self.force, run=self.run,
                           scaler=scaler)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish(interrupted=isinstance(exception, KeyboardInterrupt))

    def _finish(self, interrupted: bool = False) -> None:
        self._stop_collecting()
        if self.watch is not None:
            self.watch.close(interrupted=interrupted)

    # -- one batch -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.watch.begin()
        self._batch = (batch, batch_idx)
        self._loss = None
        self._stop_collecting()
        self._published = contextlib.ExitStack()
        self._sink = self._published.enter_context(capture())
        self._published.enter_context(self.watch.reductions.collecting())

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # With a GradScaler Lightning hands this hook the scaled loss; the scale is a power of
        # two, so dividing by it gives the loss back exactly.
        scaler = self.watch.scaler
        self._loss = loss.detach() / scaler.get_scale() if scaler is not None else loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        published = dict(self._sink)
        self._stop_collecting()
        if self._loss is None or self.watch.should_stop:
            return
        batch, batch_idx = self._batch

        def replay():  # as Lightning runs the step: fresh gradients, its autocast context, its loss scaling
            optimizer.zero_grad(set_to_none=True)
            loss = self._training_loss(pl_module, batch, batch_idx)
            scaler = self.watch.scaler
            (scaler.scale(loss) if scaler is not None else loss).backward()
            return loss

        self.watch.observe(self._loss, published, replay, epoch=trainer.current_epoch,
                           loss_fn=self._rebuildable_step(trainer, batch, batch_idx))
        if self.watch.should_stop:
            optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
            trainer.should_stop = True

    def _training_loss(self, module: pl.LightningModule, batch: Any, batch_idx: int) -> torch.Tensor:
        """``training_step``'s loss as Lightning computes it: in its precision context (autocast keeps
        float64 as it is), with ``batch_idx`` only when the signature takes it."""
        with self._precision.train_step_context():
            out = module.training_step(batch, *((batch_idx,) if self._takes_batch_idx else ()))
        return out["loss"] if isinstance(out, dict) else out

    def _rebuildable_step(self, trainer: pl.Trainer, batch: Any, batch_idx: int):
        """``(loss_fn, inputs)`` that runs ``training_step`` on the watch's float64 (or float32) copy of the
        module: the batch's tensors are the inputs, which the watch casts, and the batch is rebuilt around them.

        A copied LightningModule has no trainer (Lightning drops it from the copy). The copy gets the
        counters a step may read (``global_step``, ``current_epoch``, the ranks) and ``barebones``, under
        which ``self.log`` does nothing; a step that reads more of the trainer raises, and the finding
        then says the verification was not run, and why.
        """
        leaves, spec = tree_flatten(batch)
        counters = SimpleNamespace(global_step=trainer.global_step, current_epoch=trainer.current_epoch,
                                   global_rank=trainer.global_rank, local_rank=trainer.local_rank, barebones=True)

        def loss_fn(module: pl.LightningModule, *cast: Any) -> torch.Tensor:
            module.trainer = counters
            return self._training_loss(module, tree_unflatten(list(cast), spec), batch_idx)

        return loss_fn, tuple(leaves)

    def _stop_collecting(self) -> None:
        if self._published is not None:
            self._published.close()
            self._published = None
