"""Every core of one node: the pulled streams' ingest and features in worker processes.

One process cannot use more than about one core for features: MediaPipe, the audio features and
the phone decoder of every stream share its GIL. With ``live.workers = N`` (> 0) the LiveMonitor
hands each pulled stream to one of N worker processes (spawned; a new stream goes to the worker
with the fewest), which runs the same StreamRunner there and sends back, over a pipe, the
stream's windows, its phase changes, and once a second its health and newest face thumbnail.
Scoring (batched across every worker's windows), the alert policy, the store, the sinks and the
API stay in the server process, which holds the one scorer. WHIP streams stay in the server
process too: their media arrive on its WebRTC connections.

A worker that dies (killed, out of memory, a native crash) is noticed within
``SUPERVISE_S``, started again, and its streams started again on it from their sources: a live
source reconnects, a file plays again from its start while the stream clock goes on, so no
window of the new run has the times of an earlier one. The stream's phase goes ``down`` ->
``connecting`` -> ``live`` meanwhile, as for a reconnect. ``live.workers = 0`` (the default, and
the quick start) keeps everything in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from expose.monitor.config import Config, StreamConfig
from expose.monitor.features.stream import LiveFeatureSettings
from expose.monitor.features.windows import Window
from expose.monitor.live import heap
from expose.monitor.live.runner import StreamHealth, StreamRunner, limit_native_threads, pull_runner

log = logging.getLogger(__name__)

SUPERVISE_S = 0.5  # how often the server checks that its workers are alive
HEALTH_EVERY_S = 1.0  # how often a worker reports each stream's health and thumbnail


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to build runners: the config (as JSON: a spawned process gets it
    pickled), the face model's path, the feature windowing and whether to embed faces/voices."""

    config_json: str
    face_model: Path
    live: LiveFeatureSettings
    identity: bool


# ---- the worker process ------------------------------------------------------------------

def worker_main(conn: Connection, settings: WorkerSettings) -> None:
    """Entry point of a worker process: runs streams on command until told to exit or the
    server's end of the pipe closes."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    cfg = Config.model_validate_json(settings.config_json)
    if cfg.live.heap_limits:
        heap.limit_heap()
    limit_native_threads(cfg.live.native_threads)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(conn, settings, cfg))


async def _worker(conn: Connection, settings: WorkerSettings, cfg: Config) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    send_lock = threading.Lock()

    def send(msg: tuple[Any, ...]) -> None:
        # the server gone: OSError here, and the reader below ends the worker
        with send_lock, contextlib.suppress(OSError, ValueError):
            conn.send(msg)

    def read() -> None:  # blocking reads on a thread of their own
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                msg = ("exit",)
            loop.call_soon_threadsafe(inbox.put_nowait, msg)
            if msg[0] == "exit":
                return

    threading.Thread(target=read, name="worker-inbox", daemon=True).start()
    runners: dict[str, tuple[StreamRunner, asyncio.Task[None]]] = {}

    async def run(name: str, runner: StreamRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("stream %s: runner failed", name)
        finally:
            send(("health", name, runner.health(), runner.thumbnail(), runner.frames_received))
            send(("ended", name))

    async def report() -> None:
        trimmed = time.monotonic()
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            for name, (runner, _) in list(runners.items()):
                send(("health", name, runner.health(), runner.thumbnail(), runner.frames_received))
            if time.monotonic() - trimmed > 60:  # as the server's housekeeping does (live.heap)
                await asyncio.to_thread(heap.trim)
                trimmed = time.monotonic()

    reporter = asyncio.create_task(report())
    try:
        while True:
            msg = await inbox.get()
            if msg[0] == "start":
                spec = StreamConfig.model_validate(msg[1])
                if spec.name in runners:
                    continue
                runner = pull_runner(
                    spec, cfg, face_model=settings.face_model, live=settings.live, identity=settings.identity,
                    on_window=lambda w: send(("window", w.stream, w)),
                    on_phase=lambda r: send(("phase", r.name, r.health(), r.thumbnail(), r.frames_received)),
                    clock_start_s=msg[2])
                runners[spec.name] = (runner, asyncio.create_task(run(spec.name, runner)))
            elif msg[0] == "stop":
                entry = runners.pop(msg[1], None)
                if entry is not None:
                    entry[0].stop()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(entry[1], timeout=5)
            elif msg[0] == "exit":
                break
    finally:
        reporter.cancel()
        for runner, task in runners.values():
            runner.stop()
            task.cancel()
        for _, task in runners.values():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=5)


# ---- the server side -----------------------------------------------------------------------

@dataclass(frozen=True)
class _Carry:
    """A stream's counters from the runs on workers that died (a new runner starts at 0)."""

    reconnects: int = 0
    dropped_frames: int = 0
    skipped_windows: int = 0
    windows: int = 0
    frames: int = 0


