"""numpy's sorting kernels on AMD Zen 4: its AVX2 ones, not its AVX-512 ones.

numpy sorts and partitions with x86-simd-sort and takes its AVX-512 kernels wherever the CPU
has AVX-512. Zen 4 (AMD family 19h) has it, but the compress-store those kernels issue on every
vector (``vpcompress`` to memory) is microcoded there, and they run several times slower than
numpy's AVX2 kernels (a known problem: x86-simd-sort's issue 6; OpenJDK turned its AVX-512 sort
off on Zen 4, JDK-8317976). The recorder picks exact quantiles with ``np.partition`` at every
ModernNCA step and sorts the held SeedNCA steps at each epoch's end. On a 2-core Zen 4 VM
diagnosis cost 1.06–1.08× a plain ModernNCA step with numpy's AVX2 kernels (four runs) and
1.07–1.11× with its AVX-512 ones (five runs, whose spread is the VM's), 1.07× against 1.11× in
talent_epoch's single-step table (``python bench/probe_cost.py --rounds 30``, with
``NPY_DISABLE_CPU_FEATURES=`` for numpy's own choice; reports/benchmarks.md, fifteenth round).

numpy reads ``NPY_DISABLE_CPU_FEATURES`` once, when it is first imported, so
:func:`prefer_avx2_sorting` must run before anything imports numpy: the CLI calls it first.
It turns off numpy's AVX-512 dispatch targets for the whole process (torch keeps its own
kernels; they are chosen by ``ATEN_CPU_CAPABILITY``). Nothing is computed differently in what
stablenca writes: a selection is exact whichever kernel makes it, and a default diagnose wrote
byte-identical records, ``check.json`` numbers and figures with and without the setting. Numerical
code of the user's own that runs in the CLI's process on numpy's AVX-512 kernels may round
differently on the AVX2 ones.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

VARIABLE = "NPY_DISABLE_CPU_FEATURES"
#: numpy's AVX-512 dispatch targets (their names since numpy 2.4; ``X86_V4`` is AVX512_SKX).
AVX512_TARGETS = "X86_V4 AVX512_ICL AVX512_SPR"
#: AMD's family 19h: Zen 3 (no AVX-512) and Zen 4. Zen 5 (1Ah) is reported not to have the problem.
ZEN4_FAMILY = 0x19


def slow_avx512_compress(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo``'s text describes an AMD family 19h CPU with AVX-512 (Zen 4).

    >>> slow_avx512_compress("vendor_id : AuthenticAMD\\ncpu family : 25\\nflags : fpu avx2 avx512f\\n")
    True
    >>> slow_avx512_compress("vendor_id : GenuineIntel\\ncpu family : 6\\nflags : fpu avx2 avx512f\\n")
    False
    """
    fields = dict(re.findall(r"^(vendor_id|cpu family|flags)\s*:\s*(.*)$", cpuinfo, re.M))
    try:
        family = int(fields.get("cpu family", ""))
    except ValueError:
        return False
    return (fields.get("vendor_id") == "AuthenticAMD" and family == ZEN4_FAMILY
            and "avx512f" in fields.get("flags", "").split())


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _numpy_knows_these_target_names() -> bool:
    """numpy 2.4 or later is installed (older ones name the targets AVX512_SKX ..., and print a
    complaint for names they do not know)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("numpy").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 4)


def prefer_avx2_sorting(environ=os.environ) -> bool:
    """On Zen 4, make numpy, when it is imported, dispatch to its AVX2 kernels; True when set.

    Not applied (False) on other CPUs, once numpy is imported (too late to take effect), when
    ``NPY_DISABLE_CPU_FEATURES`` is already set (even to nothing: the user's choice wins), or
    with a numpy older than 2.4.
    """
    if VARIABLE in environ or "numpy" in sys.modules or not slow_avx512_compress(_cpuinfo()):
        return False
    if not _numpy_knows_these_target_names():
        return False
    environ[VARIABLE] = AVX512_TARGETS
    return True
