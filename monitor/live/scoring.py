"""One scoring loop for all live streams.

Streams submit ready Windows; the loop takes everything queued (up to ``max_batch``,
waiting ``linger_s`` for more streams to catch up), scores it with ONE
``Scorer.score`` call in a worker thread, and hands each Score back. The event loop
never runs the network, so ingest (WebRTC, decoding queues, websockets) never stalls
behind it. The queue is bounded: when scoring falls behind, the oldest windows are
dropped and counted (a live console wants the newest verdict, not a backlog).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from expose.monitor.alerts.events import AlertChange, AlertDetail, AlertSummary, AlertUpdate, EventPayload, ScoreData
from expose.monitor.alerts.policy import PolicyStep
from expose.monitor.features.windows import Window
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import Scorer
from expose.profiles.store import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedWindow:
    """A stream's window waiting for the scorer, with the profile it is claimed as."""

    window: Window
    profile: Profile | None  # None: nobody claimed -> insufficient, never scored as anyone
    ready_at: float = field(default_factory=time.monotonic)  # when the window's last frame was in


@dataclass(frozen=True)
class ScoredWindow:
    request: QueuedWindow
    score: Score
    latency_s: float  # window ready -> score available


OnScores = Callable[[list[ScoredWindow]], Awaitable[None]]


class ScoringLoop:
    def __init__(self, scorer: Scorer, on_scores: OnScores, *, max_batch: int = 64, linger_s: float = 0.02,
                 max_queue: int = 1024) -> None:
        self.scorer = scorer
        self._on_scores = on_scores
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._queue: collections.deque[QueuedWindow] = collections.deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        # one thread: torch parallelises inside a call (live.native_threads); two calls would fight
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.dropped = 0
        self.batches = 0
        self.scored = 0
        self.last_batch_size = 0
        self.last_latency_s: float | None = None
        self.last_batch_s: float | None = None  # duration of the last scorer call (read by on_scores)
        self._in_flight = False

    def submit(self, request: QueuedWindow) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # deque(maxlen) drops the oldest on append
        self._queue.append(request)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        """Windows queued or being scored."""
        return bool(self._queue) or self._in_flight

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._queue:
                    continue
                if self.linger_s and len(self._queue) < self.max_batch:
                    await asyncio.sleep(self.linger_s)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                if self._queue:
                    self._wake.set()
                self._in_flight = True
                try:
                    await self._score_batch(loop, batch)
                finally:
                    self._in_flight = False
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list[QueuedWindow]) -> None:
        started = time.monotonic()
        try:
            scores = await loop.run_in_executor(self._pool, self._score, batch)
        except Exception:  # a scorer failure must not end live monitoring
            log.exception("scoring a batch of %d windows failed", len(batch))
            return
        now = time.monotonic()
        results = [ScoredWindow(r, s, now - r.ready_at) for r, s in zip(batch, scores, strict=True)]
        self.batches += 1
        self.scored += len(results)
        self.last_batch_size = len(results)
        self.last_latency_s = max(r.latency_s for r in results)
        self.last_batch_s = now - started
        await self._on_scores(results)

    def _score(self, batch: list[QueuedWindow]) -> list[Score]:
        return score_windows(self.scorer, batch)


def score_windows(scorer: Scorer, batch: list[QueuedWindow]) -> list[Score]:
    """One batched scorer call for every claimed window; an unclaimed one is insufficient."""
    claimed = {i: r.profile.requests([r.window], scorer)[0] for i, r in enumerate(batch) if r.profile is not None}
    out: dict[int, Score] = {}
    if claimed:
        out.update(zip(claimed, scorer.score(list(claimed.values())), strict=True))
    for i, r in enumerate(batch):
        if r.profile is None:
            w = r.window
            out[i] = Score(w.stream, "", w.t0, w.t1, "insufficient", w.face_ratio, w.speech_ratio,
                           reason="no claimed profile")
    return [out[i] for i in range(len(batch))]


def score_data(r: ScoredWindow, step: PolicyStep) -> ScoreData:
    """The live ``score`` event of a scored window after its policy step."""
    s, prof = r.score, r.request.profile
    calib = prof.calibration if prof is not None else None
    ready = r.request.window.ready_at  # the frame that completed the window (live sources)
    frame_latency = max(0.0, time.time() - ready) if ready is not None else None
    return ScoreData(
        profile=s.profile or None, t0=s.t0, t1=s.t1, status=s.status,
        distance=s.distance, smoothed=step.smoothed,
        # the threshold the smoothed distance was compared with
        threshold=calib.alert_threshold(len(step.state.recent)) if calib else None,
        z=prof.normalized(s.distance) if prof is not None and s.distance is not None else None,
        identity=s.identity, sync=s.sync, fit=s.fit, face=s.face, voice=s.voice, appearance=s.appearance,
        terms=dict(s.terms), driver=s.driver, explanation=s.explanation,
        face_ratio=s.face_ratio, speech_ratio=s.speech_ratio,
        reason=s.reason, state=step.state.state, latency_s=round(r.latency_s, 3),
        frame_latency_s=round(frame_latency, 3) if frame_latency is not None else None,
        alert_id=step.state.alert.id if step.state.alert is not None else None,
    )


def alert_payloads(step: PolicyStep) -> list[EventPayload]:
    """The alert event of a policy step, if it opened, updated or ended one."""
    if step.alert is None:
        return []
    if step.change == "opened" or step.change == "ended":
        return [AlertChange(action=step.change, alert=AlertDetail.of(step.alert))]
    # one per window while it lasts: the summary, not the evidence again
    return [AlertUpdate(action="updated", alert=AlertSummary.of(step.alert))]
