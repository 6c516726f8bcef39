"""``stablenca plot RUN_DIR``: redraw the figures of a diagnose output from the records."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw the figures of a diagnose output into RUN_DIR/figures/ (no retraining)",
        description="Timeline, gradient flow and root-cause chain per run, the failure domain of the ratio "
                    "loss, and (with a check JSON) bits of error against the distance scale, all drawn from "
                    "what `stablenca diagnose` recorded. See docs/report.md.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of stablenca diagnose")
    parser.add_argument("--check", default=None, metavar="FILE",
                        help="the output of `stablenca check --json` (default: RUN_DIR/check.json when it exists)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..report.figures import plot_all  # lazy: `stablenca --help` stays free of torch

    for figure in plot_all(args.run_dir, args.check):
        print(figure.path)
    return 0
