"""Do TALENT's ModernNCA and stablenca compute the same training? Weights after K epochs, in lockstep.

``python bench/talent_lockstep.py [--talent /work/talent] [--epochs 1,4,16] [--seed 0] [--missing 0.05]``

For each K, TALENT trains K epochs (``max_epoch=K``, its own code), and stablenca trains
K epochs from TALENT's initial weights with TALENT's random stream (see
``talent_side_by_side.py --mode lockstep``): same batches, same sampled candidates. The
table gives, per parameter, ``max |w_TALENT - w_stablenca| / max |w_TALENT|``.

* float64 (TALENT's default precision): the two agree to rounding, so any difference in
  the algorithm (the candidate pool, the self mask, the loss, the optimizer, the RNG use)
  would show as an O(1) difference after one epoch.
* float32: the two sum in a different order (one embedding call for batch and
  candidates here, two in TALENT; the gradient of the shared layers accumulates in one
  product instead of two), so they differ by rounding from the first step, and Adam's
  normalised update amplifies the difference on coordinates whose gradient is near zero.

``--missing F`` blanks a fraction F of the feature cells in the files (``talent_split.py``): each
library then fills them by its own code, so the float64 rows also check the filling.

K is kept below TALENT's early stop (it keeps its last weights, stablenca runs without
patience), so both are compared after exactly K epochs.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from talent_side_by_side import TASK_DIRS, TalentStream, import_talent, talent_args  # noqa: E402
from talent_split import write_split  # noqa: E402
from stablenca.training import Trainer, TrainConfig  # noqa: E402


def relative_differences(talent, data_root: Path, name: str, epochs: int, seed: int, dtype: str,
                         model_path: Path) -> dict[str, float]:
    args = talent_args(talent, data_root, name, model_path, use_float=dtype == "float32")
    args.max_epoch, args.seed = epochs, seed
    train_val, _, info = talent.get_dataset(name, str(data_root))
    talent.set_seeds(seed)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        method = talent.Method(args, info["task_type"] == "regression")
        method.fit(train_val, info)
    theirs = {k: v.detach() for k, v in method.model.state_dict().items()}
    trainer = Trainer(TrainConfig(data=str(data_root / name), seed=seed, epochs=epochs, patience=None, dtype=dtype),
                      hooks=[TalentStream()])
    trainer.model.load_state_dict(method.initial_state)
    trainer.generator.set_state(method.rng_after_init)
    trainer.fit()
    ours = trainer.model.state_dict()
    return {k: float((theirs[k] - ours[k]).abs().max() / theirs[k].abs().max()) for k in theirs}


def main(argv=None) -> None:
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--talent", type=Path, default=None)
    parser.add_argument("--epochs", default="1,4,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="multiclass,regression")
    parser.add_argument("--missing", type=float, default=0.0, help="fraction of feature cells blanked (default 0)")
    args = C.parse(parser, argv, default_threads=2)
    import os

    talent = import_talent(args.talent or Path(os.environ.get("STABLENCA_TALENT", "/work/talent")))
    epochs = [int(e) for e in args.epochs.split(",")] if not args.quick else [1]
    info = C.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="talent_lockstep_") as tmp:
        data_root = Path(tmp) / "data"
        write_split(data_root, missing=args.missing)
        for task in args.tasks.split(","):
            for dtype in ("float64", "float32"):
                for k in epochs:
                    diff = relative_differences(talent, data_root, TASK_DIRS[task], k, args.seed, dtype,
                                                Path(tmp) / "models")
                    rows.append([task, dtype, k] + [f"{diff[name]:.1e}" for name in sorted(diff)])
                    C.stderr(f"[{task} {dtype} {k} epochs] {diff}")
                    names = sorted(diff)
    body = ("max |w_TALENT − w_stablenca| / max |w_TALENT| per parameter after K epochs from the same start "
            "and random stream.\n\n" + C.md_table(["task", "dtype", "K"] + [f"`{n}`" for n in names], rows))
    command = C.command_line("talent_lockstep.py", args, f" --epochs {args.epochs} --seed {args.seed}"
                             + (f" --tasks {args.tasks}" if args.tasks != "multiclass,regression" else "")
                             + (f" --missing {args.missing}" if args.missing else ""))
    C.emit(C.section("TALENT lockstep: the same training?", command, info, body), {"rows": rows}, args)


if __name__ == "__main__":
    main()
