"""The one error type of stablenca, and the CLI exit codes.

Every problem a user can cause (bad data, bad arguments, a bad capsule, a user
loss that cannot be imported) raises :class:`StableNCAError` (or a subclass)
whose message is one line: what is wrong, then how to fix it. The CLI turns it
into that line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
#: A stability contract was violated (``stablenca check --contract``).
EXIT_CONTRACT = 1
#: Bad input: the message names the problem and the fix.
EXIT_USAGE = 2
#: Interrupted by SIGINT; what was recorded is kept.
EXIT_INTERRUPTED = 130
#: What the CLI prints on stderr when Ctrl-C ended a command.
INTERRUPTED_MESSAGE = "stablenca: interrupted; what was recorded is kept"
#: Stopped by SIGTERM (torchrun, SLURM, Kubernetes), handled like Ctrl-C: 128 + 15, as a shell reports it.
EXIT_TERMINATED = 143
TERMINATED_MESSAGE = "stablenca: terminated (SIGTERM); what was recorded is kept"


class StableNCAError(Exception):
    """A problem with the user's input, with a one-line message and its fix.

    >>> err = StableNCAError("batch_size=1 is too small", fix="use --batch-size 2 or more")
    >>> str(err)
    'batch_size=1 is too small; fix: use --batch-size 2 or more'
    """

    exit_code = EXIT_USAGE

    def __init__(self, problem: str, *, fix: str | None = None) -> None:
        problem = " ".join(str(problem).split())  # always one line
        self.problem = problem
        self.fix = None if fix is None else " ".join(str(fix).split())
        super().__init__(problem if self.fix is None else f"{problem}; fix: {self.fix}")


class StableNCAWarning(UserWarning):
    """Something stablenca did on the user's behalf that changes what they gave (one line); the CLI
    prints it as ``stablenca: warning: ...``.

    >>> str(StableNCAWarning("filled 3 missing values"))
    'filled 3 missing values'
    """


class DataError(StableNCAError):
    """A data file or directory cannot be used as given."""


class ConfigError(StableNCAError):
    """An argument or a combination of arguments is invalid."""


class CapsuleError(StableNCAError):
    """A capsule file is missing, truncated or not a capsule."""


class UserLossError(StableNCAError):
    """A user loss (``module:function``) cannot be imported or has the wrong signature."""


class OutputError(StableNCAError):
    """An output directory or file cannot be written."""


class ContractError(StableNCAError):
    """A stability contract file is malformed."""
