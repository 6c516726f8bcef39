"""Keep freed memory in the process between training steps (glibc).

Every ModernNCA step allocates and frees the same multi-megabyte tensors: the (B, C)
distance and softmax matrices, the PLR features and their gradients. glibc's ``malloc``
adapts its thresholds to such blocks, but once the freed memory at the top of the heap
exceeds its trim threshold it hands it back to the kernel, and the next step page-faults
every page in again, zero-filled. On Abalone that was 13,084 minor faults per epoch of
training steps against 102 with this setting, and 63.0 against 50.4 ms per epoch
(``python bench/page_faults.py``, reports/benchmarks.md).

:func:`retain_freed_memory` raises the two thresholds with ``mallopt``, as the environment
variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` would. Nothing is
computed differently; the price is that memory freed at the top of the heap stays with
the process (up to :data:`TRIM_THRESHOLD`), so the resident size stays near the peak that
every training step reaches anyway. The CLI calls it; library users may call it once.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: glibc's ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks below this come from the heap, where freed ones are reused; above it, mmap as
#: before. 32 MiB is the largest value glibc accepts on 64-bit (half its heap size limit).
MMAP_THRESHOLD = 32 * 2**20
#: Freed memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 2**30
#: ``STABLENCA_ALLOCATOR=system`` leaves glibc's defaults alone.
OPT_OUT = ("STABLENCA_ALLOCATOR", "system")
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; True when set, False where it does not apply.

    Not applied (False) off glibc, with ``STABLENCA_ALLOCATOR=system``, or when the user
    already set glibc's own ``MALLOC_*_`` variables (their choice wins).
    """
    if os.environ.get(OPT_OUT[0]) == OPT_OUT[1] or any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; both or neither, so a half-applied setting is not reported as set
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))
