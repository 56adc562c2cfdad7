"""Open episodes across a restart: on a pulled stream that comes back the alert goes on (the
same id takes the new windows, no second alert); when its stream is gone it ends at start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, collect_events, live_config, running_server

from expose.monitor.live.store import LiveStore

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)


def _alert_events(msgs: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "alert" and m.get("action") == action]


def test_an_open_episode_goes_on_after_a_restart_or_ends_if_its_stream_is_gone(
        tiny_model: Path, profiles_dir: Path, clip: Clip, tmp_path: Path) -> None:
    # the episode never ends by itself: `always` is over the threshold on every window
    cfg = live_config(tmp_path, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "realtime": False, "loop": True}])
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        first = asyncio.run(collect_events(srv.ws_url, lambda ms: bool(_alert_events(ms, "updated")), since=0,
                                           timeout=120))
    alert = _alert_events(first, "opened")[0]["alert"]
    store = LiveStore(tmp_path / "monitor.sqlite3")
    before = store.get_alert(alert["id"])
    store.close()
    assert before is not None and before.active
    last_seq = max(m["seq"] for m in first if m["type"] != "heartbeat")

    with running_server(cfg, tiny_model, profiles_dir) as srv:
        second = asyncio.run(collect_events(
            srv.ws_url, lambda ms: len(_alert_events(ms, "updated")) >= 2, since=last_seq, timeout=120))
    assert not _alert_events(second, "opened")  # no second alert for the same episode
    updated = _alert_events(second, "updated")
    assert {u["alert"]["id"] for u in updated} == {alert["id"]}
    assert updated[-1]["alert"]["n_windows"] > before.n_windows

    # the stream is gone from the config: the episode ends at start
    with running_server(cfg.model_copy(update={"streams": []}), tiny_model, profiles_dir) as srv:
        third = asyncio.run(collect_events(srv.ws_url, lambda ms: bool(_alert_events(ms, "ended")), since=0,
                                           timeout=30))
        with srv.client() as http:
            after = http.get(f"/api/alerts/{alert['id']}").json()
    ended = _alert_events(third, "ended")
    assert [e["alert"]["id"] for e in ended] == [alert["id"]]
    assert after["active"] is False and after["t_end"] is not None and after["ended_at"] is not None
