"""Keeping the native heap from creeping up: glibc malloc settings and ``malloc_trim``.

Why: a monitor's memory is mostly native (MediaPipe graphs, torch, OpenBLAS, PyAV frames,
numpy buffers), allocated and freed by many threads (a decode thread per source
connection, a feature thread per stream, the scorer thread). glibc's malloc serves them
from per-thread arenas and keeps what they free for later; ``free`` only returns memory at
the top of the main heap, so a freed block below a live one stays in the process, and
with many arenas the retained, fragmented free space creeps up for hours though nothing
is leaked (``bench/bench_live.py --tracemalloc`` shows the Python heap flat while RSS
grows; ``/proc/PID/smaps`` shows the growth in the 64 MB-aligned arena heaps, 17 of them on
2 cores). Three bounds, all process-wide:

- ``limit_heap`` (the LiveMonitor calls it once, before its first stream thread):
  at most ``ARENA_MAX`` arenas instead of glibc's 8 per core (each arena keeps its own
  high-water mark of freed memory), and a fixed mmap threshold of ``MMAP_THRESHOLD``:
  blocks that large (video frames: 0.8 MB at 512 x 512 RGB, audio buffers, big tensors) are
  mapped and unmapped on their own, so they never sit freed inside an arena. By default
  glibc raises that threshold to the size of each mapped block freed (up to 32 MB), after
  which frames come from the arenas and fragment them.
- ``trim`` (the monitor's housekeeping task, once a minute, off the event loop):
  ``malloc_trim(0)`` releases the free pages inside every arena (madvise).

Elsewhere (musl, macOS, Windows) there is nothing to call: both return False.
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


ARENA_MAX = 2  # as many as the development machine's cores; glibc's default is 8 per core
MMAP_THRESHOLD = 256 * 1024  # bytes; glibc starts at 128 KiB and raises it up to 32 MiB
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # <malloc.h>


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def limit_heap(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap glibc's arenas and fix its mmap threshold (see the module docstring); True if
    both took. Arenas that exist already stay; call it before starting threads."""
    fn = _mallopt()
    if fn is None:
        return False
    return bool(fn(_M_ARENA_MAX, arena_max)) & bool(fn(_M_MMAP_THRESHOLD, mmap_threshold))


def can_trim() -> bool:
    """Whether this C library has ``malloc_trim`` (glibc)."""
    return _malloc_trim() is not None


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; True if some were released."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
