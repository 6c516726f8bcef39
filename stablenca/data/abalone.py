"""The embedded Abalone table, read from the CSV that scikit-lego ships (sklego is never imported)."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .csvfile import _parse_csv
from .dataset import RawDataset, Task, _check_seed, _check_task, split_indices

ABALONE_COLUMNS = (
    "sex", "length", "diameter", "height", "whole_weight",
    "shucked_weight", "viscera_weight", "shell_weight", "rings",
)
# TALENT's `abalone`: rings 1-8 -> 0, 9-10 -> 1, 11-29 -> 2 (shares about 0.337/0.317/0.346).
_ABALONE_BINS = (9, 11)
_ABALONE_CLASS_NAMES = ("rings 1-8", "rings 9-10", "rings 11-29")



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
