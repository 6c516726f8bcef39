"""Datasets: load a table, split it, and prepare it for a model.

Three sources give one result, a :class:`RawDataset`:

* ``abalone``: the flagship case. It is read from the CSV that scikit-lego ships,
  so there is no network access and sklego is never imported;
* a TALENT-format directory (``N_*.npy``, ``C_*.npy``, ``y_*.npy``, ``info.json``);
* a CSV file with a header row and a named target column.

:func:`prepare` fits the preprocessing on the training split only. It returns a
:class:`PreparedData` whose features are ``[numerical | one-hot]`` float64
matrices and whose targets are labels or standardised values, ready for
:meth:`PreparedData.tensors`.

When a user's file cannot be used, a :class:`~stablenca.errors.DataError` is
raised. Its one-line message names the file, the problem and the fix.

>>> raw = load_abalone()
>>> raw.sizes()
{'train': 2672, 'val': 669, 'test': 836}
>>> data = prepare(raw)
>>> data.d_in, data.n_classes
(10, 3)

The package is split by concern: :mod:`.dataset` (types, split, shared checks),
:mod:`.abalone`, :mod:`.csvfile`, :mod:`.talent` (the three sources), :mod:`.unpickle`
(the allow-list reader for TALENT's object arrays) and :mod:`.preprocess`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, DataError
from .abalone import ABALONE_COLUMNS, load_abalone
from .csvfile import load_csv
from .dataset import (
    MAX_INFERRED_CLASSES,
    MIN_ROWS,
    SPLITS,
    TASKS,
    PreparedData,
    RawDataset,
    Task,
    _check_task,
    _no_target,
    split_indices,
    split_sizes,
)
from .preprocess import prepare
from .talent import (MISSING_CATEGORY, _load_npy, _read_info, fill_missing,  # noqa: F401  (_load_npy: tests use it)
                     load_talent_dir)

__all__ = [
    "ABALONE_COLUMNS", "MAX_INFERRED_CLASSES", "MIN_ROWS", "MISSING_CATEGORY", "SPLITS", "TASKS", "PreparedData",
    "RawDataset", "Task", "data_task", "fill_missing", "load_abalone", "load_csv", "load_dataset", "load_talent_dir",
    "prepare", "split_indices", "split_sizes",
]


def load_dataset(
    source: str | os.PathLike | None,
    *,
    task: Task | None = None,
    target: str | None = None,
    split_seed: int = 0,
) -> RawDataset:
    """Load ``source``, which is None or ``"abalone"``, a TALENT directory, or a ``.csv`` file.

    ``split_seed`` does not apply to a TALENT directory, whose split is fixed.
    """
    _check_task(task, allow_none=True)
    if source is None or source == "abalone":
        _no_target(target, "abalone")
        return load_abalone(task=task or "multiclass", split_seed=split_seed)
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"source={source!r} is not a path", fix="pass 'abalone', a TALENT directory or a .csv file")
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path} does not exist", fix="pass 'abalone', an existing TALENT directory or a .csv file")
    if path.is_dir():
        _no_target(target, "a TALENT directory")
        return load_talent_dir(path, task=task)
    if path.suffix.lower() == ".csv":
        if target is None:
            raise DataError(f"{path} needs a target column", fix="--target COLUMN")
        return load_csv(path, target=target, task=task, split_seed=split_seed)
    raise DataError(
        f"{path} is neither a directory nor a .csv file",
        fix="pass 'abalone', a TALENT directory (N_/C_/y_*.npy, info.json) or a .csv file",
    )


def data_task(source: str | os.PathLike | None, *, target: str | None = None) -> Task:
    """The task ``source`` declares: ``task_type`` of a TALENT directory's ``info.json``,
    the task inferred from a CSV target column, or multiclass for the embedded Abalone.

    This is what ``--task`` defaults to, so a regression directory trains as regression
    without being told twice.

    >>> data_task(None)
    'multiclass'
    """
    if source is None or source == "abalone":
        return "multiclass"
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        info_path = Path(source) / "info.json"
        declared = _read_info(info_path).get("task_type")
        if declared not in ("binclass", "multiclass", "regression"):
            raise DataError(f"{info_path}: task_type is {declared!r}",
                            fix="set task_type to 'binclass', 'multiclass' or 'regression'")
        return "regression" if declared == "regression" else "multiclass"
    return load_dataset(source, target=target).task
