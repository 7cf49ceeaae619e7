"""Process-level tuning for TLS/HBONE data paths (python-perf.md §3a). Call once at start-up, from ``main``.

glibc's dynamic mmap threshold (128 KiB at first) and heap trimming make every large transient buffer (SSL
read buffers, big frames) an mmap/munmap pair plus page faults. Raising both thresholds keeps those buffers on
the heap: TLS relays cost ~10% less CPU. The price is RSS that is not returned to the OS as eagerly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["tune_malloc"]

log = logging.getLogger("hbone")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 * 1024 * 1024, trim_threshold: int = 256 * 1024 * 1024) -> bool:
    """``mallopt`` the mmap and trim thresholds; returns False (and does nothing) when libc is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not ok:
        log.warning("mallopt refused the HBONE malloc tuning")
    return ok
