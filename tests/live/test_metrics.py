"""GET /metrics: the Prometheus exposition of a real server scoring a corpus clip, scraped
over HTTP with the token and read back with prometheus_client's own parser; and the
scrape-time collector against real sinks and stream entries."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from live_support import SPEECH_CLIP, live_config, running_server
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from expose.exporters.base import DeliveryCounts
from expose.exporters.jsonl import JsonlSink
from expose.monitor.config import StreamConfig
from expose.monitor.live.monitor import _Stream
from expose.monitor.live.telemetry import Telemetry

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)

# family name (as the parser gives it: counters without _total) -> type
FAMILIES = {
    "expose_info": "gauge",  # an Info is a gauge of 1 in the text format
    "expose_streams": "gauge",
    "expose_stream_sources": "gauge",
    "expose_frames_decoded": "counter",
    "expose_frames_dropped": "counter",
    "expose_windows_scored": "counter",
    "expose_windows_insufficient": "counter",
    "expose_scorer_batch_size": "histogram",
    "expose_scorer_batch_seconds": "histogram",
    "expose_alert_latency_seconds": "histogram",
    "expose_alerts_opened": "counter",
    "expose_exporter_deliveries": "counter",
}


def _families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fam: Metric, sample: str, **labels: str) -> float | None:
    """The value of the sample named ``sample`` with exactly these labels, None if absent."""
    for s in fam.samples:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    return None


def test_metrics_of_a_scored_file_stream(tiny_model: Path, profiles_dir: Path, clip: Clip, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "realtime": False},
        {"name": "nobody", "url": str(clip(SPEECH_CLIP)), "realtime": False},  # no claimed profile
        {"name": "lobby"}])  # a WHIP stream name without a publisher: no source
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        with srv.client(token=None) as anon:
            assert anon.get("/metrics").status_code == 401
        with srv.client(token="wrong") as wrong:
            assert wrong.get("/metrics").status_code == 401
        with srv.client() as http:
            deadline = time.monotonic() + 90
            while True:  # until an alert opened on cam1 ("always" is under any distance) and nobody's
                r = http.get("/metrics")  # windows came back (insufficient: no claimed profile)
                assert r.status_code == 200, r.text
                fams = _families(r.text)
                opened = _value(fams["expose_alerts_opened"], "expose_alerts_opened_total", profile="always")
                unclaimed = _value(fams["expose_windows_insufficient"], "expose_windows_insufficient_total",
                                   stream="nobody")
                if (opened and unclaimed) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            schema = http.get("/openapi.json").json()
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    assert opened == 1.0, f"no alert opened for 'always' in 90 s:\n{r.text}"
    assert {name: fams[name].type for name in FAMILIES if name in fams} == FAMILIES
    assert _value(fams["expose_info"], "expose_info", version=srv.service.app.version) == 1.0

    assert (_value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="cam1") or 0) > 0
    assert (unclaimed or 0) > 0, r.text
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="nobody") == 0
    assert _value(fams["expose_windows_insufficient"], "expose_windows_insufficient_total", stream="cam1") is not None
    decoded = _value(fams["expose_frames_decoded"], "expose_frames_decoded_total", stream="cam1")
    dropped = _value(fams["expose_frames_dropped"], "expose_frames_dropped_total", stream="cam1")
    assert decoded is not None and decoded > 0 and dropped is not None and 0 <= dropped <= decoded
    # the idle WHIP name has windows (none) but no source, so no frame series
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="lobby") == 0.0
    assert _value(fams["expose_frames_decoded"], "expose_frames_decoded_total", stream="lobby") is None

    for hist in ("expose_scorer_batch_size", "expose_scorer_batch_seconds", "expose_alert_latency_seconds"):
        count = _value(fams[hist], f"{hist}_count")
        assert count is not None and count > 0, hist
        assert _value(fams[hist], f"{hist}_bucket", le="+Inf") == count, hist
    windows = sum(s.value for f in ("expose_windows_scored", "expose_windows_insufficient") for s in fams[f].samples
                  if s.name.endswith("_total"))
    # every window scored came out of a batch, and each has its latency observed
    assert _value(fams["expose_scorer_batch_size"], "expose_scorer_batch_size_sum") == windows
    assert _value(fams["expose_alert_latency_seconds"], "expose_alert_latency_seconds_count") == windows

    states = {s.labels["state"]: s.value for s in fams["expose_streams"].samples}
    assert set(states) == {"authentic", "suspect", "alert", "insufficient"} and sum(states.values()) == 3
    assert states["alert"] >= 1  # cam1, with its alert open
    phases = {s.labels["phase"]: s.value for s in fams["expose_stream_sources"].samples}
    assert phases["idle"] == 1 and sum(phases.values()) == 3
    assert "/metrics" not in schema["paths"]  # Prometheus text, documented in docs/siem.md


def test_exporter_deliveries_are_read_from_the_sinks_counts_at_scrape_time(tmp_path: Path) -> None:
    counting = JsonlSink(tmp_path / "a.jsonl", name="siem")
    counts = DeliveryCounts(delivered=5, retried=2, dead_lettered=1, dropped=0)
    setattr(counting, "counts", counts)  # noqa: B010 - as a sink that talks to a peer has it
    silent = JsonlSink(tmp_path / "b.jsonl", name="file")  # no counts: not in the family
    telemetry = Telemetry(lambda: {}, lambda: [counting, silent])

    fam = _families(telemetry.scrape().decode())["expose_exporter_deliveries"]
    assert fam.type == "counter"
    got = {(s.labels["exporter"], s.labels["outcome"]): s.value for s in fam.samples}
    assert got == {("siem", "delivered"): 5, ("siem", "retried"): 2, ("siem", "dead_lettered"): 1,
                   ("siem", "dropped"): 0}

    counts.delivered += 3  # the sink counts on; the next scrape reads it, no bookkeeping in between
    counts.dropped += 1
    fam = _families(telemetry.scrape().decode())["expose_exporter_deliveries"]
    assert _value(fam, "expose_exporter_deliveries_total", exporter="siem", outcome="delivered") == 8
    assert _value(fam, "expose_exporter_deliveries_total", exporter="siem", outcome="dropped") == 1
    for sink in (counting, silent):
        asyncio.run(sink.close())


def test_per_stream_series_follow_the_streams_that_exist() -> None:
    streams = {"a": _Stream(StreamConfig(name="a")), "b": _Stream(StreamConfig(name="b"))}
    telemetry = Telemetry(lambda: streams, lambda: [])
    telemetry.window("a", "scored", 0.2)
    telemetry.window("a", "insufficient", 0.3)
    telemetry.window("b", "scored", 0.1)
    telemetry.batch(3, 0.04)
    telemetry.alert_opened("trump")

    fams = _families(telemetry.scrape().decode())
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="a") == 1
    assert _value(fams["expose_windows_insufficient"], "expose_windows_insufficient_total", stream="a") == 1
    assert _value(fams["expose_streams"], "expose_streams", state="insufficient") == 2
    assert _value(fams["expose_stream_sources"], "expose_stream_sources", phase="idle") == 2
    assert _value(fams["expose_alert_latency_seconds"], "expose_alert_latency_seconds_count") == 3
    assert _value(fams["expose_alert_latency_seconds"], "expose_alert_latency_seconds_bucket", le="0.25") == 2
    assert _value(fams["expose_scorer_batch_size"], "expose_scorer_batch_size_sum") == 3
    assert _value(fams["expose_alerts_opened"], "expose_alerts_opened_total", profile="trump") == 1

    del streams["b"]  # removed: its series go, and come back from zero if the name does
    fams = _families(telemetry.scrape().decode())
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="b") is None
    assert _value(fams["expose_streams"], "expose_streams", state="insufficient") == 1
    streams["b"] = _Stream(StreamConfig(name="b"))
    fams = _families(telemetry.scrape().decode())
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="b") == 0
    assert _value(fams["expose_windows_scored"], "expose_windows_scored_total", stream="a") == 1


def test_two_monitors_telemetry_do_not_clash() -> None:
    one, two = Telemetry(lambda: {}, lambda: []), Telemetry(lambda: {}, lambda: [])
    one.batch(4, 0.1)
    assert _value(_families(one.scrape().decode())["expose_scorer_batch_size"], "expose_scorer_batch_size_count") == 1
    assert _value(_families(two.scrape().decode())["expose_scorer_batch_size"], "expose_scorer_batch_size_count") == 0
