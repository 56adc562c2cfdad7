"""The webhook exporter against a real HTTP receiver that verifies every Standard Webhooks
signature with the ``standardwebhooks`` library: delivery while the receiver is down at
first, retries (5xx, 429 with Retry-After), a 4xx dead-lettered, replay of what a crash kept
from the sink, and OCSF bodies. Events come from a real LiveStore file, as in the monitor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from receivers import free_port, webhook_receiver

from expose.exporters.base import EventFilter
from expose.exporters.webhook import WebhookSink, backoff_s, retry_after_s
from expose.monitor.alerts.events import AlertChange, AlertDetail, Event, ScoreData
from expose.monitor.alerts.policy import Alert
from expose.monitor.config import WebhookExporterConfig
from expose.monitor.live.store import LiveStore

SECRET = "whsec_m8gVuf80X2EOleN4UW1s/pZVKGHTTX/u"
pytestmark = pytest.mark.timeout(120)


def _alert_event(store: LiveStore, i: int, action: str = "opened") -> Event:
    alert = Alert(id=f"{i:016x}", stream="cam", profile="alice", threshold=1.0, opened_at=time.time(), t_start=0.0,
                  t_end=None, ended_at=None, peak_distance=2.0, mean_distance=1.5, n_windows=1,
                  scores=((2.56, 2.0),), reasons={"face": 1},
                  status="closed" if action == "closed" else "open")
    payload = AlertChange(action=action, alert=AlertDetail.of(alert))  # type: ignore[arg-type]
    return store.append_event("alert", "cam", payload.model_dump(mode="json")).event()


def _score_event(store: LiveStore) -> Event:
    s = ScoreData(profile="alice", t0=0.0, t1=2.56, status="scored", distance=0.5, smoothed=0.5, threshold=1.0,
                  z=0.1, identity=0.5, sync=None, fit=None, face_ratio=1.0, speech_ratio=1.0, reason="",
                  state="authentic", latency_s=0.1, alert_id=None)
    return store.append_event("score", "cam", s.model_dump(mode="json")).event()


def _sink(tmp: Path, url: str, **kw: Any) -> WebhookSink:
    cfg = WebhookExporterConfig(url=url, secret=SECRET, backoff_initial_s=0.1, backoff_max_s=0.3,  # type: ignore[arg-type]
                                **kw)
    return WebhookSink(cfg, EventFilter(), name="hook", state_db=tmp / "monitor.sqlite3")


async def _until(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_delivered_once_the_receiver_is_up_each_alert_once_and_signed(tmp_path: Path) -> None:
    port = free_port()
    # up later: first a 503, then a 429 with Retry-After, then accepted
    script = {0: (503, {}), 1: (429, {"Retry-After": "1"})}
    rx = webhook_receiver(SECRET, port, answer=lambda n, h, b: script.get(n, (200, {})))

    async def run() -> tuple[list[str], WebhookSink]:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, rx.url)
        await sink.start(store)
        sent = []
        for i in range(4):
            e = _alert_event(store, i)
            sent.append(e.seq)
            await sink.send(e)
            await sink.send(_score_event(store))  # not an alert: filtered out
        await _until(lambda: sink.counts.retried >= 2)  # refused connections while it is down
        assert sink.counts.delivered == 0
        rx.start()
        await _until(lambda: sink.outbox.counts("hook")["delivered"] == 4)
        await sink.close()
        store.close()
        return [f"msg_hook_{s}" for s in sent], sink

    try:
        ids, sink = asyncio.run(run())
    finally:
        rx.stop()
    assert rx.bad_signatures == 0
    got = rx.unique_payloads()
    assert sorted(got) == sorted(ids)  # exactly the alerts raised, once each after de-duplication by id
    assert {p["alert"]["id"] for p in got.values()} == {f"{i:016x}" for i in range(4)}
    assert all(p["type"] == "alert" and p["action"] == "opened" for p in got.values())
    statuses = [r.status for r in rx.requests]
    assert statuses[:2] == [503, 429] and statuses.count(200) == len(rx.accepted())
    assert rx.requests[2].at - rx.requests[1].at >= 0.95  # the 429's Retry-After: 1 was honoured
    assert sink.counts.retried >= 4 and sink.counts.dead_lettered == 0


def test_a_4xx_is_dead_lettered_not_retried_and_can_be_requeued(tmp_path: Path) -> None:
    bad: set[str] = set()
    rx = webhook_receiver(SECRET, answer=lambda n, h, b: (400, {}) if h["webhook-id"] in bad else (200, {}))
    rx.start()

    async def run() -> WebhookSink:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, rx.url)
        await sink.start(store)
        first = _alert_event(store, 1)
        bad.add(f"msg_hook_{first.seq}")
        await sink.send(first)
        await sink.send(_alert_event(store, 2))
        await _until(lambda: sink.outbox.counts("hook") == {"pending": 0, "delivered": 1, "dead": 1})
        dead = sink.outbox.entries("hook", "dead")
        assert [e.id for e in dead] == [f"msg_hook_{first.seq}"] and dead[0].attempts == 1
        assert "HTTP 400" in dead[0].last_error
        # re-queued by an operator once the receiver is fixed: delivered
        bad.clear()
        assert sink.outbox.retry("hook", dead[0].id)
        sink.wake()
        await _until(lambda: sink.outbox.counts("hook")["delivered"] == 2)
        await sink.close()
        return sink

    try:
        sink = asyncio.run(run())
    finally:
        rx.stop()
    assert sink.counts.dead_lettered == 1 and sink.counts.retried == 0
    assert [r.status for r in rx.requests] == [400, 200, 200]


def test_max_attempts_dead_letters_when_the_receiver_never_comes(tmp_path: Path) -> None:
    async def run() -> WebhookSink:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, f"http://127.0.0.1:{free_port()}/hook", max_attempts=3)
        await sink.start(store)
        await sink.send(_alert_event(store, 1))
        await _until(lambda: sink.outbox.counts("hook")["dead"] == 1)
        await sink.close()
        return sink

    sink = asyncio.run(run())
    assert sink.counts.retried == 2 and sink.counts.dead_lettered == 1 and sink.counts.delivered == 0


def test_what_a_crash_kept_from_the_sink_is_delivered_after_restart(tmp_path: Path) -> None:
    """Events stored but never handed to the sink (the process died in between) and rows
    queued but not delivered are both sent by the next process, each once."""
    rx = webhook_receiver(SECRET)

    async def first_process() -> list[int]:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, rx.url)  # the receiver is down: rows stay pending
        await sink.start(store)
        e1 = _alert_event(store, 1)
        await sink.send(e1)
        e2 = _alert_event(store, 2)  # stored, then "the crash": never reaches the sink
        # no close(): the process dies (its delivery task dies with this event loop)
        return [e1.seq, e2.seq]

    async def second_process() -> WebhookSink:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, rx.url)
        await sink.start(store)
        await _until(lambda: sink.outbox.counts("hook")["delivered"] == 2)
        await sink.close()
        return sink

    seqs = asyncio.run(first_process())
    rx.start()
    try:
        asyncio.run(second_process())
    finally:
        rx.stop()
    assert sorted(rx.unique_payloads()) == sorted(f"msg_hook_{s}" for s in seqs)
    assert len(rx.accepted()) == 2  # nothing twice


def test_ocsf_bodies_are_detection_findings(tmp_path: Path) -> None:
    rx = webhook_receiver(SECRET).start()

    async def run() -> None:
        store = LiveStore(tmp_path / "monitor.sqlite3")
        sink = _sink(tmp_path, rx.url, format="ocsf")
        await sink.start(store)
        await sink.send(_alert_event(store, 7))
        await sink.send(_alert_event(store, 7, "closed"))
        await _until(lambda: sink.outbox.counts("hook")["delivered"] == 2)
        await sink.close()

    try:
        asyncio.run(run())
    finally:
        rx.stop()
    bodies = sorted(rx.unique_payloads().values(), key=lambda b: b["activity_id"])
    assert [b["class_uid"] for b in bodies] == [2004, 2004]
    assert [(b["activity_id"], b["type_uid"]) for b in bodies] == [(1, 200401), (3, 200403)]
    assert {b["finding_info"]["uid"] for b in bodies} == {f"{7:016x}"}
    assert bodies[0]["severity_id"] == 4 and bodies[0]["metadata"]["product"]["name"] == "expose"
    assert bodies[0]["message"] == "face does not match the enrolled person"


def test_a_bad_secret_is_a_clear_error(tmp_path: Path) -> None:
    cfg = WebhookExporterConfig(url="http://127.0.0.1:1/x", secret="whsec_")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whsec_ followed by base64"):
        WebhookSink(cfg, EventFilter(), name="hook", state_db=tmp_path / "m.sqlite3")


def test_retry_after_and_backoff() -> None:
    import random

    assert retry_after_s("7", 0.0) == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert retry_after_s("soon", 0.0) is None and retry_after_s(None, 0.0) is None
    rng = random.Random(0)
    draws = [backoff_s(a, 1.0, 8.0, rng) for a in (1, 2, 3, 4, 5, 6) for _ in range(200)]
    by_attempt = [draws[i * 200:(i + 1) * 200] for i in range(6)]
    assert all(0 <= d <= 1.0 for d in by_attempt[0]) and all(0 <= d <= 8.0 for d in by_attempt[5])
    assert max(by_attempt[3]) > 4.0  # the cap grows 1, 2, 4, 8, ...: attempt 4 may wait past 4 s
