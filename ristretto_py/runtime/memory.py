"""Allocator settings for the numpy runtime.

A forward pass allocates blobs of tens of megabytes. glibc serves blocks that large with fresh
``mmap`` pages and returns them to the system on ``free``, so every layer pays page faults on
memory it just released: on a ResNet-50 batch that is a sixth of the run time. Raising the
mmap and trim thresholds keeps freed memory in the heap for the next layer. The setting is
process-wide, applied once, and only where glibc's ``mallopt`` exists; set
``RISTRETTO_PY_KEEP_MALLOC=1`` to leave the allocator alone.
"""
import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_THRESHOLD = 1 << 30
_done = False


def keep_freed_memory():
    """Raise glibc's mmap/trim thresholds (once). Returns whether the setting took effect."""
    global _done
    if _done or os.environ.get("RISTRETTO_PY_KEEP_MALLOC") == "1":
        return _done
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
