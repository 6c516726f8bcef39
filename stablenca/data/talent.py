"""TALENT-format directories (``N_*.npy``, ``C_*.npy``, ``y_*.npy``, ``info.json``), which come already split."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, StableNCAWarning
from .dataset import SPLITS, RawDataset, Task, _check_finite, _check_task, _resolve_target
from .unpickle import _load_object_npy

#: The category a missing categorical value becomes: TALENT's ``cat_nan_policy`` "new"
#: (its default, ``configs/deep_configs.json``), with TALENT's name for it.
MISSING_CATEGORY = "___null___"
#: What TALENT's ``data_nan_process`` reads as a missing category, once the column is text
#: (a float NaN in an object column reads "nan").
MISSING_CATEGORY_TEXT = ("nan", "NaN", "")
#: Fills already reported in this process: a directory read again (diagnose reloads it from a
#: capsule for a figure) is not reported twice.
_REPORTED_FILLS: set[tuple[str, int, int]] = set()


def load_talent_dir(path: str | os.PathLike, *, task: Task | None = None) -> RawDataset:
    """Load a TALENT-format directory, which comes already split.

    ``y_{train,val,test}.npy`` and ``info.json`` are required. ``info.json``
    holds ``task_type`` (binclass, multiclass or regression) and optionally
    ``n_num_features`` and ``n_cat_features``. ``N_*.npy`` holds the numerical
    features and ``C_*.npy`` the categorical ones. Each of the two is optional,
    but if present it must exist for all three splits. A binclass directory is
    loaded as multiclass with two classes. ``task``, if given, must agree with
    ``info.json``.
    """
    _check_task(task, allow_none=True)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory", fix="pass a TALENT directory with y_*.npy and info.json")
    info_path = root / "info.json"
    info = _read_info(info_path)
    declared = info.get("task_type")
    if declared not in ("binclass", "multiclass", "regression"):
        raise DataError(f"{info_path}: task_type is {declared!r}",
                        fix="set task_type to 'binclass', 'multiclass' or 'regression'")
    info_task = "regression" if declared == "regression" else "multiclass"
    if task is not None and task != info_task:
        raise DataError(f"task={task} was asked but {info_path} says task_type={declared!r}",
                        fix="drop --task or correct task_type in info.json")

    y = {}
    for s in SPLITS:
        arr = _load_npy(root / f"y_{s}.npy")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1 or len(arr) == 0:
            raise DataError(f"{root / f'y_{s}.npy'} has shape {arr.shape}; expected (rows,) with at least one row",
                            fix="save one target per row as a 1-D array")
        y[s] = arr
    rows = {s: len(y[s]) for s in SPLITS}
    x_num = _load_part(root, "N", _declared_count(info, "n_num_features", info_path), rows)
    x_cat = _load_part(root, "C", _declared_count(info, "n_cat_features", info_path), rows)
    for s in SPLITS:
        try:  # a string array of numbers is accepted too
            x_num[s] = x_num[s].astype(np.float64)
        except ValueError as e:
            raise DataError(f"{root / f'N_{s}.npy'} holds {x_num[s].dtype} values that are not numbers",
                            fix="put categorical features in C_*.npy") from e
        x_cat[s] = x_cat[s].astype(str)  # numeric codes become category names
    filled = fill_missing(x_num, x_cat)
    if any(filled) and (reported := (str(root.resolve()), *filled)) not in _REPORTED_FILLS:
        _REPORTED_FILLS.add(reported)
        warnings.warn(StableNCAWarning(
            f"{root}: filled {filled[0]} missing numerical value(s) with their column's training mean and "
            f"{filled[1]} missing categorical value(s) with the category {MISSING_CATEGORY!r}, as TALENT does by "
            "default (num_nan_policy='mean', cat_nan_policy='new')"), stacklevel=2)
    n_num, n_cat = x_num["train"].shape[1], x_cat["train"].shape[1]
    if n_num + n_cat == 0:
        raise DataError(f"{root} has no features (no N_*.npy or C_*.npy with columns)",
                        fix="add N_*.npy and/or C_*.npy")
    num_names = [f"num_{j}" for j in range(n_num)]
    for s in SPLITS:
        _check_finite(x_num[s], num_names, str(root / f"N_{s}.npy"))
    task, y, class_names = _resolve_target(
        y, info_task, where=f"{root}/y_*.npy",
        asked=f"task_type={declared!r} in {info_path}", change="task_type '{}' in info.json",
    )
    return RawDataset(
        name=root.resolve().name,
        task=task,
        x_num=x_num,
        x_cat=x_cat,
        y=y,
        num_names=num_names,
        cat_names=[f"cat_{j}" for j in range(n_cat)],
        class_names=class_names,
        split_seed=None,
    )


def fill_missing(x_num: dict[str, np.ndarray], x_cat: dict[str, np.ndarray]) -> tuple[int, int]:
    """Fill missing values (the dicts' arrays, by split) as TALENT's ``data_nan_process`` does with its defaults; return
    (numerical, categorical) counts filled.

    * A numerical NaN becomes its column's mean over the training split's other values
      (``np.nanmean``, float64), 0 for a column with no training value (``num_nan_policy``
      "mean"). Infinities are not missing values: they stay, and the loader refuses them.
    * A categorical value in :data:`MISSING_CATEGORY_TEXT` becomes :data:`MISSING_CATEGORY`,
      one category of its own (``cat_nan_policy`` "new").

    NOTE[DIFF]: TALENT writes the name into the column's fixed-width str array, which cuts it to the
    array's widest value (``'___n'`` in a column whose widest value is ``'None'``). Only the name
    differs: the filled cells are one category either way, unless a real value equals the cut name.

    >>> x_num = {"train": np.array([[1.0], [np.nan], [3.0]]), "val": np.array([[np.nan]]), "test": np.array([[5.0]])}
    >>> x_cat = {"train": np.array([["a"], ["b"], ["a"]]), "val": np.array([["b"]]), "test": np.array([["nan"]])}
    >>> fill_missing(x_num, x_cat), x_num["val"].tolist(), x_cat["test"].tolist()
    ((2, 1), [[2.0]], [['___null___']])
    """
    missing_num = {s: np.isnan(x) for s, x in x_num.items()}
    n_num = sum(int(mask.sum()) for mask in missing_num.values())
    if n_num:
        with warnings.catch_warnings():  # a column with no training value: numpy's "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nan_to_num(np.nanmean(x_num["train"], axis=0), nan=0.0)
        for s, x in x_num.items():
            rows, columns = np.nonzero(missing_num[s])
            x[rows, columns] = means[columns]
    n_cat = 0
    for s, x in x_cat.items():
        missing = np.isin(x, MISSING_CATEGORY_TEXT)
        if missing.any():
            n_cat += int(missing.sum())
            x_cat[s] = np.where(missing, MISSING_CATEGORY, x)  # a str dtype wide enough for the name
    return n_num, n_cat


def _read_info(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} is missing",
                        fix='write it, e.g. {"task_type": "multiclass", "n_num_features": 3, "n_cat_features": 1}')
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path} is not valid JSON ({type(e).__name__})",
                        fix="rewrite it as a JSON object with task_type") from e
    if not isinstance(info, dict):
        raise DataError(f"{path} is not a JSON object", fix="rewrite it as a JSON object with task_type")
    return info


def _declared_count(info: dict, key: str, info_path: Path) -> int | None:
    value = info.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DataError(f"{info_path}: {key} is {value!r}, not a count", fix=f"set {key} to a non-negative integer")
    return value


def _load_npy(path: Path, *, text: bool = False) -> np.ndarray:
    """One array; ``text``: a categorical file, whose object arrays become their elements' str (TALENT's way)."""
    if not path.is_file():
        raise DataError(f"{path} is missing", fix="save all of y_train/y_val/y_test.npy (and N_/C_ for each split)")
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle a user's file freely: it could run code
    except ValueError as e:
        if "Object arrays cannot be loaded" not in str(e):
            raise DataError(f"{path} is not a readable .npy file", fix="save it with numpy.save") from e
        arr = _load_object_npy(path, text=text)  # TALENT's C_*.npy: a pickled array of str, read with an allow-list
    except Exception as e:  # truncated or garbage files fail in many ways (EOFError, OSError, ...)
        raise DataError(f"{path} is not a readable .npy file ({type(e).__name__})",
                        fix="save it with numpy.save") from e
    if not isinstance(arr, np.ndarray):  # np.load opens .npz archives lazily
        arr.close()
        raise DataError(f"{path} is an .npz archive, not one array", fix="save each array with numpy.save")
    if arr.dtype.kind not in "biufUS":
        raise DataError(f"{path} has dtype {arr.dtype}, not numbers or strings",
                        fix="save it as a numeric or string array")
    if arr.dtype.kind == "S":  # bytes: decode once here, so later astype(str) cannot fail
        try:
            arr = arr.astype(str)
        except UnicodeDecodeError:
            raise DataError(f"{path} holds bytes that are not ASCII text",
                            fix="save it as a str array, e.g. np.save(path, arr.astype(str))") from None
    return arr


def _load_part(root: Path, prefix: str, declared: int | None, rows: dict[str, int]) -> dict[str, np.ndarray]:
    """Load ``N_*`` or ``C_*`` for every split, checking the row and column counts."""
    files = {s: root / f"{prefix}_{s}.npy" for s in SPLITS}
    present = [s for s in SPLITS if files[s].exists()]
    key = "n_num_features" if prefix == "N" else "n_cat_features"
    if not present:
        if declared:
            raise DataError(f"{root} has no {prefix}_*.npy but info.json says {key}={declared}",
                            fix=f"add {prefix}_train/val/test.npy or set {key} to 0")
        return {s: np.empty((rows[s], 0), dtype=np.float64 if prefix == "N" else str) for s in SPLITS}
    missing = [s for s in SPLITS if s not in present]
    if missing:
        raise DataError(f"{files[missing[0]]} is missing but {files[present[0]].name} exists",
                        fix=f"save {prefix}_ for all of train, val and test")
    out = {}
    for s in SPLITS:
        arr = _load_npy(files[s], text=prefix == "C")
        if arr.ndim != 2 or arr.shape[0] != rows[s]:
            raise DataError(f"{files[s]} has shape {arr.shape} but y_{s}.npy has {rows[s]} rows",
                            fix=f"save a 2-D array with {rows[s]} rows, one per target")
        out[s] = arr
    widths = {s: out[s].shape[1] for s in SPLITS}
    expected = declared if declared is not None else widths["train"]
    bad = [s for s in SPLITS if widths[s] != expected]
    if bad:
        source = f"info.json says {key}={declared}" if declared is not None else f"{files['train'].name} has {expected}"
        raise DataError(f"{files[bad[0]]} has {widths[bad[0]]} columns but {source}",
                        fix="make the column counts agree")
    return out
