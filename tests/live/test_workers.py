"""Streams in worker processes (live.workers = 2) on the real server: both workers feature
their streams and one scorer scores them; a worker killed with SIGKILL is started again and
its stream resumes (its stream clock going on: no window time twice, in the scores or in the
alert's evidence)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, collect_events, live_config, running_server

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(400)
RESUME_WITHIN_S = 60.0  # spawn + imports + MediaPipe + the first window, on a loaded 2-core machine


def _scores(msgs: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "score" and m["stream"] == stream]


def test_two_workers_and_a_killed_one_resumes(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                              tmp_path: Path) -> None:
    media = str(clip(SPEECH_CLIP))
    cfg = live_config(tmp_path, live={"workers": 2, "batch_linger_s": 0.01}, streams=[
        {"name": "cam1", "url": media, "profile": "always", "realtime": True, "loop": True},
        {"name": "cam2", "url": media, "profile": "trump", "realtime": True, "loop": True}])
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        pool = srv.service.monitor.workers
        assert pool is not None and len(pool.pids()) == 2
        first = asyncio.run(collect_events(
            srv.ws_url, lambda ms: len(_scores(ms, "cam1")) >= 2 and len(_scores(ms, "cam2")) >= 2, since=0,
            timeout=180))
        assert len(_scores(first, "cam1")) >= 2 and len(_scores(first, "cam2")) >= 2
        w1, w2 = pool.worker_of("cam1"), pool.worker_of("cam2")
        assert w1 is not None and w2 is not None and w1 != w2  # one stream per worker
        assert os.getpid() not in pool.pids()
        victim = pool.pids()[w1]
        assert victim is not None
        last = max(m["seq"] for m in first if m["type"] != "heartbeat")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        after = asyncio.run(collect_events(srv.ws_url, lambda ms: len(_scores(ms, "cam1")) >= 3, since=last,
                                           timeout=RESUME_WITHIN_S + 60))
        resumed_s = time.monotonic() - killed_at
        with srv.client() as http:
            health = http.get("/api/streams/cam1/health").json()
            alerts = http.get("/api/alerts", params={"stream": "cam1"}).json()
        assert pool.restarts == 1 and pool.pids()[w1] != victim
    cam1_after = _scores(after, "cam1")
    assert len(cam1_after) >= 3, f"cam1 did not resume within {resumed_s:.0f} s"
    assert resumed_s < RESUME_WITHIN_S + 60
    phases = [m["phase"] for m in after if m["type"] == "stream" and m.get("action") == "phase" and
              m["stream"] == "cam1"]
    assert phases[:1] == ["down"] and "live" in phases
    assert _scores(after, "cam2")  # the other worker's stream went on meanwhile
    # the stream clock goes on: no window time twice
    t1s = [m["t1"] for m in _scores(first, "cam1") + cam1_after]
    assert t1s == sorted(t1s) and len(set(t1s)) == len(t1s)
    for a in alerts:
        evidence = [t for t, _ in a["scores"]]
        assert evidence == sorted(evidence) and len(set(evidence)) == len(evidence)
    assert health["reconnects"] >= 1 and health["phase"] == "live"
    print(f"\nworkers: cam1 scored again {resumed_s:.1f} s after its worker was killed")
