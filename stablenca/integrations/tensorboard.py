"""Per-batch records as TensorBoard scalars (extra: ``pip install stablenca[tensorboard]``).

:func:`export` reads every ``<run>/records.jsonl`` of a run set (``stablenca diagnose``,
a watch with ``out=``, the Lightning callback) and writes one event file per run into
``LOGDIR/<run>/``, with ``torch.utils.tensorboard.SummaryWriter``:

* every finite number of a record as the scalar of the same name, at the record's step;
* a NaN or ±Inf value is never written as that scalar: it goes to its own series,
  ``nan/<key>`` (1 at that step) or ``inf/<key>`` (+1 or -1), and each step has the
  totals ``nonfinite/nan_values`` and ``nonfinite/inf_values``;
* ``status/skipped`` and ``status/failed`` (0 or 1) for the watch's step status;
* a histogram ``grad_norms`` of the per-parameter gradient norms, finite values only
  (TensorBoard's histogram code fails on NaN), and none at a step without any.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError, StableNCAError
from ..artifacts import iter_run_dirs
from ..records import read_jsonl

GRAD_NORM_PREFIX = "grad_2.0_norm/"


def export(run_set: str | Path, logdir: str | Path | None = None) -> list[Path]:
    """Write the event files of every run in ``run_set``; returns the run directories written."""
    try:  # optional extra, imported on use so that `stablenca --help` works without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise StableNCAError("TensorBoard is not installed",
                             fix="pip install 'stablenca[tensorboard]'") from None
    run_set = Path(run_set)
    if not run_set.is_dir():
        raise DataError(f"{run_set} is not a directory", fix="pass the --out directory of a stablenca run set")
    runs = [d for d in iter_run_dirs(run_set) if (d / "records.jsonl").exists()]
    if not runs:
        raise DataError(f"{run_set} holds no <run>/records.jsonl",
                        fix="pass the --out directory of stablenca diagnose or of a watch with out=")
    logdir = Path(logdir) if logdir is not None else run_set / "tensorboard"
    written = []
    for run_dir in runs:
        target = logdir / run_dir.name
        with SummaryWriter(log_dir=str(target)) as writer:
            for index, record in enumerate(read_jsonl(run_dir / "records.jsonl")):
                step = record.get("step", index)
                step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else index
                _write_record(writer, record, step, np)
        written.append(target)
    return written


def _write_record(writer, record: dict, step: int, np) -> None:
    nan_values = inf_values = 0
    grad_norms = []
    for key, value in record.items():
        if key in ("step", "epoch") or isinstance(value, (str, dict, list)) or value is None:
            continue
        value = float(value)  # bool counts as 0/1
        if math.isnan(value):
            nan_values += 1
            writer.add_scalar(f"nan/{key}", 1.0, step)
        elif math.isinf(value):
            inf_values += 1
            writer.add_scalar(f"inf/{key}", math.copysign(1.0, value), step)
        else:
            writer.add_scalar(key, value, step)
            if key.startswith(GRAD_NORM_PREFIX):
                grad_norms.append(value)
    writer.add_scalar("nonfinite/nan_values", nan_values, step)
    writer.add_scalar("nonfinite/inf_values", inf_values, step)
    status = record.get("status")
    if isinstance(status, str):
        writer.add_scalar("status/skipped", float(status == "skipped"), step)
        writer.add_scalar("status/failed", float(status == "failed"), step)
    if grad_norms:  # finite values only: a NaN in a histogram breaks TensorBoard
        writer.add_histogram("grad_norms", np.asarray(grad_norms, dtype=np.float64), step)
