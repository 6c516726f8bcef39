"""The CPU a run's numbers came from.

A float32 training run is bit-for-bit repeatable on one machine at one thread count, but
torch and MKL pick their vector kernels by instruction set (AVX-512, AVX2, ...), and the
kernels round differently. The same command then gives other trajectories on another CPU
(the committed run's README section lists what changed between two machines), so every
summary names the CPU and the kernels torch chose.

>>> sorted(cpu())
['cpu', 'cpu_capability']
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine() or "unknown")


def cpu() -> dict[str, str]:
    """``{"cpu": model name, "cpu_capability": the vector kernels torch uses (e.g. "AVX2")}``."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
