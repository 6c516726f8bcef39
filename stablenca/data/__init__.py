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
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .errors import ConfigError, DataError

Task = Literal["multiclass", "regression"]

SPLITS = ("train", "val", "test")
TASKS = ("multiclass", "regression")
#: With fewer rows, a 64/16/20 split leaves parts too small to mean anything.
MIN_ROWS = 10
#: A numeric target with at most this many distinct integer values is taken to be classes.
MAX_INFERRED_CLASSES = 20

ABALONE_COLUMNS = (
    "sex", "length", "diameter", "height", "whole_weight",
    "shucked_weight", "viscera_weight", "shell_weight", "rings",
)
# TALENT's `abalone`: rings 1-8 -> 0, 9-10 -> 1, 11-29 -> 2 (shares about 0.337/0.317/0.346).
_ABALONE_BINS = (9, 11)
_ABALONE_CLASS_NAMES = ("rings 1-8", "rings 9-10", "rings 11-29")


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


# --------------------------------------------------------------------------- sources


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


def load_abalone(*, task: Task = "multiclass", split_seed: int = 0) -> RawDataset:
    """Load UCI Abalone from the copy that scikit-lego ships, split 64/16/20.

    With ``task="multiclass"``, rings are binned into TALENT's three classes
    (1-8, 9-10, 11-29). With ``task="regression"``, y is the rings count as a
    float (TALENT's ``Abalone_reg``). The seven measurements are rounded to 4
    decimals, because the shipped CSV has float noise such as
    0.10099999999999999. ``sex`` (M/F/I) is the one categorical feature.
    """
    _check_task(task, allow_none=False)
    _check_seed(split_seed)
    path = _abalone_zip()
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
            # The single member is a CSV, although it is named "sklego/data/abalone.zip".
            text = zf.read(members[0]).decode("utf-8-sig")
    except (zipfile.BadZipFile, OSError, IndexError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__})",
                        fix="pip install --force-reinstall scikit-lego") from e
    header, cols = _parse_csv(text, str(path))
    if tuple(header) != ABALONE_COLUMNS:
        raise DataError(f"{path} has columns {header}, not the abalone ones",
                        fix="pip install --force-reinstall scikit-lego")
    try:
        x_num = np.round(np.stack([cols[c].astype(np.float64) for c in ABALONE_COLUMNS[1:8]], axis=1), 4)
        rings = cols["rings"].astype(np.int64)
    except ValueError as e:
        raise DataError(f"{path} holds a non-number ({e})", fix="pip install --force-reinstall scikit-lego") from e
    x_cat = cols["sex"][:, None]
    if task == "multiclass":
        y, class_names, name = np.digitize(rings, _ABALONE_BINS).astype(np.int64), list(_ABALONE_CLASS_NAMES), "abalone"
    else:
        y, class_names, name = rings.astype(np.float64), None, "abalone_reg"
    idx = split_indices(len(y), seed=split_seed)
    return RawDataset(
        name=name,
        task=task,
        x_num={s: x_num[i] for s, i in idx.items()},
        x_cat={s: x_cat[i] for s, i in idx.items()},
        y={s: y[i] for s, i in idx.items()},
        num_names=list(ABALONE_COLUMNS[1:8]),
        cat_names=["sex"],
        class_names=class_names,
        split_seed=split_seed,
        row_index=idx,
    )


