"""monitor.live.heap: freed native memory that glibc keeps in a thread's arena goes back to the
system when the monitor trims (what keeps a long-running monitor's RSS from creeping up)."""

from __future__ import annotations

import platform
import sys
import threading

import pytest

from expose.monitor.live import heap

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="malloc_trim is glibc's")


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@glibc
def test_glibc_can_trim() -> None:
    assert heap.can_trim()
    assert isinstance(heap.trim(), bool)


@glibc
def test_trim_returns_what_a_thread_freed_below_a_live_block() -> None:
    """A worker thread allocates 128 MB in 64 KiB blocks (under the mmap threshold: malloc
    serves them from the thread's arena), frees all but the last one: the freed space lies
    below a live block, so free() cannot hand it back and RSS stays up; trim() does."""
    held: list[bytes] = []

    def work() -> None:
        blocks = [b"x" * (64 * 1024 - 64) for _ in range(2048)]  # written: resident
        held.append(blocks[-1])
        blocks.clear()

    heap.trim()
    t = threading.Thread(target=work)
    t.start()
    t.join()
    before = rss_mb()
    assert heap.trim()
    after = rss_mb()
    assert before - after > 64, f"RSS {before:.0f} -> {after:.0f} MB"
    assert held  # the live block stays valid
