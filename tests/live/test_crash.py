"""Crash test: `expose serve` is killed with SIGKILL while a live stream raises alerts.
After a restart on the same database: every alert event a websocket client had received is
in the store with the same seq and body, the websocket resume (?since=) replays every one of
them, and the webhook receiver (down until the restart) gets every alert event the first
process stored, each once after de-duplication by webhook id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from live_support import SPEECH_CLIP, TOKEN, collect_events, stop_process
from receivers import free_port, webhook_receiver

from expose.monitor.live.store import LiveStore

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(400)
SECRET = "whsec_m8gVuf80X2EOleN4UW1s/pZVKGHTTX/u"


def _config(tmp: Path, media: Path, hook_url: str) -> Path:
    path = tmp / "expose.toml"
    path.write_text(f"""
[server]
token = "{TOKEN}"
db_path = "{tmp / 'monitor.sqlite3'}"
heartbeat_s = 1.0

[live]
batch_linger_s = 0.01

[alerts]
smoothing = 1
raise_k = 2
raise_n = 3
clear_m = 2

[[streams]]
name = "cam1"
url = "{media}"
profile = "always"
realtime = false
loop = true

[[exporters]]
kind = "webhook"
name = "hook"
url = "{hook_url}"
secret = "{SECRET}"
min_severity = "low"
backoff_initial_s = 0.2
backoff_max_s = 1.0
max_attempts = 100  # the receiver is down all through the first run: nothing may be dead-lettered
""")
    return path


def _serve(config: Path, port: int, model: Path, profiles: Path, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "expose.monitor.cli", "serve", "--config", str(config), "--port", str(port),
         "--model", str(model), "--profiles", str(profiles)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "EXPOSE_TOKEN": TOKEN})
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"expose serve exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "expose serve did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def _alerts(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "alert"]


def test_sigkill_while_alerting_loses_nothing(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                              tmp_path: Path) -> None:
    port, hook_port = free_port(), free_port()
    hook = webhook_receiver(SECRET, hook_port)
    config = _config(tmp_path, clip(SPEECH_CLIP), hook.url)
    log = tmp_path / "serve.log"
    ws = f"ws://127.0.0.1:{port}/ws"

    proc = _serve(config, port, tiny_model, profiles_dir, log)
    try:
        seen = asyncio.run(collect_events(ws, lambda ms: len(_alerts(ms)) >= 6, since=0, timeout=180))
        proc.send_signal(signal.SIGKILL)  # while the stream is still raising and updating its alert
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen_alerts = _alerts(seen)
    assert len(seen_alerts) >= 6, f"only {len(seen_alerts)} alert events before the kill"

    # 1. every alert event a client received is in the store, same seq, same body
    store = LiveStore(tmp_path / "monitor.sqlite3")
    stored = {e.seq: e for e in store.events_since(0, 100_000)}
    stored_alert_seqs = sorted(s for s, e in stored.items() if e.type == "alert")
    last_before = max(stored)
    store.close()
    events_seen = [m for m in seen if m["type"] != "heartbeat"]
    for m in events_seen:
        assert m["seq"] in stored and stored[m["seq"]].event().model_dump(mode="json") == m
    assert {m["alert"]["id"] for m in seen_alerts} <= {a for a in _alert_ids(tmp_path)}

    # 2. restart; the receiver is up now
    hook.start()
    proc = _serve(config, port, tiny_model, profiles_dir, log)
    try:
        replay = asyncio.run(collect_events(ws, lambda ms: any(m["seq"] >= last_before for m in ms
                                                               if m["type"] != "heartbeat"), since=0, timeout=60))
        deadline = time.monotonic() + 60
        want = {f"msg_hook_{s}" for s in stored_alert_seqs}
        while not want <= set(hook.unique_payloads()):
            missing = sorted(want - set(hook.unique_payloads()))
            assert time.monotonic() < deadline, f"missing at the receiver: {missing[:5]}"
            time.sleep(0.2)
    finally:
        stop_process(proc)
        hook.stop()
    replayed = {m["seq"]: m for m in replay if m["type"] != "heartbeat"}
    assert all(replayed.get(m["seq"]) == m for m in events_seen)  # the resume replays every one, identical
    got = hook.unique_payloads()
    assert hook.bad_signatures == 0
    ids = [r.headers["webhook-id"] for r in hook.accepted()]
    print(f"\ncrash test: {len(events_seen)} events ({len(seen_alerts)} alert) seen before SIGKILL, "
          f"{len(stored_alert_seqs)} alert events stored by the first process, all {len(want)} delivered after "
          f"restart; {len(got)} unique webhook ids at the receiver, {len(ids) - len(set(ids))} duplicate deliveries")


def _alert_ids(tmp: Path) -> set[str]:
    store = LiveStore(tmp / "monitor.sqlite3")
    try:
        return {a.id for a in store.list_alerts(limit=1000)}
    finally:
        store.close()
