"""Many nodes over Redis Streams on a real redis-server: a console (the real server, in this
process), two `expose node ingest` processes and two `expose node score` processes.

Both streams are run, one per ingest node, and scored; an ingest node killed with SIGKILL
has its stream taken over by the other, the stream clock going on; a scorer killed with
SIGKILL and a consumer that read windows and never acknowledged them (a scorer that died
mid-batch) have their pending windows claimed by the live scorer; an undecodable entry is set
aside with its reason. The websocket's events are complete and in order: each alert opens
once, its updates follow, its evidence and each stream's scores go forward in stream time
with no window twice."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from live_support import SPEECH_CLIP, collect_events, live_config, running_server, stop_process

from expose.monitor.features.windows import Window
from expose.monitor.live.bus import BadEntry, decode_window, encode_window

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(600)
TAKEOVER_WITHIN_S = 90.0  # TTL 3 s + spawn-free restart of the source + MediaPipe + a window, on 2 loaded cores
CLUSTER = {"heartbeat_s": 0.5, "node_ttl_s": 3.0, "claim_idle_s": 3.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def redis_url(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (scripts/install-system-deps.sh installs it)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    try:
        yield url
    finally:
        client.close()
        stop_process(proc)


def _window(stream: str = "cam", t1: float = 2.0, voice: bool = True, t: int = 50, appearance: int = 0) -> Window:
    import numpy as np

    from expose.monitor.features.audio import AUDIO_DIM

    rng = np.random.default_rng(0)
    return Window(stream, t1 - 2.0, t1, rng.normal(size=(t, 58)).astype(np.float32),
                  rng.normal(size=(t, AUDIO_DIM)).astype(np.float32), rng.random(t) > 0.2,
                  rng.random(t).astype(np.float32), face_ids=rng.normal(size=(2, 128)).astype(np.float32),
                  face_id_rows=np.array([3, 40]), voice_id=rng.normal(size=256).astype(np.float32) if voice else None,
                  voice_id_row=45 if voice else None, ready_at=1234.5,
                  appearance=rng.normal(size=(2, appearance)).astype(np.float32))


def test_window_wire_format_round_trips_and_refuses_bad_entries() -> None:
    import numpy as np

    for voice, appearance in ((True, 0), (False, 0), (True, 256)):
        w = _window(voice=voice, appearance=appearance)
        fields = {k.encode(): v for k, v in encode_window(w, "alice").items()}
        back, profile = decode_window(fields)
        assert profile == "alice" and (back.stream, back.t0, back.t1, back.ready_at) == (w.stream, w.t0, w.t1, 1234.5)
        assert back.appearance.shape == (2, appearance)
        for name in ("expression", "audio", "face_mask", "speech", "observed", "face_ids", "face_id_rows",
                     "appearance"):
            assert np.array_equal(getattr(back, name), getattr(w, name)), name
        assert (back.voice_id is None) == (not voice) and back.voice_id_row == w.voice_id_row
    good = {k.encode(): v for k, v in encode_window(_window(), None).items()}
    bad_shape = {k.encode(): v for k, v in encode_window(_window(), None).items()}
    bad_shape[b"meta"] = b'{"stream": "cam", "t0": 5.0, "t1": 1.0, "voice_id_row": 45}'  # t1 < t0: Window refuses
    for fields, why in [({b"meta": b"not json", b"arrays": good[b"arrays"]}, "does not decode"),
                        ({b"meta": good[b"meta"]}, "does not decode"),
                        ({b"meta": good[b"meta"], b"arrays": b"PK\x03\x04 not a zip"}, "does not decode"),
                        (bad_shape, "t1 > t0")]:
        with pytest.raises(BadEntry, match=why):
            decode_window(fields)


def _node(role: str, config: Path, node: str, model: Path, profiles: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "expose.monitor.cli", "node", role, "--config", str(config), "--model", str(model),
            "--id", node]
    if role == "score":
        args += ["--profiles", str(profiles)]
    return subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=dict(os.environ))


def _node_config(tmp: Path, url: str) -> Path:
    path = tmp / "node.toml"
    lines = [f'[cluster]\nredis_url = "{url}"'] + [f"{k} = {v}" for k, v in CLUSTER.items()]
    lines += ["[live]", "batch_linger_s = 0.01", "[alerts]", "smoothing = 1", "raise_k = 2", "raise_n = 3",
              "clear_m = 2"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _scores(msgs: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "score" and m["stream"] == stream]


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_two_ingest_and_two_scorer_nodes_survive_killed_nodes(redis_url: str, tiny_model: Path, profiles_dir: Path,
                                                              clip: Clip, tmp_path: Path) -> None:
    media = str(clip(SPEECH_CLIP))
    cfg = live_config(tmp_path, cluster={"redis_url": redis_url, **CLUSTER}, streams=[
        {"name": "cam1", "url": media, "profile": "always", "realtime": True, "loop": True},
        {"name": "cam2", "url": media, "profile": "trump", "realtime": True, "loop": True}])
    node_cfg = _node_config(tmp_path, redis_url)
    r: Any = redis.Redis.from_url(redis_url)  # Any: redis-py types replies for either decode_responses
    logs = {n: tmp_path / f"{n}.log" for n in ("ingest-a", "ingest-b", "scorer-a", "scorer-b")}
    procs = {n: _node("ingest" if n.startswith("ingest") else "score", node_cfg, n, tiny_model, profiles_dir, log)
             for n, log in logs.items()}

    def tail(name: str) -> str:
        return logs[name].read_text()[-3000:] if logs[name].exists() else ""

    try:
        with running_server(cfg, tiny_model, profiles_dir) as srv:
            first = asyncio.run(collect_events(
                srv.ws_url, lambda ms: len(_scores(ms, "cam1")) >= 3 and len(_scores(ms, "cam2")) >= 3, since=0,
                timeout=240))
            assert len(_scores(first, "cam1")) >= 3 and len(_scores(first, "cam2")) >= 3, \
                f"no scores: {tail('ingest-a')}\n{tail('scorer-a')}"

            def assignments() -> dict[str, str]:
                return {k.decode(): v.decode() for k, v in r.hgetall("expose:assign").items()}
            # one stream per node (a node up first takes both, then hands one over)
            _wait(lambda: set(assignments().values()) == {"ingest-a", "ingest-b"}, 90, f"balance: {assignments()}")
            assign = assignments()
            assert set(assign) == {"cam1", "cam2"}
            time.sleep(3)  # the handed-over stream starts on its new node

            # a scorer that read windows and died before acknowledging them
            got = r.xreadgroup("scorers", "scorer-dead", {"expose:windows": ">"}, count=3, block=20_000)
            held = [e[0] for e in got[0][1]] if got else []
            assert held, "no window to hold"
            # an entry no scorer can decode
            r.xadd("expose:windows", {"meta": b"{}", "arrays": b"junk"})
            # an ingest node and a scorer node die
            victim = assign["cam1"]
            procs[victim].send_signal(signal.SIGKILL)
            procs["scorer-a"].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            last = srv.service.monitor.store.last_seq()

            def restarted(ms: list[dict[str, Any]]) -> list[dict[str, Any]]:
                """cam1's scores after it went live again on another node."""
                live = [m["seq"] for m in ms if m["type"] == "stream" and m["stream"] == "cam1"
                        and m.get("action") == "phase" and m.get("phase") == "live"]
                return [m for m in _scores(ms, "cam1") if live and m["seq"] > live[0]]
            after = asyncio.run(collect_events(srv.ws_url, lambda ms: len(restarted(ms)) >= 3, since=last,
                                               timeout=TAKEOVER_WITHIN_S + 60))
            taken_s = time.monotonic() - killed_at
            survivor = "ingest-b" if victim == "ingest-a" else "ingest-a"
            assert len(restarted(after)) >= 3, f"cam1 not taken over: {tail(survivor)}"
            assert r.hget("expose:assign", "cam1") == survivor.encode()

            def held_pending() -> int:
                rows = r.xpending_range("expose:windows", "scorers", min="-", max="+", count=100,
                                        consumername="scorer-dead")
                return len(rows)
            _wait(lambda: held_pending() == 0, 60, "the dead consumer's windows to be claimed")
            _wait(lambda: r.xlen("expose:windows:dead") >= 1, 30, "the bad entry to be set aside")
            dead = r.xrange("expose:windows:dead")
            assert b"does not decode" in dead[0][1][b"why"]
            with srv.client() as http:
                alerts = http.get("/api/alerts", params={"stream": "cam1"}).json()
                health = http.get("/api/streams/cam1/health").json()
            every = asyncio.run(collect_events(srv.ws_url, lambda ms: False, since=0, timeout=3))
            # ?since= takes an event's origin (its Redis entry id, the same on every console)
            stored = [m for m in every if m["type"] != "heartbeat"]
            middle = stored[len(stored) // 2]
            resumed = asyncio.run(collect_events(srv.ws_url, lambda ms: any(m["type"] != "heartbeat" for m in ms),
                                                 since=middle["origin"], timeout=10))
    finally:
        for p in procs.values():
            if p.poll() is None:
                stop_process(p)
        r.close()

    assert taken_s < TAKEOVER_WITHIN_S + 60
    assert all(m["origin"] for m in stored)  # every event came through Redis
    origins = [tuple(map(int, m["origin"].split("-"))) for m in stored]
    assert origins == sorted(origins) and len(set(origins)) == len(origins)
    assert [m for m in resumed if m["type"] != "heartbeat"][0]["seq"] == middle["seq"] + 1
    assert health["phase"] in ("live", "connecting")
    # complete and in order: seq strictly increasing, no event twice
    seqs = [m["seq"] for m in every if m["type"] != "heartbeat"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for stream in ("cam1", "cam2"):  # each stream's scores go forward, none twice (takeover included)
        t1s = [m["t1"] for m in _scores(every, stream)]
        assert t1s == sorted(t1s) and len(set(t1s)) == len(t1s), stream
    cam1 = [m for m in every if m["type"] == "alert" and m["stream"] == "cam1"]
    assert cam1 and cam1[0]["action"] == "opened"  # "always" is over the threshold on every window
    by_id: dict[str, list[str]] = {}
    for m in cam1:
        by_id.setdefault(m["alert"]["id"], []).append(m["action"])
    for actions in by_id.values():
        assert actions[0] == "opened" and actions.count("opened") == 1
        if "ended" in actions:
            assert actions.index("ended") == len(actions) - 1 and actions.count("ended") == 1
    assert {a["id"] for a in alerts} <= set(by_id)
    for a in alerts:  # the evidence, across the takeover: forward in stream time, no window twice
        evidence = [t for t, _ in a["scores"]]
        assert evidence == sorted(evidence) and len(set(evidence)) == len(evidence)
    print(f"\ncluster: cam1 scored again {taken_s:.1f} s after its ingest node was killed; "
          f"{len(held)} held windows claimed")


def _console_config(tmp: Path) -> Path:
    path = tmp / "console.toml"
    path.write_text(f'[server]\ndb_path = "{tmp / "console.sqlite3"}"\n')
    return path


def test_nodes_without_a_cluster_fail_in_one_line(tmp_path: Path, redis_url: str) -> None:
    for args, env, msg in [
        (["node", "score"], {}, "no cluster: set cluster.redis_url"),
        (["node", "ingest"], {"EXPOSE_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}, "cannot reach Redis at"),
        (["node", "score"], {"EXPOSE_REDIS_URL": "http://not-redis"}, "cannot reach Redis at"),
        # a console whose Redis is away fails at start, before listening
        (["serve", "--port", "0", "--config", str(_console_config(tmp_path))],
         {"EXPOSE_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}, "cannot reach Redis at"),
    ]:
        run = subprocess.run([sys.executable, "-m", "expose.monitor.cli", *args], capture_output=True, text=True,
                             env={**os.environ, "EXPOSE_REDIS_URL": "", **env}, timeout=120)
        assert run.returncode != 0 and msg in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_whip_on_a_console_is_scored_by_a_scorer_node(redis_url: str, tiny_model: Path, profiles_dir: Path,
                                                      clip: Clip, tmp_path: Path) -> None:
    """A WHIP publisher connects to the console, which features the stream itself and sends its
    windows to the cluster; a scorer node scores them and its alert carries the console's
    thumbnail. A second session on the same stream name starts a fresh policy (its stream
    clock starts at 0 again: its windows are scored, not dropped as stale)."""
    from live_support import publish_whip

    cfg = live_config(tmp_path, cluster={"redis_url": redis_url, **CLUSTER})
    scorer = _node("score", _node_config(tmp_path, redis_url), "scorer-a", tiny_model, profiles_dir,
                   tmp_path / "scorer.log")
    media = clip(SPEECH_CLIP)
    try:
        with running_server(cfg, tiny_model, profiles_dir) as srv:
            sessions = []
            for _ in range(2):
                code, _, msgs = asyncio.run(publish_whip(
                    f"{srv.url}/whip/caller?profile=always", media, ws_url=srv.ws_url,
                    until=lambda ms: len(_scores(ms, "caller")) >= 3, seconds=150))
                assert code == 201
                sessions.append(msgs)
            with srv.client() as http:
                alerts = http.get("/api/alerts", params={"stream": "caller"}).json()
    finally:
        stop_process(scorer)
    for msgs in sessions:
        scores = _scores(msgs, "caller")
        assert len(scores) >= 3, (tmp_path / "scorer.log").read_text()[-2000:]
        assert all(m["origin"] for m in scores)
    second = [m["t1"] for m in _scores(sessions[1], "caller")]
    assert min(second) < max(m["t1"] for m in _scores(sessions[0], "caller"))  # its clock started again
    assert alerts and any(a["thumbnail_jpeg"] for a in alerts)


def test_a_window_the_scorer_cannot_take_is_set_aside_not_retried(redis_url: str, tiny_model: Path,
                                                                  profiles_dir: Path) -> None:
    """A scorer node's batch with one window the network cannot score (expression rows of the
    wrong width): that window goes to windows:dead with the reason, the others are scored and
    acknowledged, and nothing stays pending to fail the next scorer too."""
    import numpy as np

    from expose.monitor.config import ClusterSection, Config
    from expose.monitor.live.bus import GROUP, Bus
    from expose.monitor.live.cluster import ScorerNode
    from expose.monitor.model.exam import load_model
    from expose.monitor.model.scorer import Scorer
    from expose.profiles.store import ProfileStore

    bus = Bus(ClusterSection(redis_url=redis_url))
    base = load_model(tiny_model)
    node = ScorerNode(Config(), bus, Scorer.of(base), ProfileStore(profiles_dir), base_sha256=base.sha256, node="s1")
    bus.ensure_group()
    t = base.model.cfg.window
    good = [_window("cam", t1=2.0 + i, voice=False, t=t) for i in range(2)]
    bad = dataclasses.replace(good[0], t0=10.0, t1=12.0, expression=np.zeros((t, 10), np.float32))
    for w in (good[0], bad, good[1]):
        bus.put_window(w, "trump")
    node.handle(bus.read_windows("s1", count=10, block_ms=1000))
    r: Any = bus.r
    dead = r.xrange(bus.k_dead)
    assert len(dead) == 1 and b"the scorer failed" in dead[0][1][b"why"]
    assert r.xpending(bus.k_windows, GROUP)["pending"] == 0
    scores = [e for _, e in r.xrange(bus.k_events) if e[b"type"] == b"score"]
    assert len(scores) == 2 and node.scored == 2
    bus.close()
