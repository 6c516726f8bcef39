"""Command line: ``stablenca SUBCOMMAND``.

A thin layer: each subcommand (one module in :mod:`stablenca.commands`) parses its
arguments, calls one library function and prints. Every user error is one line on
stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
import warnings

from . import __version__
from .errors import (EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, INTERRUPTED_MESSAGE, TERMINATED_MESSAGE,
                     StableNCAError, StableNCAWarning)
from .records import TERMINATED, sigterm_as_interrupt
from .runtime.allocator import retain_freed_memory
from .runtime.numpy_dispatch import prefer_avx2_sorting

#: Subcommand modules, in the order ``--help`` lists them (the data flow).
SUBCOMMANDS = ("train", "diagnose", "replay", "check", "report", "plot", "study", "export_tensorboard")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: the problem and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"stablenca: error: {message}; fix: see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stablenca", description="Numerical-stability diagnostics for PyTorch losses "
                                                   "(flagship: ModernNCA on Abalone).")
    parser.add_argument("--version", action="version", version=f"stablenca {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"stablenca.commands.{name}").register(subparsers)
    return parser


def _one_line_warnings(show):
    """``warnings.showwarning`` that prints stablenca's own warnings as one line and passes others to ``show``."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, StableNCAWarning):
            print(f"stablenca: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def main(argv: list[str] | None = None) -> int:
    # Before the commands import numpy, which reads the setting once (numpy's AVX-512 sorting is
    # several times slower on AMD Zen 4; the recorder's quantiles use it). Nothing is computed differently.
    prefer_avx2_sorting()
    parser = build_parser()
    args = parser.parse_args(argv)
    # Training steps reuse the same large blocks; without this glibc returns them to the kernel and
    # every step page-faults them back (a fifth of a ModernNCA epoch's steps: bench/page_faults.py).
    # Nothing is computed differently.
    retain_freed_memory()
    try:
        with sigterm_as_interrupt(), warnings.catch_warnings():  # SIGTERM (torchrun, SLURM) as Ctrl-C
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return int(args.func(args) or 0)
    except StableNCAError as exc:
        print(f"stablenca: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if TERMINATED.is_set():
            print(TERMINATED_MESSAGE, file=sys.stderr)
            return EXIT_TERMINATED
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `stablenca ... | head`
        return 0


def run() -> None:
    """Console-script entry point."""
    code = main()
    # Interpreter shutdown walks every object still tracked (torch, matplotlib, ...: about 1 s after
    # diagnose); the process is ending, so take them out of the collector's reach first.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
