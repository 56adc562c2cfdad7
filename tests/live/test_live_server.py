"""The live monitor end to end, with real parts: the real server on a loopback port, real
websocket clients, corpus clips as file streams and over WHIP from an aiortc publisher,
a real SQLite file that outlives a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import (
    SPEECH_CLIP,
    collect_events,
    live_config,
    publish_whip,
    running_server,
)

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)


def _alert_opened(msgs: list[dict[str, Any]]) -> bool:
    return any(m["type"] == "alert" and m.get("action") == "opened" for m in msgs)


def _alert_updated(msgs: list[dict[str, Any]]) -> bool:
    return any(m["type"] == "alert" and m.get("action") == "updated" for m in msgs)


def test_file_stream_scores_and_alerts_reach_the_websocket_and_survive_restart(
        tiny_model: Path, profiles_dir: Path, clip: Clip, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "realtime": False}])
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        msgs = asyncio.run(collect_events(srv.ws_url, _alert_updated, since=0, timeout=120))
        with srv.client() as http:
            alerts = http.get("/api/alerts").json()
            streams = http.get("/api/streams").json()
    seqs = [m["seq"] for m in msgs if m["type"] != "heartbeat"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    scores = [m for m in msgs if m["type"] == "score" and m["stream"] == "cam1"]
    assert scores, f"no score message in {[m['type'] for m in msgs]}"
    assert any(s["status"] == "scored" and isinstance(s["distance"], float) for s in scores)
    assert all({"t0", "t1", "state", "threshold", "ts"} <= s.keys() for s in scores)
    # the latency a console sees counts from the frame that completed the window, so it
    # includes the featuring time the scoring latency leaves out
    assert all(s["frame_latency_s"] is not None and s["latency_s"] <= s["frame_latency_s"] < 60 for s in scores)
    opened = next(m for m in msgs if m["type"] == "alert")
    alert = opened["alert"]
    assert alert["stream"] == "cam1" and alert["profile"] == "always" and alert["status"] == "open"
    assert alert["peak_distance"] >= alert["mean_distance"] and alert["scores"]
    assert alert["thumbnail_jpeg"] and alert["thumbnail_jpeg"].startswith("/9j/")  # base64 of a JPEG
    assert [a["id"] for a in alerts] == [alert["id"]] or alert["id"] in [a["id"] for a in alerts]
    # while the episode goes on, each window updates it: peak, mean and count, not the evidence again
    updated = next(m["alert"] for m in msgs if m["type"] == "alert" and m["action"] == "updated")
    assert updated["id"] == alert["id"] and updated["n_windows"] == alert["n_windows"] + 1
    assert "scores" not in updated and "thumbnail_jpeg" not in updated
    assert streams[0]["name"] == "cam1" and streams[0]["health"]["windows"] >= 1

    # a restart on the same database: the alert, the event log and its seq are still there
    with running_server(cfg.model_copy(update={"streams": []}), tiny_model, profiles_dir) as srv:
        with srv.client() as http:
            again = http.get(f"/api/alerts/{alert['id']}").json()
            assert again["id"] == alert["id"]
            acked = http.post(f"/api/alerts/{alert['id']}/ack", json={"by": "analyst"}).json()
            assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "analyst"
            closed = http.post(f"/api/alerts/{alert['id']}/close",
                               json={"by": "analyst", "reason": "test clip"}).json()
            assert closed["status"] == "closed" and closed["close_reason"] == "test clip"
            assert http.post(f"/api/alerts/{alert['id']}/ack", json={"by": "x"}).status_code == 409
        replay = asyncio.run(collect_events(
            srv.ws_url, lambda ms: any(m["type"] == "alert" and m.get("action") == "closed" for m in ms),
            since=seqs[0] - 1, timeout=30))
        recent = asyncio.run(collect_events(srv.ws_url, lambda ms: any(m["type"] == "heartbeat" for m in ms),
                                            since=-4, timeout=30))
    # since=-N: the last N events (each change also has its audit event)
    assert [(m["type"], m.get("action")) for m in recent if m["type"] != "heartbeat"] == [
        ("alert", "acknowledged"), ("audit", "alert.acknowledge"), ("alert", "closed"), ("audit", "alert.close")]
    replayed = [m["seq"] for m in replay if m["type"] != "heartbeat"]
    assert replayed[: len(seqs)] == seqs  # resume from the store: the same events, same seq
    assert replayed == sorted(replayed)


def test_whip_publisher_gets_scored_and_alerted(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                                tmp_path: Path) -> None:
    cfg = live_config(tmp_path)
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        def done(ms: list[dict[str, Any]]) -> bool:
            return _alert_opened(ms) and any(m["type"] == "score" and m["status"] == "scored" for m in ms)

        code, headers, msgs = asyncio.run(publish_whip(f"{srv.url}/whip/caller?profile=always", clip(SPEECH_CLIP),
                                                   until=done, ws_url=srv.ws_url, seconds=90))
        assert code == 201, headers
        assert headers["content-type"].startswith("application/sdp")
        assert headers["location"].startswith("/whip/caller/")
        scores = [m for m in msgs if m["type"] == "score" and m["stream"] == "caller"]
        assert scores and any(s["status"] == "scored" for s in scores), [s.get("reason") for s in scores]
        assert _alert_opened(msgs)
        assert any(m["type"] == "heartbeat" for m in msgs)
        with srv.client() as http:  # the session ended with DELETE: the ad-hoc stream is gone
            assert "caller" not in [s["name"] for s in http.get("/api/streams").json()]
            assert http.delete(headers["location"]).status_code == 404  # and its session with it
