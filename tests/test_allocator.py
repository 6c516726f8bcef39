"""The CLI keeps freed memory for reuse: training steps stop page-faulting their tensors back in."""

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from stablenca import cli
from stablenca.runtime import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# glibc's own account of a 30 MiB block (a 1024 x 1848 step's matrices are 7.6 MB each): mallinfo2
# reads the allocator's state, so unlike page-fault counts it does not depend on the kernel's
# reclaim (kdamond paging out idle heap made a fault-count version of this test flaky under load).
BLOCK_ACCOUNT = """
import ctypes, sys, torch
from stablenca.runtime.allocator import retain_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
before = libc.mallinfo2()
block = torch.ones(30 * 2**18)
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(applied, during.hblkhd - before.hblkhd, after.fordblks)
"""
MIB = 2**20


def _account(mode: str) -> tuple[str, int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "STABLENCA_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", BLOCK_ACCOUNT, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1]), int(out[2])


def _has_mallinfo2() -> bool:
    try:
        return GLIBC and hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="mallopt/mallinfo2 are glibc's (>= 2.33); elsewhere "
                                                "retain_freed_memory() returns False")
def test_a_freed_step_sized_block_stays_with_the_process_for_reuse():
    applied, mapped, free_after = _account("retain")
    assert applied == "True"
    # From the heap (no mmap of its own), and still there, free for the next step, after it is freed.
    assert mapped < MIB
    assert free_after >= 30 * MIB
    # glibc's defaults: the same block is a fresh mmap, unmapped on free, faulted in again next time
    # (measured on whole training steps: bench/talent_epoch.py --allocator system, reports/benchmarks.md).
    _, mapped, free_after = _account("system")
    assert mapped >= 30 * MIB
    assert free_after < 30 * MIB


def test_opting_out_or_glibc_variables_leave_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("STABLENCA_ALLOCATOR", "system")
    assert allocator.retain_freed_memory() is False
    monkeypatch.delenv("STABLENCA_ALLOCATOR")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.retain_freed_memory() is False


def test_the_cli_sets_it_before_running_a_command(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["report", str(tmp_path / "missing")]) == 2  # a bad input still exits cleanly
    assert calls == [True]
