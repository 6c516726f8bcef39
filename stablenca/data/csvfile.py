"""CSV files with a header row and a named target column, split 64/16/20."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .dataset import (
    MIN_ROWS,
    RawDataset,
    Task,
    _as_numbers,
    _check_finite,
    _check_seed,
    _check_task,
    _preview,
    _resolve_target,
    split_indices,
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
