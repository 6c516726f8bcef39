"""The recorder: one JSONL line per training batch.

It is a training hook (:class:`stablenca.training.trainer.Hook`); it reads the step's loss,
the intermediates the loss published and the gradients, through
:func:`stablenca.runtime.probes.batch_statistics`. It never special-cases a loss.

Small steps (the student's 32 x 32 batch) are held, copied, and summarised up to
:data:`~stablenca.runtime.probes.DEFERRED_STEPS` at a time: their per-step probes would
otherwise cost half a step. Held records reach the file, with the same numbers, before
anything can read them and on every way out: when the store is full, at a non-finite step
(at once, so a diverged run's last record is on disk), at each epoch's end (before its
``epochs.jsonl`` line), when forward or backward raises, when the fit ends or is
interrupted, at :meth:`Recorder.close`, and, for a recorder nobody closed, when it is
garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

from .probes import DeferredSteps, PublishedReductions, batch_statistics
from ..records import JsonlWriter, deferred_interrupts
from ..training.trainer import Hook


class _HeldRecords:
    """The held steps and the file they go to (apart from the Recorder, for its finalizer)."""

    def __init__(self, path: Path) -> None:
        self.writer = JsonlWriter(path)
        self.steps = DeferredSteps()
        self.parameter_names: list[str] = []
        self.last: dict | None = None
        self.pid = os.getpid()

    def flush(self) -> None:
        if not len(self.steps) or os.getpid() != self.pid:  # a forked child never writes its parent's steps
            return
        with deferred_interrupts():  # all held lines or none
            text, last = self.steps.jsonl(self.parameter_names)
            self.writer.write_lines(text)
        self.last = last

    def write(self, record: dict) -> None:
        self.flush()  # keep the file in step order
        self.writer.write(record)
        self.last = record

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.close()


def _close(held: _HeldRecords, epochs: JsonlWriter) -> None:
    try:
        held.close()
    finally:
        epochs.close()


class Recorder(Hook):
    """Write ``records.jsonl`` (per batch) and ``epochs.jsonl`` (per epoch) into ``run_dir``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._held = _HeldRecords(self.run_dir / "records.jsonl")
        self.batches = self._held.writer
        self.epochs = JsonlWriter(self.run_dir / "epochs.jsonl")
        self._reductions = PublishedReductions()
        self._model = None
        self._close = weakref.finalize(self, _close, self._held, self.epochs)

    @property
    def last(self) -> dict | None:
        """The latest batch record (held ones are written first)."""
        self._held.flush()
        return self._held.last

    def flush(self) -> None:
        """Write the held records now."""
        self._held.flush()

    @contextlib.contextmanager
    def step_context(self, trainer, ctx):
        """Around forward + backward: the published matrices are reduced as they arrive
        (:class:`~stablenca.runtime.probes.PublishedReductions`); a step that raises leaves the held
        records on disk."""
        try:
            with self._reductions.collecting():
                yield
        except BaseException:
            self._held.flush()
            raise

    def after_step(self, trainer, ctx) -> None:
        if trainer.model is not self._model:  # the names, once per model (named_parameters costs 5 us a step)
            self._model = trainer.model
            self._held.flush()
            self._held.parameter_names = [name for name, _ in trainer.model.named_parameters()]
        header = {"epoch": ctx.epoch, "step": ctx.step, "step_in_epoch": ctx.step_in_epoch,
                  "batch_size": int(ctx.batch_indices.shape[0]), "applied": ctx.applied, "finite": ctx.finite}
        output = ctx.loss_output
        per_sample = output.per_sample if output is not None else None
        # After a non-finite step other hooks (the sentinel's replay) may have moved the
        # parameters: their norms are read now, as they always were.
        param_norms = ctx.param_norms if ctx.finite else None
        if param_norms is not None:
            held = self._held.steps.add(header, loss=ctx.loss, per_sample=per_sample,
                                        included=output.included if output is not None else None,
                                        published=ctx.published, grad_norms=ctx.grad_norms,
                                        param_norms=param_norms)
            if held is not None:
                if held:  # a stack is full
                    self._held.flush()
                return
        record = dict(header)
        record.update(batch_statistics(
            loss=ctx.loss, per_sample=per_sample, rows_excluded=output.n_excluded if output is not None else 0,
            published=ctx.published,
            named_parameters=list(trainer.model.named_parameters()), grad_norms=ctx.grad_norms,
            param_norms=param_norms, reductions=self._reductions))
        self._reductions.clear()  # the step's matrices are not kept alive past it
        self._held.write(record)

    def on_epoch_end(self, trainer, epoch, val_metrics) -> None:
        self._held.flush()
        self.epochs.write({"epoch": epoch, "step": trainer.global_step, **{f"val_{k}": v
                                                                          for k, v in val_metrics.items()}})

    def on_fit_end(self, trainer, result) -> None:
        self.close()

    def close(self) -> None:
        """Write what is held and close both files (once; also run when the recorder is collected)."""
        self._close()
