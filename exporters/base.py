"""The one interface every alert sink implements, and what the exporters share: the
severity of an event, the per-exporter filter, and the verdict a SIEM reads."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from expose.monitor.alerts.events import (
    AlertChangeEvent,
    AlertUpdateEvent,
    AuditEvent,
    Event,
    ScoreEvent,
    StreamPhaseEvent,
)
from expose.monitor.config import Severity

SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
Verdict = Literal["authentic", "artificial", "inconclusive"]


@runtime_checkable
class AlertSink(Protocol):
    """Receives every event the monitor publishes, in ``seq`` order, on the event loop.

    ``send`` must not block the loop for long: a sink that talks to a slow peer
    buffers (bounded) and drops or disconnects, it never stalls ingest.
    """

    name: str

    async def send(self, event: Event) -> None: ...

    async def close(self) -> None: ...


class EventLog(Protocol):
    """The monitor's stored events, as a durable sink reads them at start (live.store.LiveStore)."""

    def last_seq(self) -> int: ...

    def events_after(self, seq: int, limit: int) -> list[Event]: ...


@runtime_checkable
class DurableSink(AlertSink, Protocol):
    """A sink that must not lose an event across a crash. It keeps its own cursor (the last
    ``seq`` it took); ``start``, called by the monitor before any new event, takes the stored
    events after that cursor (those a crash kept from it) and starts delivering."""

    async def start(self, log: EventLog) -> None: ...


@dataclass
class DeliveryCounts:
    """What a sink that talks to a peer has done since start (the monitor's /metrics reads
    them from each sink's ``counts`` attribute, where it has one)."""

    delivered: int = 0  # events the peer accepted
    retried: int = 0  # attempts that failed and will be tried again
    dead_lettered: int = 0  # given up: too many attempts, or the peer refused it for good (4xx)
    dropped: int = 0  # lost without a try: a bounded buffer overflowed


def severity_of(event: Event) -> Severity:
    """How much an event matters to a SOC: opening an alert is high; its end, its
    acknowledgement or closing, and a stream that failed for good are medium; an episode's
    per-window update, an audit entry and a stream going down (it reconnects) are low; the
    rest is info."""
    if isinstance(event, AlertChangeEvent):
        return "high" if event.action == "opened" else "medium"
    if isinstance(event, AlertUpdateEvent | AuditEvent):
        return "low"
    if isinstance(event, StreamPhaseEvent):
        return {"failed": "medium", "down": "low"}.get(event.phase, "info")  # type: ignore[return-value]
    return "info"


@dataclass(frozen=True)
class EventFilter:
    """What one exporter forwards: these types, at least this severity, these streams."""

    types: frozenset[str] = frozenset({"alert"})
    min_severity: Severity = "medium"
    streams: frozenset[str] | None = None

    @classmethod
    def of(cls, types: Sequence[str], min_severity: Severity, streams: Sequence[str] | None) -> EventFilter:
        return cls(frozenset(types), min_severity, frozenset(streams) if streams is not None else None)

    def accepts(self, event: Event) -> bool:
        if event.type not in self.types:
            return False
        if self.streams is not None and event.stream not in self.streams:
            return False
        return SEVERITIES.index(severity_of(event)) >= SEVERITIES.index(self.min_severity)


def _probability(value: float | None, threshold: float | None) -> float | None:
    """A probability-like score: 0.5 at the alert threshold, towards 1 above it. The
    logistic of (value - threshold) in units of |threshold| (at least 0.1); monotone in the
    distance, not calibrated (a SIEM may rank and threshold on it, not read it as odds)."""
    if value is None or threshold is None or not math.isfinite(value) or not math.isfinite(threshold):
        return None
    scale = max(abs(threshold), 0.1)
    return round(1.0 / (1.0 + math.exp(-4.0 * (value - threshold) / scale)), 4)


@dataclass(frozen=True)
class Assessment:
    """What a SIEM user of a meeting-deepfake product reads: a verdict and a score."""

    verdict: Verdict
    score: float | None  # probability-like, see _probability
    profile: str | None
    t0: float | None  # window span, stream seconds
    t1: float | None


def assess(event: Event) -> Assessment | None:
    """The verdict of a score or alert event; None for other events."""
    if isinstance(event, ScoreEvent):
        if event.status != "scored" or event.smoothed is None:
            return Assessment("inconclusive", None, event.profile, event.t0, event.t1)
        over = event.threshold is not None and event.smoothed > event.threshold
        return Assessment("artificial" if over else "authentic", _probability(event.smoothed, event.threshold),
                          event.profile, event.t0, event.t1)
    if isinstance(event, AlertChangeEvent | AlertUpdateEvent):
        a = event.alert
        return Assessment("artificial", _probability(a.mean_distance, a.threshold), a.profile, a.t_start,
                          a.t_end)
    return None
