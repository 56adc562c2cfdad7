"""Many nodes on one Redis (cluster.redis_url): ingest nodes, scorer nodes and consoles.

* **Ingest node** (``expose node ingest``): runs pulled streams (source -> features ->
  windows), as many as it is given, and adds every window to the ``windows`` stream. Which
  node runs which stream is recorded in Redis (``assign``). Each node renews a heartbeat;
  a node silent for ``node_ttl_s`` is dead, and the live node with the fewest streams takes
  its streams over (a compare-and-set on the assignment: one node wins), starting them from
  their sources with the stream clock going on from the last window's end.
* **Scorer node** (``expose node score``, one per GPU): reads windows through the consumer
  group ``scorers``, scores a batch of them in one pass, and for each window, in ONE
  MULTI/EXEC transaction that watches the stream's policy key: stores the new policy state,
  appends the score (and alert) events, and acknowledges the window. So a window is either
  wholly applied or not at all: a scorer that dies leaves its windows pending, another
  claims them after ``claim_idle_s`` (XAUTOCLAIM), and no window reaches an alert twice.
  Two scorers scoring windows of one stream race on the policy key (the loser retries); a
  window older than one its stream already applied is dropped and counted (``stats``), as
  the one-node loop drops the oldest windows when it falls behind.
* **Console** (``expose serve`` with cluster.redis_url): the API, dashboard, websocket and
  exporters. Adding a pulled stream registers it in Redis; the console's WHIP streams run in
  it (their media arrive on its WebRTC connections) and add their windows like an ingest
  node. Every event, its own included, goes through the ``events`` stream; the console
  follows it into its own store, recording with each event the Redis entry id it came from
  (one transaction; the event's ``origin``), so websocket ``?since=SEQ`` resumes work as on
  one node, ``?since=ORIGIN`` works on any console, and a restarted console reads on where it
  stopped. Several consoles can follow one cluster,
  each with its own seq numbering.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import redis

from expose.exporters.base import AlertSink
from expose.monitor.alerts.events import AlertChange, AlertDetail, EventPayload, ScoreData
from expose.monitor.alerts.policy import Alert, AlertPolicy, PolicySettings, PolicyState
from expose.monitor.config import Config, StreamConfig
from expose.monitor.errors import ConfigError, ExposeError
from expose.monitor.features.stream import LiveFeatureSettings
from expose.monitor.features.windows import Window
from expose.monitor.live import heap
from expose.monitor.live.bus import GROUP, BadEntry, Bus, decode_event, decode_window, event_fields
from expose.monitor.live.monitor import LiveMonitor, NotFound, Runner, _Stream
from expose.monitor.live.runner import StreamHealth, StreamRunner, pull_runner
from expose.monitor.live.scoring import QueuedWindow, ScoredWindow, alert_payloads, score_data, score_windows
from expose.monitor.live.store import CLUSTER_CURSOR, LiveStore
from expose.monitor.media.whip import WhipSession
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import Scorer
from expose.profiles.store import Profile, ProfileError, ProfileStore

log = logging.getLogger(__name__)


def node_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


# ---- ingest node ------------------------------------------------------------------------

class IngestNode:
    """Runs the pulled streams assigned to it; takes over those of dead nodes."""

    def __init__(self, cfg: Config, bus: Bus, *, face_model: Path, features: LiveFeatureSettings, identity: bool,
                 node: str | None = None) -> None:
        self.cfg, self.bus = cfg, bus
        self.node = node or node_id("ingest")
        self.face_model, self.features, self.identity = face_model, features, identity
        self.runners: dict[str, tuple[StreamRunner, asyncio.Task[None]]] = {}
        self._profiles: dict[str, str | None] = {}
        self._started = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("ingest node %s on %s", self.node, self.cfg.cluster.redis_url)
        trimmed = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self._beat)
                    await self._reconcile()
                except redis.RedisError as err:  # Redis away: keep the streams, try again
                    log.warning("ingest node %s: Redis: %s", self.node, err)
                if time.monotonic() - trimmed > 60:
                    await asyncio.to_thread(heap.trim)
                    trimmed = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.cfg.cluster.heartbeat_s)
        finally:
            for name in list(self.runners):
                await self._stop(name)
            with contextlib.suppress(redis.RedisError):
                self.bus.drop_node(self.node)  # the others take its streams over now, not after the TTL

    def _beat(self) -> None:
        self.bus.heartbeat(self.node, {"pid": os.getpid(), "host": socket.gethostname(),
                                       "streams": sorted(self.runners)})
        self.bus.report({n: r for n, (r, _) in self.runners.items()})

    async def _reconcile(self) -> None:
        registry = await asyncio.to_thread(self.bus.streams)
        assign = await asyncio.to_thread(self.bus.assignments)
        alive = await asyncio.to_thread(self.bus.alive_nodes)
        alive.add(self.node)
        for name in list(self.runners):  # removed, or taken by another node (this one was presumed dead)
            if name not in registry or assign.get(name) != self.node:
                log.info("ingest node %s: stream %s is no longer ours", self.node, name)
                await self._stop(name)
        counts = Counter({n: 0 for n in alive})
        counts.update(a for n, a in assign.items() if n in registry and a in alive)
        # Nodes started together first see each other's heartbeats: one would otherwise take all
        settled = time.monotonic() - self._started >= 2 * self.cfg.cluster.heartbeat_s
        if not settled and not any(a == self.node for a in assign.values()):
            return
        if (settled and counts[self.node] > min(counts.values()) + 1 and self.runners
                and await asyncio.to_thread(self.bus.release_stream, name := max(self.runners), self.node)):
            # a node joined or came back: hand one stream over per beat until balanced
            log.info("ingest node %s: hands stream %s over (%d streams here, %d on the least busy node)",
                     self.node, name, counts[self.node], min(counts.values()))
            await self._stop(name)
            return
        for name, spec in sorted(registry.items()):
            owner = assign.get(name)
            if owner == self.node:
                if name not in self.runners:
                    await self._start(spec)
            elif ((owner is None or owner not in alive) and counts[self.node] <= min(counts.values())
                  and await asyncio.to_thread(self.bus.claim_stream, name, owner, self.node)):
                log.info("ingest node %s: takes stream %s (was %s)", self.node, name, owner or "unassigned")
                counts[self.node] += 1
                await self._start(spec)

    async def _start(self, spec: StreamConfig) -> None:
        clock = await asyncio.to_thread(self.bus.clock, spec.name)
        self._profiles[spec.name] = spec.profile

        def on_window(w: Window) -> None:
            try:
                self.bus.put_window(w, self._profiles.get(w.stream))
            except redis.RedisError as err:  # lost like a window the one-node loop drops when behind
                log.warning("stream %s: window t1=%.2f not published: %s", w.stream, w.t1, err)

        def on_phase(r: StreamRunner) -> None:
            h = r.health()
            with contextlib.suppress(redis.RedisError):
                self.bus.put_event("stream", r.name, {"action": "phase", "phase": h.phase, "reason": h.reason,
                                                      "reconnects": h.reconnects})

        runner = pull_runner(spec, self.cfg, face_model=self.face_model, live=self.features, identity=self.identity,
                             on_window=on_window, on_phase=on_phase, clock_start_s=clock)
        self.runners[spec.name] = (runner, asyncio.create_task(self._run(runner), name=f"stream:{spec.name}"))

    async def _run(self, runner: StreamRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("stream %s: runner failed", runner.name)

    async def _stop(self, name: str) -> None:
        runner, task = self.runners.pop(name)
        runner.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=5)


# ---- scorer node ------------------------------------------------------------------------

class ScorerNode:
    """Scores the cluster's windows in batches and applies each stream's alert policy."""

    def __init__(self, cfg: Config, bus: Bus, scorer: Scorer, profiles: ProfileStore, *, base_sha256: str,
                 node: str | None = None) -> None:
        self.cfg, self.bus, self.scorer, self.profiles = cfg, bus, scorer, profiles
        self.base_sha256 = base_sha256
        self.decision_sha256 = scorer.decision.sha256 if scorer.decision is not None else None
        self.node = node or node_id("scorer")
        self.policy = AlertPolicy(PolicySettings.from_config(cfg.alerts))
        self._profiles: dict[str, Profile] = {}
        self.scored = 0
        self.stale = 0

    def run(self, stop: threading.Event) -> None:
        log.info("scorer node %s on %s", self.node, self.cfg.cluster.redis_url)
        self.bus.ensure_group()
        while not stop.is_set():
            try:
                entries = self.bus.read_windows(self.node, count=self.cfg.live.max_batch, block_ms=1000)
                if entries:
                    self.handle(entries)
            except redis.RedisError as err:
                log.warning("scorer node %s: Redis: %s", self.node, err)
                stop.wait(1.0)

    def _profile(self, name: str) -> Profile | None:
        p = self._profiles.get(name)
        if p is None:
            try:
                p = self.profiles.load(name)
                p.check_base(self.base_sha256, self.decision_sha256)
            except ProfileError as err:
                log.warning("profile %s: %s", name, err)
                return None
            self._profiles[name] = p
        return p

    def handle(self, entries: list[tuple[bytes, Any]]) -> None:
        batch: list[tuple[bytes, QueuedWindow]] = []
        for entry_id, fields in entries:
            try:
                window, profile = decode_window(fields)
            except BadEntry as err:
                log.error("window %s set aside: %s", entry_id.decode(), err)
                self.bus.dead_letter(entry_id, fields, str(err))
                continue
            batch.append((entry_id, QueuedWindow(window, self._profile(profile) if profile else None)))
        if not batch:
            return
        started = time.monotonic()
        try:
            scores = score_windows(self.scorer, [q for _, q in batch])
        except Exception:  # one window the scorer cannot take must not fail its batch for ever
            log.exception("scoring a batch of %d windows failed; scoring them one by one", len(batch))
            batch, scores = self._one_by_one(batch, entries)
        latency = time.monotonic() - started
        done = sorted(zip(batch, scores, strict=True), key=lambda x: (x[1].stream, x[1].t1))
        for (entry_id, q), score in done:
            self._apply(entry_id, ScoredWindow(q, score, latency))
        self.scored += len(done)

    def _one_by_one(self, batch: list[tuple[bytes, QueuedWindow]], entries: list[tuple[bytes, Any]],
                    ) -> tuple[list[tuple[bytes, QueuedWindow]], list[Score]]:
        fields = dict(entries)
        kept, scores = [], []
        for entry_id, q in batch:
            try:
                scores.append(score_windows(self.scorer, [q])[0])
                kept.append((entry_id, q))
            except Exception as err:
                log.error("window %s set aside: the scorer failed on it: %s", entry_id.decode(), err)
                self.bus.dead_letter(entry_id, fields[entry_id], f"the scorer failed on it: {err}")
        return kept, scores

    def _apply(self, entry_id: bytes, r: ScoredWindow) -> None:
        """The window's policy step, its events and its acknowledgement: all or nothing."""
        s, key = r.score, self.bus.policy_key(r.score.stream)
        calib = r.request.profile.calibration if r.request.profile is not None else None
        threshold: float | Callable[[int], float] = calib.alert_threshold if calib else math.inf
        with self.bus.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state, last_t1 = Bus.decode_policy(pipe.get(key))  # type: ignore[arg-type]
                    if s.t1 <= last_t1:  # a later window of the stream was applied first
                        pipe.multi()
                        pipe.xack(self.bus.k_windows, GROUP, entry_id)
                        pipe.hincrby(self.bus.k_stats, "stale_windows", 1)
                        pipe.execute()
                        self.stale += 1
                        return
                    step = self.policy.step(state, s, threshold, time.time(),
                                            thumbnail=lambda: self.bus.thumbnail(s.stream))
                    data = score_data(r, step)
                    pipe.multi()
                    pipe.set(key, Bus.encode_policy(step.state, s.t1))
                    self._xadd(pipe, "score", s.stream, data.model_dump(mode="json"))
                    for payload in alert_payloads(step):
                        assert step.alert is not None
                        self._xadd(pipe, "alert", s.stream, payload.model_dump(mode="json"), step.alert.to_dict())
                    pipe.xack(self.bus.k_windows, GROUP, entry_id)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # another scorer (or a console's acknowledgement) moved the state: again

    def _xadd(self, pipe: Any, type: str, stream: str, data: dict[str, Any],
              alert: dict[str, Any] | None = None) -> None:
        pipe.xadd(self.bus.k_events, event_fields(type, stream, data, alert), maxlen=self.bus.section.events_maxlen,
                  approximate=True)


