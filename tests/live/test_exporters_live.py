"""Exporters on the real server: a corpus clip streamed against the ``always`` profile raises
alerts, which reach a webhook receiver that is down at first (verified signatures, each
alert event once after de-duplication by webhook id), a Splunk HEC endpoint (batched, with
the verdict fields), and an OCSF JSONL file; ``/api/exporters`` reports the deliveries."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, collect_events, live_config, running_server
from receivers import Receiver, free_port, webhook_receiver

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)
SECRET = "whsec_m8gVuf80X2EOleN4UW1s/pZVKGHTTX/u"
HEC_TOKEN = "11111111-2222-3333-4444-555555555555"


def _wait(cond: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_alerts_reach_webhook_splunk_and_ocsf(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                              tmp_path: Path) -> None:
    hook = webhook_receiver(SECRET, free_port())  # down until the first alert is raised
    hec = Receiver(free_port(), "/services/collector/event",
                   answer=lambda n, h, b: (200, {}) if h.get("authorization") == f"Splunk {HEC_TOKEN}" else (403, {}))
    hec.start()
    ocsf = tmp_path / "findings.jsonl"
    cfg = live_config(
        tmp_path,
        streams=[{"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "realtime": False}],
        exporters=[
            {"kind": "webhook", "name": "hook", "url": hook.url, "secret": SECRET, "backoff_initial_s": 0.2,
             "backoff_max_s": 1.0, "min_severity": "low"},
            {"kind": "splunk_hec", "name": "splunk", "url": f"http://127.0.0.1:{hec.port}", "token": HEC_TOKEN,
             "types": ["alert", "score"], "min_severity": "info", "flush_s": 0.5, "batch_size": 20},
            {"kind": "jsonl", "path": str(ocsf), "format": "ocsf"},
        ])
    try:
        with running_server(cfg, tiny_model, profiles_dir) as srv:
            msgs = asyncio.run(collect_events(
                srv.ws_url, lambda ms: sum(m["type"] == "alert" for m in ms) >= 3, since=0, timeout=120))
            with srv.client() as http:
                before = {e["name"]: e for e in http.get("/api/exporters").json()}
            hook.start()
            alerts_ws = [m for m in msgs if m["type"] == "alert"]
            with srv.client() as http:
                _wait(lambda: len(hook.unique_payloads()) >= len(alerts_ws))
                exporters = {e["name"]: e for e in http.get("/api/exporters").json()}
                outbox = http.get("/api/exporters/hook/outbox", params={"state": "delivered"}).json()
                assert http.get("/api/exporters/nope/outbox").status_code == 404
                assert http.get("/api/exporters/splunk/outbox").status_code == 404  # no outbox: not durable
            _wait(lambda: len(hec.accepted()) >= 1, timeout=10)
    finally:
        hook.stop()
        hec.stop()

    # webhook: every signature verified; the events the websocket showed, by seq, none twice
    assert hook.bad_signatures == 0
    got = hook.unique_payloads()
    ws_seqs = {m["seq"] for m in alerts_ws}
    assert ws_seqs <= {p["seq"] for p in got.values()}
    assert len({p["seq"] for p in got.values()}) == len(got)
    assert before["hook"]["counts"]["delivered"] == 0 and before["hook"]["counts"]["retried"] >= 1
    assert exporters["hook"]["kind"] == "webhook" and exporters["hook"]["counts"]["delivered"] >= len(alerts_ws)
    assert exporters["hook"]["outbox"]["dead"] == 0 and len(outbox) >= len(alerts_ws)
    assert {e["id"] for e in outbox} <= set(got)

    # splunk: batched (several events per POST), the token header, the verdict fields
    events = [json.loads(line) for r in hec.accepted() for line in r.body.decode().splitlines()]
    assert len(events) > len(hec.accepted())
    opened = [e for e in events if e["event"]["type"] == "alert" and e["event"]["action"] == "opened"]
    assert opened and opened[0]["event"]["verdict"] == "artificial" and opened[0]["event"]["profile"] == "always"
    assert opened[0]["event"]["stream"] == "cam1" and 0.0 <= opened[0]["event"]["score"] <= 1.0
    scores = [e["event"] for e in events if e["event"]["type"] == "score"]
    assert scores and {s["verdict"] for s in scores} <= {"authentic", "artificial", "inconclusive"}
    assert all(set(s["window"]) == {"t0", "t1"} and s["participant"] == "cam1" for s in scores)
    assert exporters["splunk"]["counts"]["delivered"] >= 1

    # OCSF JSONL: one Detection Finding per alert event, the alert's id as the finding's
    findings = [json.loads(line) for line in ocsf.read_text().splitlines()]
    assert findings and all(f["class_uid"] == 2004 for f in findings)
    assert {f["finding_info"]["uid"] for f in findings} == {m["alert"]["id"] for m in alerts_ws}
