"""Many processes: every rank of a ``torch.distributed`` job agrees to stop at the same step.

A healthy step costs one ``all_reduce`` of a two-element integer flag (MAX over the
ranks: "did any rank fail", "did any rank get SIGTERM") and nothing else. Only on the
failing step do the ranks exchange more: each replays its own step without gradient
synchronisation (``DistributedDataParallel.no_sync``), so the tracer sees the rank's
local computation, and the findings are gathered with ``all_gather_object`` so that
rank 0 can name the first failing rank. The transport is ``torch.distributed``'s own
(gloo on CPU, NCCL on GPUs); under ``torchrun`` the same code runs on one machine or many.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def active() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if not active():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class Agreement:
    """The one collective of a healthy step, and the exchanges of the failing one."""

    def __init__(self) -> None:
        self.rank, self.world_size = rank_and_world()
        backend = torch.distributed.get_backend()
        # NCCL reduces CUDA tensors only; gloo (CPU) reduces CPU tensors.
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self._flag = torch.zeros(2, dtype=torch.int32, device=self.device)

    def agree(self, failed: bool, terminated: bool) -> tuple[bool, bool]:
        """(any rank failed, any rank was asked to stop): one ``all_reduce`` of a 2-int flag."""
        self._flag[0], self._flag[1] = int(failed), int(terminated)
        torch.distributed.all_reduce(self._flag, op=torch.distributed.ReduceOp.MAX)
        any_failed, any_terminated = self._flag.tolist()
        return bool(any_failed), bool(any_terminated)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order; only after a failure."""
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        torch.distributed.barrier()


def no_gradient_sync(model: torch.nn.Module):
    """``model.no_sync()`` for a DistributedDataParallel model (a replay must not all-reduce)."""
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


def first_failing_rank(reports: list[dict[str, Any]]) -> int | None:
    """The lowest rank whose own replay found a non-finite op, else the lowest whose step was not finite.

    Under DDP every rank sees the all-reduced non-finite gradient, but only the rank whose
    data made it has a finding in its own (unsynchronised) replay.

    >>> first_failing_rank([{"finding": None, "finite": False}, {"finding": {"op": "log"}, "finite": False}])
    1
    >>> first_failing_rank([{"finding": None, "finite": True}, {"finding": None, "finite": False}])
    1
    """
    for wanted in (lambda r: r.get("finding") is not None, lambda r: r.get("finite") is False):
        for rank, report in enumerate(reports):
            if wanted(report):
                return rank
    return None
