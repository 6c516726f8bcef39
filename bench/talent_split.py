"""Write the embedded Abalone as TALENT-format split directories (the files both sides read).

``python bench/talent_split.py OUT [--split-seed 0] [--missing 0.05]`` writes ``OUT/abalone`` (3 classes,
TALENT's rings bins), ``OUT/abalone_reg`` (rings as a float) and ``OUT/abalone_bin`` (binclass:
rings >= 10, a target of our own, for TALENT's third task type), each with
``N_{train,val,test}.npy`` (the seven measurements), ``C_*.npy`` (sex, saved as TALENT
saves categorical columns: an object array of str, ``allow_pickle=True``), ``y_*.npy``
and ``info.json``. Rows are ordered by ``numpy.random.RandomState(split_seed).permutation``
and cut 2672/669/836 (TALENT's abalone sizes). The files are generated, never committed.

``--missing F`` blanks a fraction F of the feature cells (the embedded Abalone has none), drawn
with ``numpy.random.default_rng([split_seed, 1])``: a numerical cell becomes NaN, a sex cell a
float NaN in the object array (how pandas hands a missing string to ``np.save``). Both
libraries then fill them by their rules (TALENT's defaults: the training mean, a new category).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from stablenca.data import SPLITS, load_abalone

#: TALENT's abalone split sizes (train, val, test).
SIZES = (2672, 669, 836)


#: (our task, directory, TALENT's task_type); binclass is read from the regression table's rings.
DIRECTORIES = (("multiclass", "abalone", "multiclass"), ("regression", "abalone_reg", "regression"),
               ("binclass", "abalone_bin", "binclass"))
#: binclass: 1 for rings >= this (about half of the rows), else 0.
BINCLASS_RINGS = 10


def full_table(task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The embedded Abalone in its file order: numerical (n, 7), sex (n, 1) str, target (n,)."""
    if task == "binclass":
        x_num, x_cat, rings = full_table("regression")
        return x_num, x_cat, (rings >= BINCLASS_RINGS).astype(np.int64)
    raw = load_abalone(task=task)
    n = sum(raw.sizes().values())
    x_num, x_cat, y = np.empty((n, 7)), np.empty((n, 1), dtype=object), np.empty(n, dtype=raw.y["train"].dtype)
    for split in SPLITS:
        rows = raw.row_index[split]
        x_num[rows], x_cat[rows], y[rows] = raw.x_num[split], raw.x_cat[split], raw.y[split]
    return x_num, x_cat, y


def blank_cells(x_num: np.ndarray, x_cat: np.ndarray, fraction: float, split_seed: int) -> None:
    """Make a ``fraction`` of the cells missing, in place (numerical: NaN; categorical: a float NaN)."""
    rng = np.random.default_rng([split_seed, 1])
    x_num[rng.random(x_num.shape) < fraction] = np.nan
    x_cat[rng.random(x_cat.shape) < fraction] = float("nan")


def write_split(out: Path, *, split_seed: int = 0, missing: float = 0.0) -> dict[str, Path]:
    """Write the three directories under ``out``; return {task: directory}."""
    written = {}
    for task, name, task_type in DIRECTORIES:
        x_num, x_cat, y = full_table(task)
        if len(y) != sum(SIZES):
            raise SystemExit(f"the embedded Abalone has {len(y)} rows, not {sum(SIZES)}")
        if missing:
            blank_cells(x_num, x_cat, missing, split_seed)
        order = np.random.RandomState(split_seed).permutation(len(y))
        bounds = np.cumsum((0,) + SIZES)
        root = out / name
        root.mkdir(parents=True, exist_ok=True)
        for k, split in enumerate(SPLITS):
            rows = order[bounds[k]:bounds[k + 1]]
            np.save(root / f"N_{split}.npy", x_num[rows])
            sex = np.array([[v if isinstance(v, float) else str(v) for v in row] for row in x_cat[rows]], dtype=object)
            np.save(root / f"C_{split}.npy", sex, allow_pickle=True)
            np.save(root / f"y_{split}.npy", y[rows])
        (root / "info.json").write_text(json.dumps(
            {"name": name, "task_type": task_type, "n_num_features": 7, "n_cat_features": 1,
             "train_size": SIZES[0], "val_size": SIZES[1], "test_size": SIZES[2],
             "source": f"stablenca embedded Abalone, RandomState({split_seed}).permutation"
                       + (f", {missing} of the feature cells blanked" if missing else "")}, indent=1))
        written[task] = root
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--missing", type=float, default=0.0, help="fraction of feature cells to blank (default 0)")
    args = parser.parse_args()
    if not 0.0 <= args.missing < 1.0:
        parser.error("--missing must be in [0, 1)")
    for task, root in write_split(args.out, split_seed=args.split_seed, missing=args.missing).items():
        print(f"{task}: {root}")


if __name__ == "__main__":
    main()
