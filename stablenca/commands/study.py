"""``stablenca study``: the homework's comparison of ModernNCA and SeedNCA, over seeds, with an ablation."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import positive_int


def register(subparsers) -> None:
    from ..study.plan import DEFAULT_OUT, DEFAULT_SEEDS  # light: the study package loads its parts on use

    parser = subparsers.add_parser(
        "study", help="ModernNCA vs the student's SeedNCA on Abalone, over seeds, with an ablation",
        description="Train every row of the study once per seed (seeds 0..N-1 on the fixed split 0), "
                    "then write DIR/study.md (tables) and DIR/study.json (per-seed results).")
    parser.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS, metavar="N",
                        help=f"number of seeds, 0..N-1 (default {DEFAULT_SEEDS}, as TALENT)")
    parser.add_argument("--task", choices=("multiclass", "regression"), default="multiclass")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--jobs", type=positive_int, default=1, metavar="J",
                        help="worker processes (one thread each; results do not depend on J)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    parser.add_argument("--rows", nargs="+", default=None, metavar="NAME",
                        help="main-table rows to run (default all), e.g. modernnca_f32 seed_ratio knn3")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=None,
                        help="run the ablation walk (default: on for multiclass; not defined for regression)")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="train nothing: re-render DIR/study.md from a saved study.json (FILE)")
    parser.add_argument("--max-epochs", type=positive_int, default=None, metavar="M",
                        help="smoke tests only: cap every trained row at M epochs (numbers not comparable)")
    parser.set_defaults(func=run)


def run(args) -> int:
    # lazy: `stablenca --help` stays free of torch
    from ..study import format_table, load_study, run_study, summary_json, write_study

    if args.from_json is not None:
        study = load_study(args.from_json)
        md_path, _ = write_study(study, args.out)
        print(f"re-rendered {md_path} from {args.from_json} (no training)", file=sys.stderr)
        return 0
    study = run_study(seeds=args.seeds, task=args.task, out=args.out, jobs=args.jobs, rows=args.rows,
                      ablation=args.ablation, max_epochs=args.max_epochs, progress=True)
    if args.json:
        print(json.dumps(summary_json(study, args.out), allow_nan=False))
    else:
        print(format_table(study))
        print(f"wrote {args.out}/study.md and {args.out}/study.json in {study['wall_seconds']:.1f}s", file=sys.stderr)
    return 0
