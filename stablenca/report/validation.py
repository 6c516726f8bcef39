"""Validation accuracy by epoch, and the epoch whose checkpoint was kept.

The recorder writes one ``epochs.jsonl`` line per finished epoch with the validation
metrics; the trainer keeps the checkpoint of the best validation accuracy, ties counting
as improvement (TALENT's rule), so the kept epoch is the *last* epoch that reached the
maximum. :func:`validation_curve` reads the curve back and checks that this rule gives
the ``best_epoch`` that ``result.json`` recorded.

>>> curve = from_records([{"epoch": 0, "val_accuracy": 0.60}, {"epoch": 1, "val_accuracy": 0.65},
...                       {"epoch": 2, "val_accuracy": 0.65}, {"epoch": 3, "val_accuracy": 0.58}])
>>> curve.best_epoch, curve.best, curve.last
(2, 0.65, 0.58)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..artifacts import EPOCHS, read_epochs, read_result
from ..errors import OutputError


@dataclasses.dataclass(frozen=True)
class ValidationCurve:
    epochs: list[int]
    accuracy: list[float]
    best_epoch: int | None

    @property
    def best(self) -> float | None:
        return None if self.best_epoch is None else self.accuracy[self.epochs.index(self.best_epoch)]

    @property
    def last(self) -> float | None:
        return self.accuracy[-1] if self.accuracy else None

    def after_best(self) -> tuple[float, float] | None:
        """(lowest, highest) validation accuracy over the epochs after the kept one (None if there are none)."""
        if self.best_epoch is None:
            return None
        later = [a for e, a in zip(self.epochs, self.accuracy) if e > self.best_epoch]
        return (min(later), max(later)) if later else None


def from_records(records: Iterable[Mapping[str, Any]]) -> ValidationCurve:
    """The curve from ``epochs.jsonl`` records; the kept epoch is the last one at the maximum."""
    epochs, accuracy = [], []
    for record in records:
        value = record.get("val_accuracy")
        if value is None or not math.isfinite(value):
            continue
        epochs.append(int(record["epoch"]))
        accuracy.append(float(value))
    best_epoch = None
    for epoch, value in zip(epochs, accuracy):
        if best_epoch is None or value >= accuracy[epochs.index(best_epoch)]:
            best_epoch = epoch
    return ValidationCurve(epochs, accuracy, best_epoch)


def validation_curve(run_dir: str | Path) -> ValidationCurve:
    """Read ``RUN_DIR/epochs.jsonl`` (and check the kept epoch against ``RUN_DIR/result.json``)."""
    run_dir = Path(run_dir)
    path = run_dir / EPOCHS
    if not path.is_file():
        raise OutputError(f"{path} does not exist", fix="point at a run directory written by stablenca diagnose")
    records = read_epochs(run_dir)
    if records and "val_accuracy" not in records[0]:
        raise OutputError(f"{path} has no val_accuracy (a regression run?)",
                          fix="use a classification run directory")
    curve = from_records(records)
    result = read_result(run_dir)
    if result is not None:
        recorded = result.get("best_epoch")
        if recorded is not None and recorded != curve.best_epoch:
            raise OutputError(f"{run_dir}: result.json keeps epoch {recorded} but epochs.jsonl peaks at epoch "
                              f"{curve.best_epoch}", fix="re-run stablenca diagnose; the run directory is inconsistent")
    return curve
