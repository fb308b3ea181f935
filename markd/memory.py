"""Give freed memory back to the system (glibc), so RSS falls back once a burst of large requests ends.

glibc serves large allocations with mmap and returns them on free, but by default it raises that
threshold to the size of the last large block freed (up to 32 MB): after one 20 MB request, later
20 MB buffers come from the heap and stay resident. A fixed threshold keeps every large buffer an
mmap; `trim` hands back what the heap still holds. Both are no-ops without glibc.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def _load_libc() -> ctypes.CDLL | None:
    # glibc's soname first: ctypes.util.find_library runs ldconfig (and imports subprocess and tempfile).
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        from ctypes import util

        name = util.find_library("c")
        try:
            return ctypes.CDLL(name) if name else None
        except OSError:
            return None


_libc = _load_libc()
if _libc is not None and not (hasattr(_libc, "mallopt") and hasattr(_libc, "malloc_trim")):
    _libc = None  # not glibc


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (large buffers always mmapped, so freeing them frees memory)."""
    if _libc is None:
        return False
    return bool(_libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> bool:
    """Return the heap's free memory to the system."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))