class RemoteRunner:
    """Stands in the server process for a StreamRunner that runs in a worker: the monitor
    calls the same methods (run, stop, health, thumbnail, frames_received)."""

    kind = "pull"

    def __init__(self, spec: StreamConfig, pool: WorkerPool) -> None:
        self.name = spec.name
        self.url = spec.url
        self.spec = spec
        self._pool = pool
        self._done = asyncio.Event()
        self._health = StreamHealth(
            name=spec.name, kind="pull", url=spec.url, phase="connecting", stalled=False, reason="starting in a worker",
            last_frame_age_s=None, fps=0.0, reconnects=0, dropped_frames=0, skipped_windows=0, behind=False,
            windows=0, uptime_s=0.0)
        self._thumbnail: str | None = None
        self.frames_received = 0
        self.restarts = 0  # times its worker died and it started again
        self._carry = _Carry()
        self._last_t1 = 0.0
        self._last_window_at: float | None = None

    def health(self, now: float | None = None) -> StreamHealth:
        return self._health

    def thumbnail(self) -> str | None:
        return self._thumbnail

    def stop(self) -> None:
        self._pool.stop_stream(self.name)
        self._done.set()

    async def run(self) -> None:
        await self._done.wait()

    def _window_seen(self, window: Window) -> None:
        self._last_t1 = max(self._last_t1, window.t1)
        self._last_window_at = time.monotonic()

    def clock_now(self) -> float:
        """The stream clock now: the last window's end, on by the wall time since (the rule of
        an in-process reconnect: windows never go back in stream time)."""
        if self._last_window_at is None:
            return self._last_t1
        return self._last_t1 + time.monotonic() - self._last_window_at

    def _update(self, health: StreamHealth, thumbnail: str | None, frames: int) -> None:
        # counters run on across the worker's restarts (a new runner starts them at 0)
        base = self._carry
        self._health = replace(health, reconnects=health.reconnects + base.reconnects,
                               dropped_frames=health.dropped_frames + base.dropped_frames,
                               skipped_windows=health.skipped_windows + base.skipped_windows,
                               windows=health.windows + base.windows)
        self.frames_received = frames + base.frames
        if thumbnail is not None:
            self._thumbnail = thumbnail

    def _worker_died(self) -> None:
        h = self._health
        self._carry = _Carry(reconnects=h.reconnects + 1, dropped_frames=h.dropped_frames,
                             skipped_windows=h.skipped_windows, windows=h.windows, frames=self.frames_received)
        self.restarts += 1
        self._health = replace(h, phase="down", reason="its worker process died; starting it again")



@dataclass
class _Worker:
    index: int
    process: mp.process.BaseProcess
    conn: Connection
    streams: set[str] = field(default_factory=set)
    reader: threading.Thread | None = None


