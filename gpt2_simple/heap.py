"""Freed heap memory given back to the system after work that frees much of it at once.

Compiling an XLA program allocates and frees hundreds of MB of small blocks; glibc's malloc keeps
what is freed in its arenas for reuse, so a server's resident memory keeps the peak of every
compile it has made (docs/performance.md, "Many fine-tunes"). `trim()` hands the free pages of
every arena back (`malloc_trim(0)`). Where the C library has no `malloc_trim` (not glibc: macOS,
musl), it does nothing.
"""
import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim():
    """Give the free pages of the C heap back to the system: whether anything was returned."""
    release = _malloc_trim()
    return bool(release(0)) if release is not None else False
