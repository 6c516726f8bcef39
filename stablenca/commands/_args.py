"""Argument types and options shared by several subcommands."""

from __future__ import annotations

import argparse
import math

from ..floats import TRAIN_DTYPES


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind, what: str, ok, bound: str):
    """An argparse type: a finite ``kind`` that satisfies ``ok``, else "VALUE must be BOUND"."""
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return value

    return parse


positive_int = _bounded(int, "an integer", lambda v: v >= 1, ">= 1")
nonnegative_int = _bounded(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _bounded(float, "a number", lambda v: v > 0, "> 0")
nonnegative_float = _bounded(float, "a number", lambda v: v >= 0, ">= 0")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=None, metavar="PATH",
                       help="a TALENT-format directory or a CSV file (default: the embedded Abalone)")
    group.add_argument("--target", default=None, help="the target column of a CSV file")
    group.add_argument("--task", choices=("multiclass", "regression"), default=None,
                       help="default: what the data declares (info.json's task_type; multiclass for Abalone)")
    group.add_argument("--split-seed", type=nonnegative_int, default=0, help="seed of the 64/16/20 split")
    group.add_argument("--numerical", choices=("standard", "quantile"), default="standard",
                       help="preprocessing of numerical features, fitted on train")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults depend on --model)")
    group.add_argument("--epochs", type=positive_int, default=None)
    group.add_argument("--seed", type=nonnegative_int, default=0)
    group.add_argument("--dtype", choices=TRAIN_DTYPES, default="float32")
    group.add_argument("--batch-size", type=positive_int, default=None)
    group.add_argument("--lr", type=positive_float, default=None)
    group.add_argument("--weight-decay", type=nonnegative_float, default=None)
    group.add_argument("--patience", type=nonnegative_int, default=None,
                       help="early stopping patience in epochs (ModernNCA default 20)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    group.add_argument("--kernel", choices=("eager", "fused"), default=None,
                       help="the modernnca and nca_logspace losses: fused (closed-form backward, faster) or eager "
                            "(autograd through every op); what probes see is the same bits, and so is the loss "
                            "(nca_logspace's: within rounding)")


def config_from_args(args: argparse.Namespace, *, model: str, loss: str | None):
    """A :class:`~stablenca.training.trainer.TrainConfig` from the shared options."""
    from ..training.trainer import TrainConfig  # lazy: `stablenca --help` stays free of torch

    return TrainConfig(
        model=model, loss=loss, task=args.task, epochs=args.epochs, seed=args.seed, dtype=args.dtype,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience="default" if args.patience is None else args.patience, device=args.device,
        data=args.data, target=args.target, split_seed=args.split_seed, numerical=args.numerical,
        **({"kernel": args.kernel} if getattr(args, "kernel", None) else {}),
    )
