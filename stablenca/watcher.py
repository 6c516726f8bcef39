"""Attach the recorder, the sentinel and the tracer to *your own* training loop.

Wrap the part of a step that computes the loss and its gradients in a closure (the
same idiom as ``optimizer.step(closure)``) and hand it to :meth:`Watch.step`::

    with stablenca.watch(model, optimizer, out="runs/mine") as watch:
        for epoch in range(epochs):
            for x, y in loader:
                def closure():
                    optimizer.zero_grad()
                    loss = my_loss(model(x), y)
                    loss.backward()
                    return loss
                watch.step(closure, epoch=epoch)
                if watch.failed:
                    break
                optimizer.step()
    print(watch.finding)  # the first non-finite op and its root-cause chain, or None

Each step is recorded (one JSONL line, flushed) with loss, gradient and parameter
norms, and whatever the loss published with :func:`stablenca.publish`. In
``sentinel`` mode the pre-step state is copied before the closure runs; on the first
step whose loss or gradients are not finite that state is restored and the closure
is replayed once under the tracer. In ``full`` mode every step runs under the tracer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError
from .probes import batch_statistics
from .publish import capture
from .records import JsonlWriter, atomic_write_json
from .sentinel import MODES, Snapshot


class Watch:
    """See the module docstring. ``out=None`` keeps the records in memory only."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 out: str | Path | None = None, mode: str = "sentinel", keep: int = 10_000) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}, not a torch.nn.Module",
                              fix="pass the module whose parameters the loss trains")
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.out = Path(out) if out is not None else None
        self.writer = JsonlWriter(self.out / "records.jsonl") if self.out is not None else None
        self.snapshot = Snapshot(model, optimizer) if mode != "off" else None
        self.records: list[dict[str, Any]] = []
        self.keep = keep
        self.finding = None
        self.failed_at: dict[str, Any] | None = None
        self._step = 0

    @property
    def failed(self) -> bool:
        return self.failed_at is not None

    def step(self, closure: Callable[[], torch.Tensor], *, epoch: int | None = None) -> torch.Tensor:
        """Run ``closure`` (forward + backward, returns the loss), record it, and trace the first failure."""
        from .trace import Tracer

        if self.snapshot is not None and not self.failed:
            self.snapshot.take()
        tracer = Tracer(model=self.model) if self.mode == "full" and not self.failed else None
        with capture() as published, (tracer if tracer is not None else contextlib.nullcontext()):
            loss = closure()
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(f"the closure returned {type(loss).__name__}, not the loss tensor",
                              fix="end the closure with `return loss`")
        named = list(self.model.named_parameters())
        record = {"epoch": epoch, "step": self._step}
        record.update(batch_statistics(loss=loss, per_sample=None, rows_excluded=0, published=published,
                                       named_parameters=named))
        finite = bool(torch.isfinite(loss.detach()).all()) and record["grad_nonfinite"] == 0
        record["finite"] = finite
        if not finite and not self.failed:
            self.failed_at = {"epoch": epoch, "step": self._step}
            self.finding = tracer.finding if tracer is not None else None
            if self.finding is None and self.snapshot is not None:
                self.snapshot.restore()
                with Tracer(model=self.model) as replay:
                    closure()
                self.finding = replay.finding
            record["first_nonfinite"] = self.finding.to_dict() if self.finding is not None else None
            if self.out is not None:
                atomic_write_json(self.out / "finding.json", record["first_nonfinite"])
        if self.writer is not None:
            self.writer.write(record)
        if len(self.records) < self.keep:
            self.records.append(record)
        self._step += 1
        return loss

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **kwargs) -> Watch:
    """Shorthand for :class:`Watch` (use it as a context manager)."""
    return Watch(model, optimizer, **kwargs)
