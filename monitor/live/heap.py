"""Handing freed native heap memory back to the system (glibc ``malloc_trim``).

Why: a monitor's memory is mostly native (MediaPipe graphs, torch, OpenBLAS, PyAV frames,
numpy buffers), allocated and freed by many threads (a decode thread per source
connection, a feature thread per stream, the scorer thread). glibc's malloc serves them
from per-thread arenas and keeps what they free for later; ``free`` only returns memory at
the top of the main heap, so a freed block below a live one stays in the process, and
with many arenas the retained, fragmented free space creeps up for hours though nothing
is leaked (``bench/bench_live.py --tracemalloc`` shows the Python heap flat while RSS
grows). ``malloc_trim(0)`` releases the free pages of every arena (madvise); the monitor
calls it in its housekeeping task, once a minute, off the event loop.

Elsewhere (musl, macOS, Windows) there is nothing to call and ``trim`` returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def can_trim() -> bool:
    """Whether this C library has ``malloc_trim`` (glibc)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; True if some were released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
