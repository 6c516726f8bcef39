"""bench/talent_split.py writes what both libraries read: the three task types, and missing cells as
pandas leaves them (NaN in N_*.npy, a float NaN in C_*.npy's object array), which stablenca fills."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from stablenca import data as D
from stablenca.errors import StableNCAWarning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import talent_split  # noqa: E402


def test_split_directories_load_with_their_declared_tasks(tmp_path):
    written = talent_split.write_split(tmp_path)
    assert sorted(written) == ["binclass", "multiclass", "regression"]
    sizes = dict(zip(D.SPLITS, talent_split.SIZES))
    for task, root in written.items():
        raw = D.load_talent_dir(root)
        assert raw.sizes() == sizes
        assert raw.task == ("regression" if task == "regression" else "multiclass")
    binary = D.load_talent_dir(written["binclass"])
    rings = D.load_talent_dir(written["regression"])
    assert binary.n_classes == 2
    for split in D.SPLITS:  # the same rows, in the same order, labelled rings >= 10
        np.testing.assert_array_equal(binary.y[split], rings.y[split] >= talent_split.BINCLASS_RINGS)


def test_blanked_cells_are_filled_and_counted(tmp_path):
    root = talent_split.write_split(tmp_path, missing=0.05)["multiclass"]
    numbers = {s: np.load(root / f"N_{s}.npy") for s in D.SPLITS}
    sex = {s: np.load(root / f"C_{s}.npy", allow_pickle=True) for s in D.SPLITS}  # our own files
    n_num = sum(int(np.isnan(x).sum()) for x in numbers.values())
    n_cat = sum(sum(isinstance(v, float) for v in x.ravel()) for x in sex.values())
    cells = sum(x.size for x in numbers.values())
    assert 0.04 * cells < n_num < 0.06 * cells and n_cat > 0  # about 5 %: 4,177 rows x 7 cells
    with pytest.warns(StableNCAWarning, match=f"filled {n_num} missing numerical .* {n_cat} missing categorical"):
        raw = D.load_talent_dir(root)
    assert all(np.isfinite(raw.x_num[s]).all() for s in D.SPLITS)
    assert sum(int((raw.x_cat[s] == D.MISSING_CATEGORY).sum()) for s in D.SPLITS) == n_cat
    assert D.prepare(raw).n_onehot == 4  # F, I, M and the missing category, seen in training
