"""``stablenca export-tensorboard RUN_DIR``: per-batch records as TensorBoard scalars."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-tensorboard", help="write the per-batch records of a run set as TensorBoard event files",
        description="Reads every RUN_DIR/<run>/records.jsonl (stablenca diagnose, a watch with out=, the "
                    "Lightning callback) and writes LOGDIR/<run>/events.* : finite values as scalars, NaN and "
                    "Inf as their own series (nan/<key>, inf/<key>, nonfinite/*), never into a histogram. "
                    "View with: tensorboard --logdir LOGDIR")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the output directory of a stablenca run set")
    parser.add_argument("--logdir", default=None, help="where to write (default: RUN_DIR/tensorboard)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..integrations.tensorboard import export  # lazy: `stablenca --help` stays free of torch

    for path in export(args.run_dir, args.logdir):
        print(path)
    return 0
