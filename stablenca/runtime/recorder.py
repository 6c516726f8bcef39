"""The recorder: one JSONL line per training batch, flushed as it is written.

It is a training hook (:class:`stablenca.training.trainer.Hook`); it reads the step's loss,
the intermediates the loss published and the gradients, through
:func:`stablenca.runtime.probes.batch_statistics`. It never special-cases a loss.
"""

from __future__ import annotations

from pathlib import Path

from .probes import batch_statistics
from ..records import JsonlWriter
from ..training.trainer import Hook


class Recorder(Hook):
    """Write ``records.jsonl`` (per batch) and ``epochs.jsonl`` (per epoch) into ``run_dir``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.batches = JsonlWriter(self.run_dir / "records.jsonl")
        self.epochs = JsonlWriter(self.run_dir / "epochs.jsonl")
        self.last: dict | None = None

    def after_step(self, trainer, ctx) -> None:
        record = {"epoch": ctx.epoch, "step": ctx.step, "step_in_epoch": ctx.step_in_epoch,
                  "batch_size": int(len(ctx.batch_indices)), "applied": ctx.applied,
                  "finite": ctx.finite}
        output = ctx.loss_output
        record.update(batch_statistics(
            loss=ctx.loss, per_sample=output.per_sample if output is not None else None,
            rows_excluded=output.n_excluded if output is not None else 0, published=ctx.published,
            named_parameters=list(trainer.model.named_parameters()), grad_norms=ctx.grad_norms))
        self.batches.write(record)
        self.last = record

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        self.epochs.write({"epoch": epoch, "step": trainer.global_step, **{f"val_{k}": v
                                                                          for k, v in val_metrics.items()}})

    def on_fit_end(self, trainer, result) -> None:
        self.close()

    def close(self) -> None:
        self.batches.close()
        self.epochs.close()
