"""LiveMonitor: the running system behind `expose serve`, wired once at start.

Streams (pull sources and WHIP sessions) -> StreamRunner -> Windows -> the shared
ScoringLoop -> AlertPolicy per stream -> events (SQLite, with ``seq``) -> sinks
(websocket hub, JSONL, ...). The HTTP layer (``api.app``) only calls the
methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from expose.exporters.base import AlertSink, DurableSink
from expose.exporters.outbox import Outbox
from expose.monitor.alerts.events import (
    AlertChange,
    AlertDetail,
    Event,
    EventPayload,
    ScoreData,
    StreamAdded,
    StreamPhase,
    StreamPublishing,
    StreamRemoved,
    StreamUnpublished,
)
from expose.monitor.alerts.policy import Alert, AlertPolicy, PolicySettings, PolicyState, StreamState
from expose.monitor.alerts.policy import acknowledge as ack_alert
from expose.monitor.alerts.policy import close as close_alert
from expose.monitor.config import Config, StreamConfig
from expose.monitor.errors import ExposeError
from expose.monitor.features.windows import Window
from expose.monitor.live import heap
from expose.monitor.live import watchdog as wd
from expose.monitor.live.runner import StreamHealth, StreamRunner, pull_runner, stream_settings, watchdog_settings
from expose.monitor.live.scoring import QueuedWindow, ScoredWindow, ScoringLoop, alert_payloads, score_data
from expose.monitor.live.store import LiveStore
from expose.monitor.live.telemetry import Telemetry
from expose.monitor.live.workers import WorkerPool, WorkerSettings
from expose.monitor.media.whip import WhipSession, open_session
from expose.monitor.model.scorer import Scorer
from expose.profiles.store import Profile, ProfileError, ProfileStore

log = logging.getLogger(__name__)


class StreamError(ExposeError):
    """A stream request that the stream's current state does not allow (duplicate name, a
    publisher already on, a pulled stream offered a publisher): the HTTP API answers 409."""


class BadStreamRequest(StreamError):
    """A stream request that is wrong whatever the state (invalid name, no claimed
    profile): the HTTP API answers 400."""


class NotFound(ExposeError):
    """An unknown stream, alert or session."""


class Runner(Protocol):
    """What the monitor asks of a stream's runner: a StreamRunner in this process, or one that
    stands in for a runner elsewhere (a worker process: RemoteRunner; a cluster's ingest node:
    cluster.ClusterRunner)."""

    name: str
    frames_received: int

    def health(self, now: float | None = None) -> StreamHealth: ...
    def thumbnail(self) -> str | None: ...
    def stop(self) -> None: ...
    async def run(self) -> None: ...


@dataclass
class _Stream:
    spec: StreamConfig
    runner: Runner | None = None
    task: asyncio.Task[None] | None = None
    whip: WhipSession | None = None
    policy: PolicyState = field(default_factory=PolicyState)
    last_score: ScoreData | None = None


@dataclass(frozen=True)
class StreamView:
    """What the API shows about a stream."""

    name: str
    url: str | None
    profile: str | None
    state: StreamState
    health: StreamHealth | None
    whip_session: str | None
    last_score: ScoreData | None


class LiveMonitor:
    def __init__(self, cfg: Config, *, scorer: Scorer, base_model_sha256: str, face_model: Path,
                 profiles: ProfileStore, store: LiveStore, sinks: list[AlertSink]) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.base_sha256 = base_model_sha256
        self.decision_sha256 = scorer.decision.sha256 if scorer.decision is not None else None
        self.face_model = face_model
        self.profiles = profiles
        self.store = store
        self.sinks = sinks
        self.policy = AlertPolicy(PolicySettings.from_config(cfg.alerts))
        # before any stream thread: few malloc arenas, video frames mapped on their own (live.heap)
        if cfg.live.heap_limits:
            heap.limit_heap()
        live = cfg.live
        self.features, self.identity = stream_settings(cfg, scorer.model.cfg.window, scorer.decision is not None)
        self.workers = None if live.workers == 0 else WorkerPool(
            live.workers, WorkerSettings(cfg.model_dump_json(), face_model, self.features, self.identity),
            on_window=self._on_window, on_phase=self._on_phase)
        self.loop = ScoringLoop(scorer, self._on_scores, max_batch=live.max_batch, linger_s=live.batch_linger_s)
        self._streams: dict[str, _Stream] = {}
        self._profiles: dict[str, Profile] = {}
        self._outbox: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()
        self.telemetry = Telemetry(lambda: self._streams, lambda: self.sinks)  # GET /metrics

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self._start_sinks()
        if self.workers is not None:
            self.workers.start()
        self._tasks = [asyncio.create_task(self.loop.run(), name="scoring-loop"),
                       asyncio.create_task(self._dispatch(), name="event-dispatch"),
                       asyncio.create_task(self._housekeeping(), name="housekeeping")]
        for spec in self._known_streams().values():
            try:
                self.add_stream(spec, persist=False)
            except ExposeError as err:
                log.error("stream %s not started: %s", spec.name, err)
        self._resume_episodes()

    async def _start_sinks(self) -> None:
        for sink in self.sinks:  # before any new event: a durable sink first takes what a crash kept from it
            if isinstance(sink, DurableSink):
                await sink.start(self.store)

    def _known_streams(self) -> dict[str, StreamConfig]:
        """The configured streams, then those added at run time earlier (the store's)."""
        specs = {s.name: s for s in self.cfg.streams}
        for name, body in self.store.list_streams().items():
            specs.setdefault(name, StreamConfig.model_validate(body))
        return specs

    def _resume_episodes(self) -> None:
        """Episodes still open when the last process stopped or died: on a pulled stream that is
        back the episode goes on (its next windows extend or end it: no second alert for the same
        episode); on any other stream (a WHIP session ends with its process, a stream removed)
        it ends now. Stream seconds start again with the source, so the evidence's times may
        step back at the restart."""
        now = time.time()
        for alert in self.store.active_alerts():
            entry = self._streams.get(alert.stream)
            if entry is not None and entry.spec.url is not None and entry.policy.alert is None:
                entry.policy = PolicyState(state="alert", alert=alert)
                log.info("stream %s: alert %s goes on after the restart", alert.stream, alert.id)
                continue
            last_t = alert.scores[-1][0] if alert.scores else alert.t_start
            ended = dataclasses.replace(alert, t_end=last_t, ended_at=now)
            self.store.put_alert(ended)
            self.emit(alert.stream, AlertChange(action="ended", alert=AlertDetail.of(ended)))

    async def stop(self) -> None:
        for name in list(self._streams):
            with contextlib.suppress(Exception):
                await self._stop_stream(name)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.workers is not None:
            await self.workers.close()
        while not self._outbox.empty():  # deliver what is already decided
            await self._deliver(self._outbox.get_nowait())
        for s in self.sinks:
            with contextlib.suppress(Exception):
                await s.close()

    # ---- events ----------------------------------------------------------------------
    def emit(self, stream: str | None, payload: EventPayload) -> None:
        """Store the event (assigning its seq) and queue it for the sinks, in seq order."""
        event = self.store.append_event(payload.event_type, stream, payload.model_dump(mode="json")).event()
        self._outbox.put_nowait(event)

    async def _dispatch(self) -> None:
        while True:
            await self._deliver(await self._outbox.get())

    async def _deliver(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                await sink.send(event)
            except Exception:  # one broken sink must not starve the others
                log.exception("sink %s failed on event %d", sink.name, event.seq)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            n = await asyncio.to_thread(self.store.prune_events, self.cfg.server.events_keep)
            if n:
                log.info("pruned %d old events", n)
            # What the stream threads freed (frames, buffers, tensors) stays in glibc's arenas
            # until trimmed: without this, RSS creeps up for hours though nothing leaks (live.heap)
            await asyncio.to_thread(heap.trim)

    # ---- profiles --------------------------------------------------------------------
    def profile(self, name: str) -> Profile:
        """The named profile, loaded once; raises ProfileError if unknown or for another model."""
        p = self._profiles.get(name)
        if p is None:
            p = self.profiles.load(name)
            p.check_base(self.base_sha256, self.decision_sha256)
            self._profiles[name] = p
        return p

    def profile_names(self) -> list[str]:
        return self.profiles.names()

    # ---- streams ---------------------------------------------------------------------
    def add_stream(self, spec: StreamConfig, persist: bool = True) -> StreamView:
        if spec.name in self._streams:
            raise StreamError(f"stream {spec.name!r} already exists; remove it first")
        if spec.profile is not None:
            self.profile(spec.profile)  # unknown profile: refuse now, not at the first window
        entry = _Stream(spec)
        self._streams[spec.name] = entry
        if spec.url is not None:
            self._start_runner(entry, self._pull_runner(spec))
        if persist:
            self.store.put_stream(spec.name, spec.model_dump(mode="json"))
        self.emit(spec.name, StreamAdded(action="added", url=spec.url, profile=spec.profile))
        return self.view(spec.name)

    async def remove_stream(self, name: str) -> None:
        if name not in self._streams:
            raise NotFound(f"unknown stream {name!r}")
        await self._stop_stream(name)
        self.store.delete_stream(name)
        self.emit(name, StreamRemoved(action="removed"))

    async def _stop_stream(self, name: str) -> None:
        entry = self._streams.pop(name)
        await self._stop_entry(entry)

    async def _stop_entry(self, entry: _Stream) -> None:
        if entry.whip is not None:
            await entry.whip.close()
            entry.whip = None
        if entry.runner is not None:
            entry.runner.stop()
        if entry.task is not None:
            entry.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(entry.task, timeout=5)
        entry.runner, entry.task = None, None

    def _watchdog(self, *, can_restart: bool, restart_on_end: bool, loop: bool = False) -> wd.WatchdogSettings:
        return watchdog_settings(self.cfg.live, can_restart=can_restart, restart_on_end=restart_on_end, loop=loop)

    def _pull_runner(self, spec: StreamConfig) -> Runner:
        if self.workers is not None:  # live.workers > 0: a worker process runs it
            return self.workers.assign(spec)
        return pull_runner(spec, self.cfg, face_model=self.face_model, live=self.features, identity=self.identity,
                           on_window=self._on_window, on_phase=self._on_phase)

    def _runner(self, name: str, kind: str, open_source: Any, *, url: str | None,
                watchdog: wd.WatchdogSettings) -> StreamRunner:
        return StreamRunner(name, kind, open_source, face_model=self.face_model,  # type: ignore[arg-type]
                            features=self.cfg.features, live=self.features, watchdog=watchdog,
                            on_window=self._on_window, on_phase=self._on_phase, url=url, identity=self.identity,
                            cache_dir=self.cfg.cache_dir)

    def _start_runner(self, entry: _Stream, runner: Runner) -> None:
        entry.runner = runner
        entry.task = asyncio.create_task(self._run(entry, runner), name=f"stream:{entry.spec.name}")

    async def _run(self, entry: _Stream, runner: Runner) -> None:
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream %s: runner failed", entry.spec.name)
        if entry.whip is not None and entry.runner is runner:  # the publisher went away
            session, entry.whip = entry.whip, None
            await session.close()
            if not self._configured(entry.spec.name):
                self._streams.pop(entry.spec.name, None)
            self.emit(entry.spec.name, StreamUnpublished(action="unpublished", session=session.id))

    def _configured(self, name: str) -> bool:
        return any(s.name == name for s in self.cfg.streams) or name in self.store.list_streams()

    def _on_phase(self, runner: Runner) -> None:
        h = runner.health()
        self.emit(runner.name, StreamPhase(action="phase", phase=h.phase, reason=h.reason, reconnects=h.reconnects))

    # ---- WHIP ------------------------------------------------------------------------
    async def start_whip(self, name: str, profile: str | None, offer: str) -> WhipSession:
        """Answer a publisher's offer for stream ``name``; the claimed profile comes from
        ``profile`` or the stream's configuration."""
        try:
            StreamConfig(name=name)  # the same name rule as configured streams
        except ValidationError:
            raise BadStreamRequest(f"invalid stream name {name!r}: 1-64 letters, digits, '_', '.', '-'") from None
        entry = self._streams.get(name)
        if entry is not None and entry.spec.url is not None:
            raise StreamError(f"stream {name!r} pulls from {entry.spec.url}; it takes no WHIP publisher")
        if entry is not None and entry.whip is not None:
            raise StreamError(f"stream {name!r} already has a publisher (DELETE its session first)")
        claimed = profile or (entry.spec.profile if entry is not None else None)
        if claimed is None:
            raise BadStreamRequest(
                f"no claimed profile for stream {name!r}: pass ?profile=NAME or configure the stream")
        self.profile(claimed)
        live = self.cfg.live
        session = await open_session(name, claimed, offer, max_side=self.cfg.features.max_side,
                                     queue_items=live.queue_items)
        if entry is None:
            entry = _Stream(StreamConfig(name=name, profile=claimed))
            self._streams[name] = entry
            self.emit(name, StreamAdded(action="added", url=None, profile=claimed))
        elif entry.spec.profile != claimed:
            entry.spec = entry.spec.model_copy(update={"profile": claimed})
        entry.whip = session
        entry.policy = PolicyState()
        runner = self._runner(name, "whip", lambda: session.source, url=None,
                              watchdog=self._watchdog(can_restart=False, restart_on_end=False))
        self._start_runner(entry, runner)
        self.emit(name, StreamPublishing(action="publishing", session=session.id, profile=claimed))
        return session

    async def end_whip(self, name: str, session_id: str) -> None:
        entry = self._streams.get(name)
        if entry is None or entry.whip is None or entry.whip.id != session_id:
            raise NotFound(f"no WHIP session {session_id!r} on stream {name!r}")
        await self._stop_entry(entry)
        if not self._configured(name):
            self._streams.pop(name, None)  # an ad-hoc WHIP stream lives as long as its session
        self.emit(name, StreamUnpublished(action="unpublished", session=session_id))

    # ---- scoring ---------------------------------------------------------------------
    def _on_window(self, window: Window) -> None:
        entry = self._streams.get(window.stream)
        if entry is None:
            return
        name = entry.spec.profile
        profile = None
        if name is not None:
            try:
                profile = self.profile(name)
            except ProfileError as err:
                log.warning("stream %s: %s", window.stream, err)
        self.loop.submit(QueuedWindow(window, profile))

    async def _on_scores(self, results: list[ScoredWindow]) -> None:
        now = time.time()
        self.telemetry.batch(len(results), self.loop.last_batch_s)
        for r in results:
            entry = self._streams.get(r.score.stream)
            if entry is None:
                continue
            prof = r.request.profile
            calib = prof.calibration if prof is not None else None
            runner = entry.runner
            step = self.policy.step(entry.policy, r.score, calib.alert_threshold if calib else math.inf, now,
                                    thumbnail=runner.thumbnail if runner is not None else (lambda: None))
            entry.policy = step.state
            s = r.score
            data = score_data(r, step)
            frame_latency = data.frame_latency_s
            entry.last_score = data
            self.telemetry.window(s.stream, s.status, frame_latency if frame_latency is not None else r.latency_s)
            self.emit(s.stream, data)
            if step.alert is not None:
                self.store.put_alert(step.alert)
                if step.change == "opened":
                    self.telemetry.alert_opened(step.alert.profile)
            for payload in alert_payloads(step):
                self.emit(s.stream, payload)

    # ---- alerts ----------------------------------------------------------------------
    def alert(self, alert_id: str) -> Alert:
        a = self.store.get_alert(alert_id)
        if a is None:
            raise NotFound(f"unknown alert {alert_id!r}")
        return a

    def acknowledge(self, alert_id: str, who: str) -> Alert:
        return self._transition(alert_id, lambda a: ack_alert(a, who, time.time()), "acknowledged")

    def close(self, alert_id: str, who: str, reason: str) -> Alert:
        return self._transition(alert_id, lambda a: close_alert(a, who, time.time(), reason), "closed")

    def _transition(self, alert_id: str, change: Callable[[Alert], Alert],
                    action: Literal["acknowledged", "closed"]) -> Alert:
        current = self.alert(alert_id)
        entry = self._streams.get(current.stream)
        live = entry.policy.alert if entry is not None else None
        if live is not None and live.id == alert_id:
            current = live  # the episode is still going: its newest evidence is in the policy state
        updated: Alert = change(current)
        if entry is not None and live is not None and live.id == alert_id:
            entry.policy = dataclasses.replace(entry.policy, alert=updated)
        self.store.put_alert(updated)
        self.emit(updated.stream, AlertChange(action=action, alert=AlertDetail.of(updated)))
        return updated

    # ---- exporters -------------------------------------------------------------------
    def exporters(self) -> list[tuple[AlertSink, str]]:
        """The configured exporters with their kind (the sinks the composition root added
        from ``cfg.exporters``, in order, are the last ones)."""
        n = len(self.cfg.exporters)
        configured = self.sinks[len(self.sinks) - n:] if n else []
        return [(s, c.kind) for s, c in zip(configured, self.cfg.exporters, strict=True)]

    def outbox(self, name: str) -> Outbox:
        for sink, _ in self.exporters():
            box = getattr(sink, "outbox", None)
            if sink.name == name and isinstance(box, Outbox):
                return box
        raise NotFound(f"no exporter {name!r} with an outbox")

    def wake_exporter(self, name: str) -> None:
        for sink, _ in self.exporters():
            if sink.name == name and hasattr(sink, "wake"):
                sink.wake()

    # ---- views -----------------------------------------------------------------------
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def view(self, name: str) -> StreamView:
        entry = self._streams.get(name)
        if entry is None:
            raise NotFound(f"unknown stream {name!r}")
        return StreamView(
            name=name, url=entry.spec.url, profile=entry.spec.profile, state=entry.policy.state,
            health=entry.runner.health() if entry.runner is not None else None,
            whip_session=entry.whip.id if entry.whip is not None else None, last_score=entry.last_score)

    def views(self) -> list[StreamView]:
        return [self.view(n) for n in list(self._streams)]
