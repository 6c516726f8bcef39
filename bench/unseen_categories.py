"""What the unseen-category NOTE[DIFF] in ``stablenca.data.prepare`` changes: test rows whose category
never occurs in training.

``python bench/unseen_categories.py [--seeds 10] [--missing 0.05]``

TALENT (``cat_policy tabr_ohe``) gives a validation or test category that training never saw the
first training row's category; stablenca gives it an all-zero one-hot row. The files are
``talent_split.py``'s multiclass Abalone with ``--missing`` of the cells blanked everywhere but in
the training split's sex column, so the missing category (``___null___``) occurs in validation and
test only. For each seed stablenca trains once (its own encoding of the validation split), then
predicts the test split twice: with the all-zero rows and with TALENT's rule. The difference is the
effect of the encoding alone, on the whole test split and on its rows with the unseen category.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common as C  # noqa: E402
import talent_split  # noqa: E402
from stablenca import data as D  # noqa: E402
from stablenca.errors import StableNCAWarning  # noqa: E402
from stablenca.training import Trainer, TrainConfig  # noqa: E402


def talent_rule(raw: D.RawDataset) -> D.RawDataset:
    """``raw`` with every validation/test category unseen in training replaced by the first training row's."""
    for split in ("val", "test"):
        for column in range(raw.x_cat[split].shape[1]):
            values = raw.x_cat[split][:, column]
            values[~np.isin(values, raw.x_cat["train"][:, column])] = raw.x_cat["train"][0, column]
    return raw


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--missing", type=float, default=0.05)
    args = C.parse(parser, argv, default_threads=2)
    seeds = 2 if args.quick else args.seeds
    info = C.machine_info()
    warnings.simplefilter("ignore", StableNCAWarning)
    with tempfile.TemporaryDirectory(prefix="unseen_categories_") as tmp:
        blanked = talent_split.write_split(Path(tmp) / "blanked", missing=args.missing)["multiclass"]
        clean = talent_split.write_split(Path(tmp) / "clean")["multiclass"]
        shutil.copy(clean / "C_train.npy", blanked / "C_train.npy")  # training sees no missing category
        raw = D.load_talent_dir(blanked)
        ours, theirs = D.prepare(raw), D.prepare(talent_rule(D.load_talent_dir(blanked)))
    unseen = raw.x_cat["test"][:, 0] == D.MISSING_CATEGORY
    truth = ours.y["test"]
    rows = []
    for seed in range(seeds):
        trainer = Trainer(TrainConfig(seed=seed), data=ours)
        trainer.fit()
        predicted = {}
        for name, data in (("all-zero", ours), ("TALENT's rule", theirs)):
            trainer.data = data  # the same training rows, only the queries' encoding differs
            predicted[name] = trainer.predict("test").argmax(1)
        rows.append([seed] + [f"{(predicted[n] == truth).mean():.4f}" for n in predicted]
                    + [f"{(predicted[n][unseen] == truth[unseen]).mean():.3f}" for n in predicted])
        C.stderr(f"[seed {seed}] {rows[-1][1:]}")
    overall = np.array([[float(r[1]), float(r[2])] for r in rows])
    on_unseen = np.array([[float(r[3]), float(r[4])] for r in rows])
    body = (f"Multiclass Abalone, {args.missing:.0%} of the cells blanked outside the training split's sex column: "
            f"{int(unseen.sum())} of {len(unseen)} test rows hold the unseen category. stablenca trained once per "
            f"seed ({seeds} seeds, float32, its defaults), test predicted with each encoding.\n\n"
            + C.md_table(["seed", "test accuracy, all-zero (stablenca)", "test accuracy, TALENT's rule",
                          "on the unseen rows, all-zero", "on the unseen rows, TALENT's rule"], rows)
            + f"\nMean over seeds: test accuracy {overall[:, 0].mean():.4f} (all-zero) against "
              f"{overall[:, 1].mean():.4f} (TALENT's rule), difference {np.mean(overall[:, 0] - overall[:, 1]):+.4f}; "
              f"on the unseen rows {on_unseen[:, 0].mean():.3f} against {on_unseen[:, 1].mean():.3f}.\n")
    command = C.command_line("unseen_categories.py", args, f" --seeds {seeds} --missing {args.missing}")
    C.emit(C.section("Categories unseen in training: all-zero rows against TALENT's rule", command, info, body),
           {"rows": rows, "unseen_rows": int(unseen.sum())}, args)


if __name__ == "__main__":
    main()
