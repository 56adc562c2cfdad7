"""The monitor's Prometheus metrics (``GET /metrics``), on a registry of its own.

Two kinds of numbers:

- state the monitor already holds (streams by state and by source phase, each stream's
  frames, each exporter's ``DeliveryCounts``) is read when Prometheus scrapes, by a
  collector: there is no second copy to keep in step, so nothing can drift;
- what only happens in passing (windows scored, scorer batches, latencies, alerts opened)
  is counted by the LiveMonitor as it happens (``window``, ``batch``, ``alert_opened``).

Each Telemetry owns its ``CollectorRegistry`` (not prometheus_client's global one), so
several monitors in one process (the tests) do not clash.

Label cardinality is bounded: ``stream``, ``profile`` and ``exporter`` values are names an
operator configured (streams, profiles, ``[[exporters]]``) or a WHIP publisher holding the
token chose; ``state``, ``phase`` and ``outcome`` are closed sets. Per-stream series are
those of the streams that exist at scrape time: a removed stream's series go with it, so
ad-hoc WHIP stream names do not pile up.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from expose.exporters.base import AlertSink, DeliveryCounts
from expose.monitor import __version__
from expose.monitor.alerts.policy import PolicyState, StreamState
from expose.monitor.live import watchdog as wd
from expose.monitor.model.score import Status

if TYPE_CHECKING:
    from expose.monitor.live.runner import StreamHealth

IDLE = "idle"  # the phase of a stream without a source: a WHIP stream name with no publisher
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # windows per scorer call (live.max_batch, 64 by default)
BATCH_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MonitoredRunner(Protocol):
    """What the collector reads of a stream's runner (in this process or a worker's stand-in)."""

    frames_received: int

    def health(self, now: float | None = None) -> StreamHealth: ...


class MonitoredStream(Protocol):
    """What the collector reads of one of the monitor's streams (live.monitor._Stream)."""

    @property
    def policy(self) -> PolicyState: ...

    @property
    def runner(self) -> MonitoredRunner | None: ...


class Telemetry:
    """The metrics of one LiveMonitor. ``streams`` and ``sinks`` are read at each scrape."""

    def __init__(self, streams: Callable[[], Mapping[str, MonitoredStream]],
                 sinks: Callable[[], Iterable[AlertSink]]) -> None:
        self.registry = CollectorRegistry()
        self._streams = streams
        self._sinks = sinks
        self._lock = threading.Lock()
        self._windows: dict[str, dict[Status, int]] = {}  # stream -> status -> windows
        Info("expose", "The monitor's version.", registry=self.registry).info({"version": __version__})
        self.batch_size = Histogram("expose_scorer_batch_size", "Windows per batched scorer call.",
                                    buckets=BATCH_SIZES, registry=self.registry)
        self.batch_seconds = Histogram("expose_scorer_batch_seconds", "Duration of one batched scorer call.",
                                       buckets=BATCH_SECONDS, registry=self.registry)
        self.latency = Histogram("expose_alert_latency_seconds",
                                 "From the arrival of the frame that completed a window to its score event "
                                 "(ScoreData.frame_latency_s; latency_s where the source stamps no arrival).",
                                 buckets=LATENCY_SECONDS, registry=self.registry)
        self.alerts_opened = Counter("expose_alerts_opened", "Alerts opened, by claimed profile.", ["profile"],
                                     registry=self.registry)
        self.registry.register(_ScrapeTime(self))

    # ---- what happens in passing (called by the LiveMonitor) ---------------------------
    def window(self, stream: str, status: Status, latency_s: float) -> None:
        """One window of ``stream`` came back from the scorer."""
        with self._lock:
            counts = self._windows.setdefault(stream, {"scored": 0, "insufficient": 0})
            counts[status] += 1
        self.latency.observe(latency_s)

    def batch(self, size: int, seconds: float | None) -> None:
        """One batched scorer call: its windows and its duration."""
        self.batch_size.observe(size)
        if seconds is not None:
            self.batch_seconds.observe(seconds)

    def alert_opened(self, profile: str) -> None:
        self.alerts_opened.labels(profile=profile).inc()

    # ---- scrape ------------------------------------------------------------------------
    def scrape(self) -> bytes:
        """The Prometheus text exposition of every metric (serve it as CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)

    def _window_counts(self, present: Iterable[str]) -> dict[str, dict[Status, int]]:
        """Each present stream's window counts (zeros if none yet); forgets the streams gone."""
        with self._lock:
            keep = {name: self._windows.get(name, {"scored": 0, "insufficient": 0}) for name in present}
            for name in set(self._windows) - set(keep):
                del self._windows[name]
            return {name: dict(c) for name, c in keep.items()}