# ---- console ------------------------------------------------------------------------------

class ClusterRunner:
    """Stands in the console for a pulled stream running on some ingest node: its health and
    thumbnail are what that node last reported to Redis."""

    kind = "pull"

    def __init__(self, spec: StreamConfig) -> None:
        self.name, self.url, self.spec = spec.name, spec.url, spec
        self._done = asyncio.Event()
        self._health = StreamHealth(
            name=spec.name, kind="pull", url=spec.url, phase="connecting", stalled=False,
            reason="waiting for an ingest node", last_frame_age_s=None, fps=0.0, reconnects=0, dropped_frames=0,
            skipped_windows=0, behind=False, windows=0, uptime_s=0.0)
        self._thumbnail: str | None = None
        self.frames_received = 0

    def health(self, now: float | None = None) -> StreamHealth:
        return self._health

    def thumbnail(self) -> str | None:
        return self._thumbnail

    def stop(self) -> None:
        self._done.set()

    async def run(self) -> None:
        await self._done.wait()

    def update(self, reported: dict[str, Any], thumbnail: str | None) -> None:
        fields = {f.name for f in dataclasses.fields(StreamHealth)}
        with contextlib.suppress(TypeError, ValueError):
            self._health = StreamHealth(**{k: v for k, v in reported.items() if k in fields})
            self.frames_received = int(reported.get("frames", 0))
        if thumbnail is not None:
            self._thumbnail = thumbnail


