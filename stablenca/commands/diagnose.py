"""``stablenca diagnose``: train with probes and the sentinel, then write records, summary and report."""

from __future__ import annotations

import json
import sys

from ..errors import EXIT_INTERRUPTED, EXIT_TERMINATED, INTERRUPTED_MESSAGE, TERMINATED_MESSAGE
from ._args import add_data_options, add_training_options, config_from_args, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="train with the recorder and NaN/Inf provenance; write records, summary and report",
        description="By default: the student's SeedNCA with the ratio loss, and ModernNCA with every loss "
                    "formulation, on the embedded Abalone (3 classes).")
    parser.add_argument("--out", default="runs/diagnose", help="output directory (default: runs/diagnose)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier diagnose in --out (otherwise refuse, so runs never mix)")
    parser.add_argument("--model", nargs="+", choices=("modernnca", "seed"), default=None)
    parser.add_argument("--loss", nargs="+", default=None,
                        help="formulations to run (ratio ratio_eps difference nca_logspace modernnca, "
                             "or package.module:function)")
    parser.add_argument("--mode", choices=("sentinel", "full", "off"), default="sentinel",
                        help="sentinel: cheap checks, trace the first bad step (default); full: trace every step")
    parser.add_argument("--no-report", action="store_true", help="skip the report and figures")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="runs trained at once in worker processes, torch's threads shared among them "
                             "(default: one per thread; a run's numbers depend on its thread count only)")
    add_training_options(parser)
    add_data_options(parser)
    parser.add_argument("--json", action="store_true", help="print summary.json on stdout")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..runtime.diagnose import diagnose  # lazy: `stablenca --help` stays free of torch

    base = config_from_args(args, model="modernnca", loss=None)
    log = None if args.json else (lambda line: print(line, flush=True))
    summary = diagnose(out=args.out, models=args.model, loss_names=args.loss, base=base, mode=args.mode,
                       force=args.force, report=not args.no_report, progress=sys.stderr.isatty(), log=log,
                       jobs=args.jobs)
    if args.json:
        print(json.dumps(summary, allow_nan=True))
    if summary["interrupted"] and summary.get("signal") == "SIGTERM":
        print(TERMINATED_MESSAGE, file=sys.stderr)
        return EXIT_TERMINATED
    if summary["interrupted"]:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
