"""``stablenca train``: train one model with one loss formulation."""

from __future__ import annotations

import json
import sys

from ..errors import EXIT_INTERRUPTED, INTERRUPTED_MESSAGE
from ._args import add_data_options, add_training_options, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train one model with one loss formulation",
                                   description="Train ModernNCA or the student's SeedNCA with one loss.")
    parser.add_argument("--model", choices=("modernnca", "seed"), default="modernnca")
    parser.add_argument("--loss", default=None,
                        help="ratio, ratio_eps, difference, nca_logspace, modernnca, or package.module:function "
                             "(default: modernnca for ModernNCA, ratio for seed)")
    add_training_options(parser)
    add_data_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..training.trainer import train  # lazy: `stablenca --help` stays free of torch

    config = config_from_args(args, model=args.model, loss=args.loss)
    result = train(config, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        where = f" at epoch {result.diverged_at['epoch']}, step {result.diverged_at['step']}" if result.diverged else ""
        metrics = " ".join(f"{k}={v:.4f}" for k, v in result.test.items())
        print(f"{result.model}/{result.loss} ({result.dtype}): {result.status}{where}; "
              f"{result.epochs_run} epochs in {result.train_seconds:.1f}s; test {metrics}")
    if result.status == "interrupted":
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