class ClusterMonitor(LiveMonitor):
    """The LiveMonitor of a console: pulled streams are registered in Redis, windows scored by
    scorer nodes, every event read back from the cluster's events stream."""

    def __init__(self, cfg: Config, *, scorer: Scorer, base_model_sha256: str, face_model: Path,
                 profiles: ProfileStore, store: LiveStore, sinks: list[AlertSink], bus: Bus) -> None:
        if cfg.live.workers:
            raise ConfigError("live.workers and cluster.redis_url exclude each other: a cluster runs pulled "
                              "streams on `expose node ingest` processes")
        super().__init__(cfg, scorer=scorer, base_model_sha256=base_model_sha256, face_model=face_model,
                         profiles=profiles, store=store, sinks=sinks)
        self.bus = bus

    async def start(self) -> None:
        await self._start_sinks()
        self._tasks = [asyncio.create_task(self._dispatch(), name="event-dispatch"),
                       asyncio.create_task(self._housekeeping(), name="housekeeping"),
                       asyncio.create_task(self._follow(), name="cluster-follow")]
        specs = self._known_streams()
        for name, spec in (await asyncio.to_thread(self.bus.streams)).items():  # added on another console
            specs.setdefault(name, spec)
        for spec in specs.values():
            try:
                self._adopt(spec, register=True)
            except ExposeError as err:
                log.error("stream %s not started: %s", spec.name, err)
        # no episode to resume: the policy states live in Redis, with the scorers

    async def stop(self) -> None:
        await super().stop()  # the local proxies only: the cluster's streams run on
        self.bus.close()

    def _adopt(self, spec: StreamConfig, *, register: bool) -> None:
        """A pulled stream known to the cluster, shown by this console (no event)."""
        if spec.name in self._streams:
            return
        if spec.profile is not None:
            self.profile(spec.profile)
        entry = _Stream(spec)
        self._streams[spec.name] = entry
        if register:
            self.bus.register_stream(spec)
        self._start_runner(entry, ClusterRunner(spec))

    # ---- overrides: where streams run and where events go -------------------------------
    def _pull_runner(self, spec: StreamConfig) -> Runner:
        self.bus.register_stream(spec)
        return ClusterRunner(spec)

    async def remove_stream(self, name: str) -> None:
        entry = self._streams.get(name)
        if entry is None:
            raise NotFound(f"unknown stream {name!r}")
        if entry.spec.url is not None:
            await asyncio.to_thread(self.bus.unregister_stream, name)
        await super().remove_stream(name)

    def emit(self, stream: str | None, payload: EventPayload) -> None:
        # stored when it comes back from Redis (_take): one order of events for every console
        self.bus.put_event(payload.event_type, stream, payload.model_dump(mode="json"))

    async def start_whip(self, name: str, profile: str | None, offer: str) -> WhipSession:
        await asyncio.to_thread(self.bus.reset_policy, name)  # before its first window can be scored
        return await super().start_whip(name, profile, offer)

    def _on_window(self, window: Window) -> None:  # the console's own (WHIP) streams
        entry = self._streams.get(window.stream)
        if entry is None:
            return
        try:
            self.bus.put_window(window, entry.spec.profile)
        except redis.RedisError as err:
            log.warning("stream %s: window not published: %s", window.stream, err)

    def _transition(self, alert_id: str, change: Callable[[Alert], Alert],
                    action: Literal["acknowledged", "closed"]) -> Alert:
        """Acknowledge / close: in the policy state in Redis too while the episode is on (else
        the scorer's next update would undo it)."""
        current = self.alert(alert_id)
        key = self.bus.policy_key(current.stream)
        with self.bus.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state, last_t1 = Bus.decode_policy(pipe.get(key))  # type: ignore[arg-type]
                    live = state.alert if state.alert is not None and state.alert.id == alert_id else None
                    updated = change(live if live is not None else current)
                    pipe.multi()
                    if live is not None:
                        pipe.set(key, Bus.encode_policy(dataclasses.replace(state, alert=updated), last_t1))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.store.put_alert(updated)
        self.bus.put_event("alert", updated.stream,
                           AlertChange(action=action, alert=AlertDetail.of(updated)).model_dump(mode="json"),
                           updated.to_dict())
        return updated

    # ---- following the cluster ------------------------------------------------------------
    async def _follow(self) -> None:
        cursor = self.store.meta(CLUSTER_CURSOR) or "0"
        polled = 0.0
        while True:
            try:
                entries = await asyncio.to_thread(self.bus.read_events, cursor, block_ms=500)
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    self._take(entry_id, fields)
                if time.monotonic() - polled >= 1.0:
                    polled = time.monotonic()
                    await self._poll_health()
            except redis.RedisError as err:
                log.warning("console: Redis: %s", err)
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("console: following the cluster's events failed")
                await asyncio.sleep(1.0)

    def _take(self, entry_id: bytes, fields: Any) -> None:
        try:
            e = decode_event(entry_id, fields)
            stored = self.store.append_followed(e.type, e.stream, e.data, e.ts, CLUSTER_CURSOR, e.id)  # type: ignore[arg-type]
            event = stored.event()
        except (BadEntry, ValueError) as err:
            log.error("cluster event %s skipped: %s", entry_id.decode(), err)
            return
        if e.alert is not None:
            alert = Alert.from_dict(e.alert)
            self.store.put_alert(alert)
            if e.data.get("action") == "opened":
                self.telemetry.alert_opened(alert.profile)
        entry = self._streams.get(e.stream) if e.stream else None
        if isinstance(event.data, ScoreData) and entry is not None:
            entry.last_score = event.data
            entry.policy = PolicyState(state=event.data.state)
            lat = event.data.frame_latency_s if event.data.frame_latency_s is not None else event.data.latency_s
            self.telemetry.window(e.stream or "", event.data.status, lat or 0.0)
        elif e.type == "stream" and e.stream and e.data.get("action") == "added" and e.data.get("url"):
            with contextlib.suppress(ExposeError, ValueError):  # added on another console
                self._adopt(StreamConfig(name=e.stream, url=e.data["url"], profile=e.data.get("profile")),
                            register=False)
        elif (e.type == "stream" and e.stream and e.data.get("action") == "removed" and entry is not None
              and entry.spec.url is not None and entry.runner is not None):  # removed on another console
            entry.runner.stop()
            self._streams.pop(e.stream, None)
        self._outbox.put_nowait(event)

    async def _poll_health(self) -> None:
        # the console's own (WHIP) streams: their thumbnails for the scorers' alerts, as ingest nodes report
        own = {n: e.runner for n, e in self._streams.items() if isinstance(e.runner, StreamRunner)}
        if own:
            await asyncio.to_thread(self.bus.report, own)
        healths = await asyncio.to_thread(self.bus.healths)
        for name, entry in self._streams.items():
            runner = entry.runner
            if isinstance(runner, ClusterRunner) and name in healths:
                thumb = await asyncio.to_thread(self.bus.thumbnail, name)
                runner.update(healths[name], thumb)

