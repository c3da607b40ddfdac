"""glibc malloc's thresholds, set from Python: the one place that reaches into the C library.

glibc gives blocks over a threshold (128 KiB, rising to the size of the last such block freed)
their own mmap; smaller ones come from the heap, which keeps what is freed. The merge engine wants
chunk-sized temporaries kept on the heap (fewer page faults); extract-lora wants each module's
large deltas given back when freed (a lower peak). Each sets what it needs; on other C libraries
(musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold (and the heap's trim threshold); False where not glibc."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other libcs: keep their defaults
        return False
    mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    if trim_threshold is not None:
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    return True
