"""Half precision: would a step that overflowed under ``torch.autocast`` be finite in float32?

:func:`autocast_disabled` re-runs a user's closure with every ``torch.autocast`` it
enters switched off, so the same code runs in the model's own dtype (float32). The
closure is not changed: ``torch.autocast.__enter__`` sets the state through
``torch.set_autocast_enabled``, which is swapped for the duration of the block.
(Counterfactual verification in the tracer, issue 13, had not landed when this was
written; this is the small stand-in the issue allows.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

HALF_DTYPES = ("float16", "bfloat16")


@contextlib.contextmanager
def autocast_disabled() -> Iterator[dict[str, bool]]:
    """Inside the block ``torch.autocast(...)`` is a no-op; ``seen["autocast"]`` says whether one was entered."""
    seen = {"autocast": False}
    original = torch.set_autocast_enabled

    def never(*args) -> None:
        enabled = args[-1]
        seen["autocast"] |= bool(enabled)
        original(*args[:-1], False)

    torch.set_autocast_enabled = never
    try:
        yield seen
    finally:
        torch.set_autocast_enabled = original


def finding_dtype(finding) -> str | None:
    """The dtype of the first non-finite op's output (``float16`` for an op run in half precision)."""
    if finding is None:
        return None
    output = finding.output if isinstance(finding.output, dict) else {}
    return output.get("dtype")
