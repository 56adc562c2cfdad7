"""One live stream: source -> StreamFeaturizer -> Windows, kept alive by the watchdog.

The runner reads its source on the event loop and runs the featurizer (MediaPipe,
audio features) on a thread of its own, one item at a time; when that thread falls
behind, the source's bounded queue drops the oldest video frames and counts them. A
source that ends or stalls is stopped and reopened with backoff (``monitor.watchdog``);
after a reconnect the stream clock goes on (windows carry stream seconds, not the new
connection's media seconds).

With ``identity`` the featurizer also puts face descriptors and voice embeddings in the
windows (``features.identity``: the same rules, so the same vectors, as offline extraction).
The embedders are built once per runner on its feature thread and kept across reconnects:
they are not thread-safe, so each stream has its own (~0.3 s to build once dlib and torch are
imported). The face embedder runs in the process's shared embedder worker
(``embedding.IsolatedEmbedder``): dlib holds the GIL for the ~0.1 s of each descriptor, which
in-thread stalled every other stream and the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from expose.monitor.config import Config, FeatureConfig, LiveSection, StreamConfig
from expose.monitor.errors import ExposeError
from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.identity import IdentityEmbedders
from expose.monitor.features.onnx_face import live_extractor
from expose.monitor.features.stream import LiveFeatureSettings, StreamFeaturizer
from expose.monitor.features.timeline import FPS
from expose.monitor.features.windows import Window
from expose.monitor.live import watchdog as wd
from expose.monitor.media.reader import VideoFrame
from expose.monitor.media.sources import EndOfStream, PullSource, Source
from expose.monitor.media.thumbnails import jpeg_base64

log = logging.getLogger(__name__)

SourceKind = Literal["pull", "whip"]


@dataclass(frozen=True)
class StreamHealth:
    name: str
    kind: SourceKind
    url: str | None
    phase: wd.Phase
    stalled: bool
    reason: str
    last_frame_age_s: float | None
    fps: float  # video frames per second over the last few seconds
    reconnects: int
    dropped_frames: int  # by the source queue (featurizer behind)
    skipped_windows: int  # by the feature buffer
    behind: bool  # media was lost to overload (drops or skips) in the last BEHIND_S seconds
    windows: int
    uptime_s: float


BEHIND_S = 10.0


@dataclass
class LossTracker:
    """When media was last lost to overload: frames dropped by the source queue or windows
    skipped by the feature buffer (both running totals). A stream is "behind" while that
    is recent, so an operator can tell "the machine cannot keep up" from "no face"."""

    window_s: float = BEHIND_S
    seen: int = 0
    last_loss_at: float | None = None

    def update(self, total: int, now: float) -> None:
        if total > self.seen:
            self.seen, self.last_loss_at = total, now

    def behind(self, now: float) -> bool:
        return self.last_loss_at is not None and now - self.last_loss_at <= self.window_s


class StreamRunner:
    def __init__(
        self,
        name: str,
        kind: SourceKind,
        open_source: Callable[[], Source],
        *,
        face_model: Path,
        features: FeatureConfig,
        live: LiveFeatureSettings,
        watchdog: wd.WatchdogSettings,
        on_window: Callable[[Window], None],
        on_phase: Callable[[StreamRunner], None] | None = None,
        url: str | None = None,
        tick_s: float = 0.5,
        identity: bool = False,
        clock_start_s: float = 0.0,
        cache_dir: Path | None = None,
    ) -> None:
        """``identity``: compute the face descriptors and voice embeddings that ``features``
        configures (the face and voice terms need them). ``clock_start_s``: the stream seconds
        its first window starts from (a stream that goes on in a new worker process)."""
        self.name = name
        self.kind = kind
        self.url = url
        self._open_source = open_source
        self._face_model = face_model
        self._cache_dir = cache_dir  # the ONNX face model's converted networks (features.face_backend)
        self._features = features
        self._live = live
        self._wd_settings = watchdog
        self._on_window = on_window
        self._on_phase = on_phase
        self._tick = tick_s
        self._identity = identity
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"features:{name}")
        self._started = time.monotonic()
        self.state = wd.start(self._started)
        self._frame_times: collections.deque[float] = collections.deque(maxlen=256)
        self._source: Source | None = None
        self._featurizer: StreamFeaturizer | None = None
        self._dropped_before = 0  # from sources of earlier connections
        self._skipped_before = 0
        self._windows = 0
        self.frames_received = 0  # video frames taken from the source, all connections (/metrics)
        self._losses = LossTracker()
        self._clock_start = clock_start_s
        self._media_end = clock_start_s  # stream seconds reached by earlier connections
        self._stopping = False

    # ---- state reports ---------------------------------------------------------------
    def _set_state(self, state: wd.WatchdogState) -> None:
        changed = state.phase != self.state.phase
        self.state = state
        if changed:
            log.info("stream %s: %s %s", self.name, state.phase, state.reason)
            if self._on_phase is not None:
                self._on_phase(self)

    def health(self, now: float | None = None) -> StreamHealth:
        now = time.monotonic() if now is None else now
        recent = [t for t in self._frame_times if now - t <= 5.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        st = self.state
        dropped, skipped = self._lost()
        self._losses.update(dropped + skipped, now)
        return StreamHealth(
            name=self.name, kind=self.kind, url=self.url, phase=st.phase,
            stalled=wd.stalled(st, now, self._wd_settings), reason=st.reason,
            last_frame_age_s=round(now - st.last_frame_at, 3) if st.last_frame_at is not None else None,
            fps=round(fps, 2), reconnects=st.reconnects,
            dropped_frames=dropped, skipped_windows=skipped, behind=self._losses.behind(now),
            windows=self._windows, uptime_s=round(now - self._started, 1),
        )

    def _lost(self) -> tuple[int, int]:
        """Running totals of frames dropped by the source queue and windows skipped."""
        feat = self._featurizer.stats() if self._featurizer is not None else None
        return (self._dropped_before + (self._source.dropped if self._source is not None else 0),
                self._skipped_before + (feat.skipped_windows if feat else 0))

    def thumbnail(self) -> str | None:
        """Base64 JPEG of the newest frame with a face (alert evidence)."""
        f = self._featurizer
        img = f.last_face_image if f is not None else None
        return jpeg_base64(img) if img is not None else None

    # ---- lifecycle -------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping = True
        if self._source is not None:
            self._source.stop()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self._features
        # MediaPipe's graph per stream, or a handle on the process's batched ONNX face model
        extractor = await loop.run_in_executor(
            self._pool, lambda: live_extractor(cfg, self._face_model, self._cache_dir, (self.name, id(self))))
        try:
            identity = (await loop.run_in_executor(self._pool, IdentityEmbedders.from_config, cfg, True)
                        if self._identity else None)
            await self._supervise(extractor, identity)
        finally:
            if self._source is not None:
                self._source.stop()
            await loop.run_in_executor(self._pool, extractor.close)
            self._pool.shutdown(wait=False)

    async def _supervise(self, extractor: ExpressionExtractor, identity: IdentityEmbedders | None) -> None:
        s = self._wd_settings
        while not self._stopping:
            source = self._open_source()
            self._source = source
            # the stream clock goes on across reconnects: wall time since start, or further
            # if a fast (file) source got ahead of it
            offset = self._clock_start if self._featurizer is None else max(
                self._media_end, self._clock_start + time.monotonic() - self._started)
            feat = StreamFeaturizer(self.name, extractor, self._live, time_offset=offset, identity=identity)
            self._featurizer = feat
            task: asyncio.Task[None] | None = asyncio.create_task(self._consume(source, feat),
                                                                  name=f"consume:{self.name}")
            try:
                while True:
                    if task is not None:
                        await asyncio.wait({task}, timeout=self._tick)
                    else:
                        await asyncio.sleep(self._tick)
                    if self._stopping:
                        return
                    now = time.monotonic()
                    if task is not None and task.done():
                        error = _reason(task)
                        task = None
                        self._retire(source, feat)
                        self._set_state(wd.on_end(self.state, now, s, error))
                    d = wd.decide(self.state, now, s)
                    if d.action is wd.Action.STOP and task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                        task = None
                        self._retire(source, feat)
                        self._set_state(wd.on_end(self.state, now, s, d.reason))
                    elif d.action is wd.Action.RESTART:
                        self._set_state(wd.on_restart(self.state, now, s))
                        break
                    elif d.action is wd.Action.GIVE_UP:
                        self._set_state(wd.give_up(self.state, now, d.reason))
                        return
                    if self.state.phase == "ended" or (self.state.phase == "down" and not s.can_restart):
                        return
            finally:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    def _retire(self, source: Source, feat: StreamFeaturizer) -> None:
        source.stop()
        self._dropped_before += source.dropped
        stats = feat.stats()
        self._skipped_before += stats.skipped_windows
        if stats.last_video_time is not None:
            self._media_end = max(self._media_end, feat.time_offset + stats.last_video_time + 1 / FPS)
        self._source = None

    async def _consume(self, source: Source, feat: StreamFeaturizer) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await source.recv()
            except EndOfStream:
                break
            if isinstance(item, VideoFrame):
                now = time.monotonic()
                self._frame_times.append(now)
                self.frames_received += 1
                self._losses.update(sum(self._lost()), now)
                self._set_state(wd.on_frame(self.state, now, self._wd_settings))
            windows = await loop.run_in_executor(self._pool, feat.push, item)
            self._emit(windows)
        self._emit(await loop.run_in_executor(self._pool, feat.finish))

    def _emit(self, windows: list[Window]) -> None:
        for w in windows:
            self._windows += 1
            self._on_window(w)


def _reason(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    err = task.exception()
    if err is None:
        return ""
    if isinstance(err, ExposeError):
        return str(err)
    log.error("stream consumer failed", exc_info=err)
    return f"{type(err).__name__}: {err}"


def watchdog_settings(live: LiveSection, *, can_restart: bool, restart_on_end: bool,
                      loop: bool = False) -> wd.WatchdogSettings:
    return wd.WatchdogSettings(
        stall_after_s=live.stall_after_s, open_timeout_s=live.open_timeout_s,
        backoff_initial_s=live.backoff_initial_s, backoff_max_s=max(live.backoff_max_s, live.backoff_initial_s),
        max_restarts=live.max_restarts, restart_window_s=live.restart_window_s,
        restart_on_end=restart_on_end, loop=loop, can_restart=can_restart)


def pull_runner(spec: StreamConfig, cfg: Config, *, face_model: Path, live: LiveFeatureSettings, identity: bool,
                on_window: Callable[[Window], None], on_phase: Callable[[StreamRunner], None] | None = None,
                clock_start_s: float = 0.0) -> StreamRunner:
    """The runner of a pulled stream (a file or an FFmpeg URL), in the server process or a worker."""
    url = spec.url
    if url is None:
        raise ValueError(f"stream {spec.name!r} has no url to pull")
    is_file = "://" not in url

    def open_source() -> PullSource:
        return PullSource(url, realtime=spec.realtime, max_side=cfg.features.max_side,
                          timeout_s=cfg.live.open_timeout_s, queue_items=cfg.live.queue_items)

    return StreamRunner(spec.name, "pull", open_source, face_model=face_model, features=cfg.features, live=live,
                        watchdog=watchdog_settings(cfg.live, can_restart=True, restart_on_end=not is_file,
                                                   loop=is_file and spec.loop),
                        on_window=on_window, on_phase=on_phase, url=url, identity=identity,
                        clock_start_s=clock_start_s, cache_dir=cfg.cache_dir)


def stream_settings(cfg: Config, window: int, decision: bool) -> tuple[LiveFeatureSettings, bool]:
    """The live featurizer's settings for a model's ``window``, and whether it computes the face
    descriptors and voice embeddings: only for a decision (its face and voice terms read them;
    without one the score is the motion distance alone). Their embedder files are checked now:
    a missing one is an error at start, not one per stream."""
    if decision:
        IdentityEmbedders.from_config(cfg.features)
    live = cfg.live
    return LiveFeatureSettings(window=window, hop=max(1, round(live.hop_s * FPS)),
                               audio_context_s=live.audio_context_s, max_buffer_s=live.max_buffer_s), decision


def limit_native_threads(n: int) -> None:
    """Process-wide: torch's intra-op pool and every loaded BLAS pool (numpy's and OpenCV's
    OpenBLAS, loaded with mediapipe) to ``n`` threads each; 0 leaves them alone. See
    LiveSection.native_threads for why a monitor (and each of its workers) wants 1."""
    if n:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(n)
        threadpool_limits(n, user_api="blas")
