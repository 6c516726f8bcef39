"""The shared pieces of the data package: the dataset types, the 64/16/20 split,
argument checks, and the target resolution that the CSV and TALENT readers share."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from ..errors import ConfigError, DataError

Task = Literal["multiclass", "regression"]

SPLITS = ("train", "val", "test")
TASKS = ("multiclass", "regression")
#: With fewer rows, a 64/16/20 split leaves parts too small to mean anything.
MIN_ROWS = 10
#: A numeric target with at most this many distinct integer values is taken to be classes.
MAX_INFERRED_CLASSES = 20

@dataclasses.dataclass
class RawDataset:
    """A table split into train/val/test, before any preprocessing.

    ``x_num[split]`` is a finite float64 array of shape (n, n_num).
    ``x_cat[split]`` is a str array of shape (n, n_cat), where an empty string
    counts as a category of its own. ``y[split]`` holds int64 labels 0..K-1,
    where ``class_names[k]`` names label k, or float64 regression targets.
    """

    name: str
    task: Task
    x_num: dict[str, np.ndarray]
    x_cat: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    num_names: list[str]
    cat_names: list[str]
    class_names: list[str] | None
    #: The seed of the split. None when the source came already split (a TALENT directory).
    split_seed: int | None
    #: For each split, the 0-based data-row numbers in the source table. None when the source came already split.
    row_index: dict[str, np.ndarray] | None = None

    @property
    def n_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {s: len(self.y[s]) for s in SPLITS}


@dataclasses.dataclass
class PreparedData:
    """Model-ready arrays, with preprocessing fitted on the training split only.

    ``x[split]`` is float64 ``[numerical | one-hot]`` with ``d_in`` columns.
    ``y[split]`` holds int64 labels, or regression targets standardised with the
    training mean and std (ddof 0, as TALENT does). ``y_raw`` keeps the targets
    in their original units, so that metrics can be reported in those units.
    """

    name: str
    task: Task
    n_classes: int | None
    n_num: int
    n_onehot: int
    class_names: list[str] | None
    y_mean: float | None
    y_std: float | None
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    y_raw: dict[str, np.ndarray]
    feature_names: list[str]

    @property
    def d_in(self) -> int:
        """Width of the model input: the numerical columns plus the one-hot columns."""
        return self.n_num + self.n_onehot

    def tensors(self, split: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of one split as new tensors: labels are int64, regression targets use ``dtype``."""
        _check_split(split)
        x = torch.tensor(self.x[split], dtype=dtype)  # a copy, so the numpy arrays stay untouched
        y_dtype = torch.int64 if self.task == "multiclass" else dtype
        return x, torch.tensor(self.y[split], dtype=y_dtype)

    def unstandardise(self, y):
        """Map standardised regression values (array or tensor) back to original units."""
        if self.task != "regression":
            raise ConfigError("unstandardise() applies to regression only", fix="use the labels as they are")
        return y * self.y_std + self.y_mean


# --------------------------------------------------------------------------- splitting


