"""Host memory allocator settings that matter for CPU training speed."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 1024, top_pad_mb: int = 64) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves large blocks (an activation tensor of a training step) with fresh
    ``mmap`` pages and unmaps them when freed, so every step page-faults its activations in
    again: about 7,400 faults per step for the scratch CNN at batch 64 in float32, and a third of its CPU
    training time in a standalone training-step loop. With blocks up to ``mmap_threshold_mb``
    taken from the heap and up to ``trim_threshold_mb`` of free heap kept, the pages are reused
    (that loop: 0 faults per step, 1.7x the throughput). glibc's own adaptive thresholds often
    get there in long runs too (docs/performance.md, "Host malloc"); this makes it certain. The cost is that the
    process keeps its peak heap. Returns False where it does not apply (not Linux, or not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    settings = {
        _M_MMAP_THRESHOLD: mmap_threshold_mb << 20,
        _M_TRIM_THRESHOLD: trim_threshold_mb << 20,
        _M_TOP_PAD: top_pad_mb << 20,
    }
    applied = all(mallopt(option, value) == 1 for option, value in settings.items())
    if applied:
        log.info("host malloc: keeping freed memory for reuse (mmap threshold %d MB, trim threshold %d MB)",
                 mmap_threshold_mb, trim_threshold_mb)
    return applied