def load_csv(
    path: str | os.PathLike,
    *,
    target: str,
    task: Task | None = None,
    split_seed: int = 0,
    categorical: list[str] | None = None,
) -> RawDataset:
    """Load a CSV file with a header row, predict column ``target``, and split it 64/16/20.

    A feature column is numerical if every non-empty cell parses as a number.
    Otherwise it is categorical. Columns listed in ``categorical`` are
    categorical even when they look numerical. An empty cell in a numerical
    column is missing and raises :class:`DataError`. In a categorical column it
    is a category of its own.

    When ``task`` is None, a non-numeric target, or an integer target with at
    most 20 distinct values, gives ``"multiclass"``. Any other target gives
    ``"regression"``.
    """
    _check_task(task, allow_none=True)
    _check_seed(split_seed)
    path = Path(path)
    if target is None:
        raise DataError(f"{path} needs a target column", fix="--target COLUMN")
    if not isinstance(target, str):
        raise ConfigError(f"target={target!r} is not a column name", fix="--target COLUMN")
    if categorical is not None and (isinstance(categorical, str) or not all(isinstance(c, str) for c in categorical)):
        raise ConfigError(f"categorical={categorical!r} is not a list of column names", fix="pass a list of strings")
    header, cols = _parse_csv(_read_text(path), str(path))
    if target not in cols:
        raise DataError(
            f"{path} has no column {target!r} (columns: {_preview(header)})",
            fix="pass one of those columns as the target (--target COLUMN)",
        )
    unknown = [c for c in categorical or () if c not in cols]
    if unknown:
        raise DataError(f"categorical columns {_preview(unknown)} are not in {path} (columns: {_preview(header)})",
                        fix="list only existing columns as categorical")
    n = len(cols[target])
    if n < MIN_ROWS:
        raise DataError(f"{path} has {n} data rows; at least {MIN_ROWS} are needed to split it 64/16/20",
                        fix="use a larger table")
    features = [h for h in header if h != target]
    if not features:
        raise DataError(f"{path} has no feature columns besides the target {target!r}", fix="add feature columns")

    num_names, num_cols, cat_names, cat_cols = [], [], [], []
    for h in features:
        values = None if h in (categorical or ()) else _as_numbers(cols[h])
        if values is None:
            cat_names.append(h)
            cat_cols.append(cols[h])
        else:
            num_names.append(h)
            num_cols.append(values)
    x_num = np.stack(num_cols, axis=1) if num_cols else np.empty((n, 0))
    x_cat = np.stack(cat_cols, axis=1) if cat_cols else np.empty((n, 0), dtype=str)
    _check_finite(x_num, num_names, str(path), fix_extra=" (or list the column as categorical)")

    y_cells = cols[target]
    empty = np.flatnonzero(y_cells == "")
    if empty.size:
        raise DataError(f"target column {target!r} of {path} has {empty.size} empty cells"
                        f" (first in data row {empty[0] + 1})",
                        fix="fill in the target or drop those rows")
    y_num = _as_numbers(y_cells)
    y_all = y_cells if y_num is None else y_num
    idx = split_indices(n, seed=split_seed)
    task, y, class_names = _resolve_target(
        {s: y_all[i] for s, i in idx.items()}, task,
        where=f"target column {target!r} of {path}", asked=f"task={task}", change="--task {}",
    )
    return RawDataset(
        name=path.stem,
        task=task,
        x_num={s: x_num[i] for s, i in idx.items()},
        x_cat={s: x_cat[i] for s, i in idx.items()},
        y=y,
        num_names=num_names,
        cat_names=cat_names,
        class_names=class_names,
        split_seed=split_seed,
        row_index=idx,
    )


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


# --------------------------------------------------------------------------- preparation


def prepare(raw: RawDataset, *, numerical: Literal["standard", "quantile"] = "standard") -> PreparedData:
    """Fit the preprocessing on ``raw``'s training split and apply it to all three splits.

    Numerical columns get sklearn's ``StandardScaler``, or, with
    ``numerical="quantile"``, a ``QuantileTransformer`` with normal output.
    Categorical columns get a ``OneHotEncoder``. A category that is not seen in
    train becomes an all-zero row. Regression targets are standardised with the
    training mean and std.
    """
    if not isinstance(raw, RawDataset):
        raise ConfigError(f"prepare() needs a RawDataset, not {type(raw).__name__}",
                          fix="pass the result of load_dataset()")
    if numerical not in ("standard", "quantile"):
        raise ConfigError(f"numerical={numerical!r} is not a preprocessing", fix="use 'standard' or 'quantile'")
    # sklearn is slow to import and only needed here.
    from sklearn.preprocessing import OneHotEncoder, QuantileTransformer, StandardScaler

    n_train = len(raw.y["train"])
    num, n_num = dict(raw.x_num), raw.x_num["train"].shape[1]
    if n_num:
        scaler = (
            StandardScaler()
            if numerical == "standard"
            else QuantileTransformer(output_distribution="normal", n_quantiles=min(1000, n_train), random_state=0)
        ).fit(raw.x_num["train"])
        num = {s: scaler.transform(raw.x_num[s]) for s in SPLITS}
    onehot = {s: np.empty((len(raw.y[s]), 0)) for s in SPLITS}
    onehot_names: list[str] = []
    if raw.x_cat["train"].shape[1]:
        # NOTE[DIFF]: TALENT (cat_policy tabr_ohe) first maps a category unseen in train to
        # the first training row's category (its "mode" is taken only when train itself has
        # unknowns, which it cannot); here it becomes an all-zero row. The same result
        # whenever val and test hold only categories seen in train, as Abalone's do.
        enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64).fit(raw.x_cat["train"])
        with warnings.catch_warnings():
            # Unseen categories in val/test become all-zero rows. That is intended, so the warning is noise.
            warnings.filterwarnings("ignore", message="Found unknown categories")
            onehot = {s: enc.transform(raw.x_cat[s]) for s in SPLITS}
        onehot_names = [str(f) for f in enc.get_feature_names_out(raw.cat_names)]
    x = {s: np.ascontiguousarray(np.hstack([num[s], onehot[s]]), dtype=np.float64) for s in SPLITS}

    y_raw = {s: raw.y[s].copy() for s in SPLITS}
    y_mean = y_std = None
    if raw.task == "regression":
        y_mean, y_std = float(raw.y["train"].mean()), float(raw.y["train"].std())  # ddof 0, as TALENT
        if not y_std > 0:
            raise DataError(f"{raw.name}: the regression target is constant in the training split",
                            fix="use a target that varies")
        y = {s: (raw.y[s] - y_mean) / y_std for s in SPLITS}
    else:
        y = {s: raw.y[s].astype(np.int64) for s in SPLITS}
    return PreparedData(
        name=raw.name,
        task=raw.task,
        n_classes=raw.n_classes,
        n_num=n_num,
        n_onehot=onehot["train"].shape[1],
        class_names=raw.class_names,
        y_mean=y_mean,
        y_std=y_std,
        x=x,
        y=y,
        y_raw=y_raw,
        feature_names=list(raw.num_names) + onehot_names,
    )


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


