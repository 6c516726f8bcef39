"""``stablenca check``: sweep the distance scale, measure bits of error, judge a stability contract."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import EXIT_CONTRACT, EXIT_OK, ConfigError
from ..floats import DTYPE_NAMES
from ._args import nonnegative_int, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="measure where each loss breaks as the distance scale grows (and judge a contract)",
        description="Sweep the distance scale log-uniformly from 1e-3 to 1e4 over generated batches and report, "
                    "per loss x dtype, the fraction of finite results, the bits of error of the loss and of its "
                    "gradient against a high-precision (mpmath) reference, and the breakdown scale. With "
                    "--contract, exit 1 when the measurements violate the contract. See docs/check.md.")
    parser.add_argument("--loss", nargs="+", default=None, metavar="NAME",
                        help="ratio, ratio_eps, difference, nca_logspace, modernnca, or package.module:function "
                             "(default: the contract's losses, else the five built-ins)")
    parser.add_argument("--dtype", nargs="+", default=None, choices=DTYPE_NAMES, metavar="DTYPE",
                        help=f"any of {', '.join(DTYPE_NAMES)} (default: the contract's dtypes, else all four)")
    parser.add_argument("--contract", default=None, metavar="FILE",
                        help="a stability contract (JSON); 'default' is the shipped one. Exit 1 on a violation")
    parser.add_argument("--seed", type=nonnegative_int, default=None,
                        help="seed of the generated batches (default: the contract's, else 0)")
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="batches per scale and population (default: the contract's, else 3)")
    parser.add_argument("--case", nargs="+", default=None, metavar="NAME",
                        help="check cases of the library instead of losses: one_minus_exp, log_softmax, "
                             "bce_sigmoid, ce_on_probabilities (default dtypes float32 float64; docs/cases.md)")
    parser.add_argument("--figures", default=None, metavar="DIR",
                        help="with --case: also write the error plot case-NAME.png into DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.case:
        return run_from_args(args)
    from ..check import run_check  # lazy: `stablenca --help` builds every parser, without torch or mpmath

    progress = (lambda text: print(f"\rstablenca check: {text}   ", end="", file=sys.stderr, flush=True)) \
        if sys.stderr.isatty() else None
    report = run_check(args.loss, args.dtype, contract=args.contract, seed=args.seed, batches=args.batches,
                       progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.format_table())
    return EXIT_OK if report.ok else EXIT_CONTRACT


def run_cases(names: Sequence[str], dtypes: Sequence[str] | None = None, *, as_json: bool = False,
              figures: str | Path | None = None) -> int:
    """What ``stablenca check --case NAME...`` does: print each case, return 0 if all are as documented, else 1."""
    from ..cases import get_case  # lazy, as run_check above
    from ..cases.check import check_case, format_case_table  # lazy, as above

    for name in names:
        get_case(name)  # an unknown name is a usage error before anything runs
    results = [check_case(name, dtypes, figures=figures) for name in names]
    if as_json:
        print(json.dumps(results[0] if len(results) == 1 else {"command": "check", "cases": results,
                                                               "ok": all(r["ok"] for r in results)}))
    else:
        print("\n\n".join(format_case_table(r) for r in results))
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_CONTRACT


def run_from_args(args) -> int:
    """The ``check`` subcommand's ``--case`` branch, from its parsed arguments.

    Reads ``args.case`` (names), ``args.dtype`` (None: float32 and float64), ``args.json``
    and, when present, ``args.figures`` (a directory for ``case-NAME.png``). ``--loss``
    and ``--contract`` measure losses over the distance scale, a different sweep: combining
    them with ``--case`` is a usage error.
    """
    if getattr(args, "loss", None) or getattr(args, "contract", None):
        raise ConfigError("--case cannot be combined with --loss or --contract",
                          fix="run `stablenca check --case NAME` and `stablenca check --loss ...` separately")
    return run_cases(args.case, getattr(args, "dtype", None), as_json=bool(getattr(args, "json", False)),
                     figures=getattr(args, "figures", None))
