"""monitor.live.heap: freed native memory that glibc keeps in a thread's arena goes back to the
system when the monitor trims (what keeps a long-running monitor's RSS from creeping up)."""

from __future__ import annotations

import platform
import subprocess
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


@glibc
def test_limit_heap_maps_large_blocks_on_their_own() -> None:
    """With the mmap threshold fixed, a freed block over it goes back at once: 1 MiB blocks
    (a video frame is 0.8 MB), each followed by a small live one, freed by a thread leave no
    resident memory behind, with no trim. By default glibc raises its threshold after the
    first such free, the next blocks come from the thread's arena, and ~30 MB stays there
    pinned between the live ones. Runs in a child process: mallopt is process-wide."""
    code = """if True:
        import sys, threading
        from expose.monitor.live import heap
        assert heap.limit_heap()
        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
        held = []
        def work():
            for _ in range(3):  # the default threshold would rise after the first round
                blocks = []
                for _ in range(32):
                    blocks.append(b"x" * (1 << 20))
                    held.append(b"x" * 1000)  # a live block after each
                blocks.clear()
        base = rss()
        t = threading.Thread(target=work); t.start(); t.join()
        print(rss() - base)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 8, f"{out.stdout.strip()} MB stayed resident"