def _abalone_zip() -> Path:
    # find_spec on a top-level package locates it without running its __init__,
    # which would import sklearn and pandas.
    try:
        spec = importlib.util.find_spec("sklego")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the abalone data comes with scikit-lego, which is not installed",
                        fix="pip install scikit-lego")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "abalone.zip"
        if path.is_file():
            return path
    raise DataError(f"scikit-lego at {list(spec.submodule_search_locations)} has no data/abalone.zip",
                    fix="pip install --force-reinstall scikit-lego")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist", fix="check the path") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or type(e).__name__})",
                        fix="check the path and its permissions") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text", fix="save it as a UTF-8 CSV file") from None


def _parse_csv(text: str, source: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """Return the header and one stripped str array per column. Blank lines are skipped."""
    rows, lines = [], []
    try:
        reader = csv.reader(io.StringIO(text))
        for row in reader:
            if row:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{source} is not a readable CSV ({e})",
                        fix="save it as comma-separated text with a header row") from e
    if not rows:
        raise DataError(f"{source} is empty", fix="save a CSV with a header row and data rows")
    header = [h.strip() for h in rows[0]]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{source} repeats column names {_preview(dupes)}", fix="give every column a distinct name")
    for row, line in zip(rows[1:], lines[1:]):
        if len(row) != len(header):
            raise DataError(f"{source} line {line} has {len(row)} fields but the header has {len(header)}",
                            fix="give every row one value per header column")
    body = rows[1:]
    return header, {h: np.array([r[j].strip() for r in body], dtype=str) for j, h in enumerate(header)}


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


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} is missing", fix="save all of y_train/y_val/y_test.npy (and N_/C_ for each split)")
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle a user's file freely: it could run code
    except ValueError as e:
        if "Object arrays cannot be loaded" not in str(e):
            raise DataError(f"{path} is not a readable .npy file", fix="save it with numpy.save") from e
        arr = _load_object_npy(path)  # TALENT's C_*.npy: a pickled array of str, read with an allow-list
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


try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

#: The only globals an object-array pickle may name: how numpy rebuilds an array, a dtype
#: and a numpy scalar. Files written by numpy 1.x name ``numpy.core``, by 2.x ``numpy._core``.
_PICKLE_ALLOWED = {
    **{(module, "_reconstruct"): _multiarray._reconstruct for module in ("numpy.core.multiarray",
                                                                         "numpy._core.multiarray")},
    **{(module, "scalar"): _multiarray.scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
#: Element types an object array may hold (what TALENT's categorical and label columns hold).
_PLAIN_ELEMENTS = (str, bool, int, float, np.str_, np.bool_, np.integer, np.floating)


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays of plain values and nothing else.

    Every callable a pickle can invoke comes from :meth:`find_class` (there is no
    persistent-id hook), so refusing a name there refuses the call before it runs.
    """

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _load_object_npy(path: Path) -> np.ndarray:
    """Read an object-dtype ``.npy`` (``np.save(..., allow_pickle=True)``) without running its pickle freely.

    The array is rebuilt by :class:`_ArrayOnlyUnpickler`; its elements must be
    str, int, float or bool. All strings give a str array, all numbers a float64
    array, a mix a str array (so a category column with a numeric code still loads).
    """
    refuse = dict(fix="save it as a plain array, e.g. np.save(path, arr.astype(str))")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path} is an object array in .npy format {version}, which is not read",
                            **refuse)
        if not dtype.hasobject:
            raise DataError(f"{path} is not a readable .npy file", fix="save it with numpy.save")
        try:
            arr = _ArrayOnlyUnpickler(f).load()
        except _RefusedGlobal as e:
            raise DataError(f"{path} holds a pickle that names {e}, which is not loaded for safety "
                            "(only arrays of str, int, float and bool are)", **refuse) from None
        except Exception as e:  # a malformed pickle fails in many ways
            raise DataError(f"{path} holds an unreadable pickle ({type(e).__name__})", **refuse) from None
    if type(arr) is not np.ndarray or arr.shape != tuple(shape) or arr.dtype != object:
        raise DataError(f"{path} does not hold the object array its header declares", **refuse)
    flat = arr.ravel()
    odd = next((v for v in flat if not isinstance(v, _PLAIN_ELEMENTS)), None)
    if odd is not None:
        raise DataError(f"{path} holds a {type(odd).__name__} element; only str, int, float and bool are loaded",
                        **refuse)
    if flat.size and not any(isinstance(v, (str, np.str_)) for v in flat):
        return arr.astype(np.float64)
    return arr.astype(str)


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
        arr = _load_npy(files[s])
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
