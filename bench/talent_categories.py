"""How TALENT and stablenca read the values a categorical column can hold; one run, no training.

``python bench/talent_categories.py [--talent /work/talent]``

TALENT saves categorical columns as object arrays (``C_*.npy``), whose elements can be strings,
numbers, NaN or None, and reads them with ``data_nan_process`` (``astype(str)``, then its missing
spellings become ``___null___``). This writes one such column holding each kind of value twice,
reads it with TALENT's ``data_nan_process`` (its defaults) and with ``stablenca.data.load_talent_dir``,
and reports each value's category name on both sides and whether the two split the cells into the
same categories (what the one-hot encoding sees; the names themselves are never used). It also
reports what each does with None in a numerical object array (``N_*.npy``).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
from talent_side_by_side import add_talent_option, import_talent  # noqa: E402
from stablenca import data as D  # noqa: E402
from stablenca.errors import StableNCAWarning  # noqa: E402

#: (what the cell holds, the Python value saved in the object array)
VALUES = [("'a'", "a"), ("'b'", "b"), ("'None'", "None"), ("None", None), ("2", 2), ("2.0", 2.0), ("True", True),
          ("float NaN", math.nan), ("'nan'", "nan"), ("'NaN'", "NaN"), ("''", "")]


def write_directory(root: Path) -> None:
    """A multiclass TALENT directory whose one categorical column holds every value of VALUES twice in each split."""
    column = np.empty((2 * len(VALUES), 1), dtype=object)
    column[:, 0] = [value for _, value in VALUES for _ in range(2)]
    numbers = np.arange(len(column), dtype=np.float64)[:, None]
    root.mkdir(parents=True)
    for split in D.SPLITS:
        np.save(root / f"C_{split}.npy", column, allow_pickle=True)
        np.save(root / f"N_{split}.npy", numbers)
        np.save(root / f"y_{split}.npy", np.arange(len(column)) % 2)
    (root / "info.json").write_text(json.dumps({"task_type": "multiclass", "n_num_features": 1,
                                                "n_cat_features": 1}))


def load_quietly(root: Path):
    """``load_talent_dir`` without its warnings about the filled cells (every cell here is deliberate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StableNCAWarning)
        return D.load_talent_dir(root)


def same_partition(a: list[str], b: list[str]) -> bool:
    """Whether two namings put the same cells together."""
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    add_talent_option(parser)
    args = C.parse(parser, argv)
    import_talent(args.talent)
    from TALENT.model.lib.data import data_nan_process

    info = C.machine_info()
    with tempfile.TemporaryDirectory(prefix="talent_categories_") as tmp:
        root = Path(tmp) / "d"
        write_directory(root)
        ours = load_quietly(root).x_cat["train"][:, 0].tolist()
        column = np.load(root / "C_train.npy", allow_pickle=True)
        _, theirs, *_ = data_nan_process({"train": np.load(root / "N_train.npy")}, {"train": column}, "mean", "new")
        theirs = theirs["train"][:, 0].tolist()

        numbers = np.array([[1.0], [None], [3.0]], dtype=object)
        try:
            filled, *_ = data_nan_process({"train": numbers}, None, "mean", "new")
            talent_numbers = f"filled: {filled['train'][:, 0].tolist()}"
        except Exception as e:  # noqa: BLE001 - reported, whatever it is
            talent_numbers = f"raises {type(e).__name__}: {e}"
        np.save(root / "N_train.npy", np.concatenate([numbers, np.zeros((len(column) - 3, 1))]).astype(object),
                allow_pickle=True)
        our_numbers = load_quietly(root).x_num["train"][:3, 0].tolist()

    rows = [[label, f"`{t}`", f"`{o}`"] for (label, _), t, o in zip(VALUES, theirs[::2], ours[::2])]
    partition = same_partition(theirs, ours)
    body = [f"One categorical column holding each value twice, read by TALENT's `data_nan_process` (defaults: "
            f"`cat_nan_policy` 'new') and by `stablenca.data.load_talent_dir`:", "",
            C.md_table(["cell", "TALENT's category", "stablenca's category"], rows), "",
            f"Same categories (the same cells together, the same cells apart): **{'yes' if partition else 'no'}**.", "",
            f"None in a numerical object array `[1.0, None, 3.0]`: TALENT {talent_numbers}; stablenca "
            f"fills it: {our_numbers}."]
    command = C.command_line("talent_categories.py", args)
    C.emit(C.section("Categorical values as TALENT and stablenca read them", command, info, "\n".join(body)),
           {"talent": theirs, "stablenca": ours, "same_partition": partition, "talent_numbers": talent_numbers,
            "stablenca_numbers": our_numbers}, args)


if __name__ == "__main__":
    main()