class WorkerPool:
    """N worker processes and the streams each runs; restarts a worker that dies."""

    def __init__(self, n: int, settings: WorkerSettings, *, on_window: Callable[[Window], None],
                 on_phase: Callable[[RemoteRunner], None]) -> None:
        if n < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.n = n
        self.settings = settings
        self._on_window = on_window
        self._on_phase = on_phase
        self._ctx = mp.get_context("spawn")  # fork would copy the server's threads and locks
        self._workers: list[_Worker] = []
        self._runners: dict[str, RemoteRunner] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self.restarts = 0  # worker processes started again after dying

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [self._spawn(i) for i in range(self.n)]
        self._supervisor = asyncio.create_task(self._supervise(), name="worker-supervisor")

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        for w in self._workers:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(("exit",))
        deadline = time.monotonic() + 10
        for w in self._workers:
            await asyncio.to_thread(w.process.join, max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                await asyncio.to_thread(w.process.join, 5)
            w.conn.close()
        for r in self._runners.values():
            r._done.set()

    def pids(self) -> list[int | None]:
        return [w.process.pid for w in self._workers]

    def worker_of(self, stream: str) -> int | None:
        return next((w.index for w in self._workers if stream in w.streams), None)

    # ---- streams ---------------------------------------------------------------------
    def assign(self, spec: StreamConfig) -> RemoteRunner:
        """Start a pulled stream on the worker with the fewest streams."""
        worker = min(self._workers, key=lambda w: (len(w.streams), w.index))
        runner = RemoteRunner(spec, self)
        self._runners[spec.name] = runner
        worker.streams.add(spec.name)
        self._send(worker, ("start", spec.model_dump(mode="json"), 0.0))
        return runner

    def stop_stream(self, name: str) -> None:
        self._runners.pop(name, None)
        for w in self._workers:
            if name in w.streams:
                w.streams.discard(name)
                self._send(w, ("stop", name))

    def _send(self, worker: _Worker, msg: tuple[Any, ...]) -> None:
        try:
            worker.conn.send(msg)
        except (OSError, ValueError) as err:  # a dead worker: the supervisor restarts it with its streams
            log.warning("worker %d: cannot send %s (%s)", worker.index, msg[0], err)

    # ---- processes -------------------------------------------------------------------
    def _spawn(self, index: int, streams: set[str] | None = None) -> _Worker:
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, args=(theirs, self.settings), name=f"expose-worker-{index}",
                                 daemon=False)  # a daemon could not start the face embedder's process
        proc.start()
        theirs.close()
        worker = _Worker(index, proc, ours, set(streams or ()))
        worker.reader = threading.Thread(target=self._read, args=(worker,), name=f"worker-{index}-reader",
                                         daemon=True)
        worker.reader.start()
        return worker

    def _read(self, worker: _Worker) -> None:
        """Messages of one worker, handed to the event loop in order."""
        assert self._loop is not None
        while True:
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                return
            except Exception:  # an unpicklable message: drop it, keep the worker
                log.exception("worker %d: unreadable message", worker.index)
                continue
            self._loop.call_soon_threadsafe(self._dispatch, msg)

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind, name = msg[0], msg[1]
        runner = self._runners.get(name)
        if runner is None:
            return  # a stream stopped meanwhile
        if kind == "window":
            runner._window_seen(msg[2])
            self._on_window(msg[2])
        elif kind in ("health", "phase"):
            before = runner.health().phase
            runner._update(msg[2], msg[3], msg[4])
            if kind == "phase" or runner.health().phase != before:
                self._on_phase(runner)
        elif kind == "ended":
            self._runners.pop(name, None)
            for w in self._workers:
                w.streams.discard(name)
            runner._done.set()

    async def _supervise(self) -> None:
        while not self._closing:
            await asyncio.sleep(SUPERVISE_S)
            for i, w in enumerate(self._workers):
                if w.process.is_alive() or self._closing:
                    continue
                log.error("worker %d (pid %s) died (exit %s); starting it again with its %d stream(s)", w.index,
                          w.process.pid, w.process.exitcode, len(w.streams))
                self.restarts += 1
                w.conn.close()
                fresh = self._spawn(w.index, w.streams)
                self._workers[i] = fresh
                for name in sorted(fresh.streams):
                    runner = self._runners.get(name)
                    if runner is None:
                        continue
                    runner._worker_died()
                    self._on_phase(runner)
                    self._send(fresh, ("start", runner.spec.model_dump(mode="json"), runner.clock_now()))