def split_sizes(n: int) -> tuple[int, int, int]:
    """Return the ``(train, val, test)`` sizes of the 64/16/20 split of ``n`` rows.

    It uses the rounding of sklearn's ``train_test_split``, applied twice: test
    gets ceil(n/5) rows, val gets ceil(rest/5), and train gets what is left. The
    arithmetic is in integers, so float rounding cannot move a row.

    >>> split_sizes(4177)
    (2672, 669, 836)
    >>> split_sizes(10)
    (6, 2, 2)
    """
    n_test = -(-n // 5)
    rest = n - n_test
    n_val = -(-rest // 5)
    return rest - n_val, n_val, n_test


def split_indices(n: int, *, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split: one permutation from ``numpy.random.default_rng(seed)``, no stratification.

    >>> parts = split_indices(10, seed=0)
    >>> {s: len(i) for s, i in parts.items()}
    {'train': 6, 'val': 2, 'test': 2}
    >>> sorted(np.concatenate(list(parts.values())).tolist()) == list(range(10))
    True
    """
    _check_seed(seed)
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val, n_test = split_sizes(n)
    return {"train": perm[n_test + n_val:], "val": perm[n_test:n_test + n_val], "test": perm[:n_test]}


# --------------------------------------------------------------------------- helpers


def _check_task(task, *, allow_none: bool) -> None:
    if task is None and allow_none:
        return
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not a task", fix="use 'multiclass' or 'regression'")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"split_seed={seed!r} is not a non-negative integer", fix="use e.g. --split-seed 0")


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not a split", fix="use 'train', 'val' or 'test'")


def _no_target(target, what: str) -> None:
    if target is not None:
        raise ConfigError(f"a target column only applies to a .csv file, not {what}", fix="drop --target")


def _preview(names, limit: int = 8) -> str:
    """``'a', 'b', ... (+3 more)``: keeps messages on one readable line."""
    names = [str(n) for n in names]
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def _as_numbers(cells: np.ndarray) -> np.ndarray | None:
    """Parse a str column as float64, with NaN for empty cells.

    Return None if a cell is not a number, or if every cell is empty.
    """
    filled = cells != ""
    if not filled.any():
        return None
    out = np.full(cells.shape, np.nan)
    try:
        out[filled] = cells[filled].astype(np.float64)
    except (ValueError, OverflowError):
        return None
    return out


def _check_finite(x: np.ndarray, names: list[str], where: str, fix_extra: str = "") -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        raise DataError(
            f"{where}: {int(bad.sum())} missing, NaN or inf values"
            f" in numerical column(s) {_preview([names[j] for j in cols])}",
            fix="impute them or drop those rows" + fix_extra,
        )


def _class_name(value) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _resolve_target(y: dict[str, np.ndarray], task: Task | None, *, where: str, asked: str, change: str):
    """Check the targets against ``task``, or infer the task, and encode class labels as 0..K-1.

    ``asked`` says where the task came from, for messages. ``change`` is the
    fix, formatted with the right task. Return ``(task, y, class_names)``.
    """
    all_y = np.concatenate([y[s] for s in SPLITS])
    numeric = all_y.dtype.kind in "biuf"
    if numeric:
        all_y = all_y.astype(np.float64)
        if not np.isfinite(all_y).all():
            raise DataError(f"{where} has {int((~np.isfinite(all_y)).sum())} NaN or inf targets", fix="drop those rows")
        distinct = np.unique(all_y)
        integral = bool(np.all(distinct == np.round(distinct)))
    if task is None:
        task = "multiclass" if not numeric or (integral and len(distinct) <= MAX_INFERRED_CLASSES) else "regression"
    elif task == "regression" and not numeric:
        example = next((v for v in all_y.astype(str) if _as_numbers(np.array([v])) is None), str(all_y[0]))
        raise DataError(f"{asked} but {where} is not numeric (e.g. {str(example)!r})",
                        fix=f"use {change.format('multiclass')} or a numeric target")
    elif task == "multiclass" and numeric and not integral and len(distinct) > MAX_INFERRED_CLASSES:
        raise DataError(f"{asked} but {where} has {len(distinct)} distinct non-integer values",
                        fix=f"use {change.format('regression')} or bin the target into classes")

    if task == "regression":
        out = {s: y[s].astype(np.float64) for s in SPLITS}
        train = out["train"]
        if len(train) < 2 or np.ptp(train) == 0:
            raise DataError(f"{where} is constant ({train[0]:g}) in the training split", fix="use a target that varies")
        return task, out, None

    # Encode labels as 0..K-1 over all splits, so that a class seen only in test still gets a code.
    # NOTE[DIFF]: TALENT fits a LabelEncoder on the training labels, and its transform raises on a
    # validation or test label unseen in training; here such a label gets a code of its own, and its
    # rows count as errors (no training row can predict it). When every class is in the training
    # split, the codes are TALENT's: both number the sorted distinct labels.
    classes, codes = np.unique(all_y if numeric else all_y.astype(str), return_inverse=True)
    codes = codes.astype(np.int64)
    bounds = np.cumsum([0] + [len(y[s]) for s in SPLITS])
    out = {s: codes[bounds[k]:bounds[k + 1]] for k, s in enumerate(SPLITS)}
    names = [_class_name(c) for c in classes]
    train_classes = np.unique(out["train"])
    if len(train_classes) < 2:
        raise DataError(f"{where} has one class ({names[train_classes[0]]!r}) in the training split",
                        fix="use a target with at least two classes (or regression)")
    return task, out, names
