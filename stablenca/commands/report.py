"""``stablenca report RUN_DIR``: rewrite report.md, report.zh.md and the figures from the records."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write report.md, report.zh.md and the figures of a diagnose output (no retraining)",
        description="Reads RUN_DIR/summary.json and every RUN_DIR/<run>/records.jsonl written by "
                    "`stablenca diagnose`, draws the figures into RUN_DIR/figures/ and writes the English "
                    "(report.md) and Chinese (report.zh.md) report, explained with this run's numbers. "
                    "Nothing is retrained. See docs/report.md.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of stablenca diagnose")
    parser.add_argument("--check", default=None, metavar="FILE",
                        help="the output of `stablenca check --json` for the error-versus-scale figure "
                             "(default: RUN_DIR/check.json when it exists)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..report import build_report  # lazy: `stablenca --help` stays free of torch

    for path in build_report(args.run_dir, check_path=args.check):
        print(path)
    return 0