class _ScrapeTime(Collector):
    """The metrics read from the monitor at scrape time."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[Metric]:
        streams = dict(self._t._streams())
        by_state = dict.fromkeys(get_args(StreamState), 0)
        by_phase = dict.fromkeys((*get_args(wd.Phase), IDLE), 0)
        decoded = CounterMetricFamily("expose_frames_decoded", "Video frames decoded from the stream's source "
                                      "(those the featurizer took plus those the bounded queue dropped).",
                                      labels=["stream"])
        dropped = CounterMetricFamily("expose_frames_dropped", "Video frames dropped by the source queue "
                                      "(the featurizer fell behind).", labels=["stream"])
        for name, s in streams.items():
            by_state[s.policy.state] = by_state.get(s.policy.state, 0) + 1
            runner = s.runner
            phase = runner.health().phase if runner is not None else IDLE
            by_phase[phase] = by_phase.get(phase, 0) + 1
            if runner is not None:  # a new publisher's runner starts from 0: a counter reset
                lost = runner.health().dropped_frames
                decoded.add_metric([name], runner.frames_received + lost)
                dropped.add_metric([name], lost)
        gauge = GaugeMetricFamily("expose_streams", "Streams by alert-policy state.", labels=["state"])
        for state, n in by_state.items():
            gauge.add_metric([state], n)
        yield gauge
        gauge = GaugeMetricFamily("expose_stream_sources", "Streams by their source's phase (idle: a WHIP "
                                  "stream name without a publisher).", labels=["phase"])
        for phase, n in by_phase.items():
            gauge.add_metric([phase], n)
        yield gauge
        yield decoded
        yield dropped

        scored = CounterMetricFamily("expose_windows_scored", "Windows scored against the claimed profile.",
                                     labels=["stream"])
        insufficient = CounterMetricFamily("expose_windows_insufficient", "Windows with too little face or "
                                           "speech to score, or no claimed profile.", labels=["stream"])
        for name, counts in self._t._window_counts(streams).items():
            scored.add_metric([name], counts["scored"])
            insufficient.add_metric([name], counts["insufficient"])
        yield scored
        yield insufficient

        deliveries = CounterMetricFamily("expose_exporter_deliveries", "Events by exporter and outcome: "
                                         "delivered, retried (an attempt failed, tried again), dead_lettered "
                                         "(given up), dropped (a bounded buffer overflowed).",
                                         labels=["exporter", "outcome"])
        for sink in list(self._t._sinks()):
            sent = getattr(sink, "counts", None)  # only sinks that talk to a peer count deliveries
            if isinstance(sent, DeliveryCounts):
                for f in dataclasses.fields(sent):
                    deliveries.add_metric([sink.name, f.name], getattr(sent, f.name))
        yield deliveries

    def describe(self) -> Iterator[Metric]:
        """The families without reading the monitor (registration checks names by this)."""
        for name, kind in (("expose_streams", GaugeMetricFamily), ("expose_stream_sources", GaugeMetricFamily),
                           ("expose_frames_decoded", CounterMetricFamily),
                           ("expose_frames_dropped", CounterMetricFamily),
                           ("expose_windows_scored", CounterMetricFamily),
                           ("expose_windows_insufficient", CounterMetricFamily),
                           ("expose_exporter_deliveries", CounterMetricFamily)):
            yield kind(name, "")
