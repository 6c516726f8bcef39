"""The CLI keeps freed memory for reuse: training steps stop page-faulting their tensors back in."""

import os
import platform
import subprocess
import sys

import pytest

from stablenca import cli
from stablenca.runtime import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Minor page faults of ModernNCA training steps after three warm-up steps, in a fresh interpreter.
STEPS_FAULTS = """
import resource, sys, torch
from stablenca.runtime.allocator import retain_freed_memory
from stablenca.training import StepContext, Trainer, TrainConfig
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
trainer = Trainer(TrainConfig(seed=0, epochs=1, patience=None))
batches = trainer.epoch_batches()[:2] * 3  # full-size batches: the same shapes every step
for i, batch in enumerate(batches[:3]):
    trainer.run_step(StepContext(0, i, i, batch))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i, batch in enumerate(batches[3:]):
    trainer.run_step(StepContext(0, i, i, batch))
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "STABLENCA_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", STEPS_FAULTS, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere retain_freed_memory() returns False")
def test_retained_memory_removes_the_steps_page_faults():
    applied, retained = _faults("retain")
    _, system = _faults("system")
    assert applied == "True"
    # One 1024-row step touches tens of MB of fresh (B, C) and PLR tensors; with glibc's defaults
    # that memory is returned and faulted in again every step (about 7,000 faults per step here).
    # Retained, the warm steps reuse it: what is left is Python's own small growth.
    assert system > 1000
    assert retained < system / 10


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
