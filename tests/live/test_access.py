"""Tokens, roles, rate limits and the audit log on the real server: each role against each
route (the table in docs/live.md is the code's), wrong / expired / revoked tokens, the
websocket's refusals, per-token rate limits, and an audit row (and event) for each change."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import websockets
from fastapi.routing import APIRoute, APIWebSocketRoute
from live_support import SPEECH_CLIP, TOKEN, collect_events, live_config, running_server

from expose.monitor.api.access import ROLE_GRANTS, ROLES, ROUTES, AccessStore, RateLimiter, permission_table

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)
DOC = Path(__file__).resolve().parents[2] / "docs" / "live.md"

# a request per route that changes nothing when allowed (unknown names, invalid bodies)
PROBES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/whip/{stream}"): {"url": "/whip/studio", "content": b"v=0", "headers": {"content-type": "text/plain"}},
    ("DELETE", "/whip/{stream}/{session}"): {"url": "/whip/studio/nosuch"},
    ("GET", "/api/streams"): {"url": "/api/streams"},
    ("POST", "/api/streams"): {"url": "/api/streams", "json": {"bad": 1}},
    ("GET", "/api/streams/{name}"): {"url": "/api/streams/nosuch"},
    ("GET", "/api/streams/{name}/health"): {"url": "/api/streams/nosuch/health"},
    ("DELETE", "/api/streams/{name}"): {"url": "/api/streams/nosuch"},
    ("GET", "/api/profiles"): {"url": "/api/profiles"},
    ("GET", "/api/alerts"): {"url": "/api/alerts"},
    ("GET", "/api/alerts/{alert_id}"): {"url": "/api/alerts/nosuch"},
    ("POST", "/api/alerts/{alert_id}/ack"): {"url": "/api/alerts/nosuch/ack", "json": {"by": "x"}},
    ("POST", "/api/alerts/{alert_id}/close"): {"url": "/api/alerts/nosuch/close", "json": {"by": "x", "reason": "r"}},
    ("GET", "/api/exporters"): {"url": "/api/exporters"},
    ("GET", "/api/exporters/{name}/outbox"): {"url": "/api/exporters/nosuch/outbox"},
    ("POST", "/api/exporters/{name}/outbox/{entry_id}/retry"): {"url": "/api/exporters/nosuch/outbox/x/retry"},
    ("GET", "/api/audit"): {"url": "/api/audit"},
    ("GET", "/metrics"): {"url": "/metrics"},
}


def test_every_route_has_a_permission_and_the_docs_table_is_the_codes(tiny_model: Path, profiles_dir: Path,
                                                                       tmp_path: Path) -> None:
    from expose.monitor.api.serve import build_service

    service = build_service(live_config(tmp_path), model_path=tiny_model, profiles_dir=profiles_dir)
    routes: set[tuple[str, str]] = set()

    def walk(rs: list[Any]) -> None:
        for r in rs:
            if isinstance(r, APIRoute):
                routes.update((m, r.path) for m in r.methods or ())
            elif isinstance(r, APIWebSocketRoute):
                routes.add(("WS", r.path))
            elif hasattr(r, "original_router"):  # an included APIRouter (FastAPI keeps it whole)
                walk(r.original_router.routes)

    walk(service.app.routes)
    open_routes = {("GET", "/healthz"), ("GET", "/"), ("PATCH", "/whip/{stream}/{session}")}
    assert routes - open_routes == set(ROUTES)
    doc = DOC.read_text()
    table = re.search(r"<!-- BEGIN permissions[^>]*-->\n(.*?)\n<!-- END permissions -->", doc, re.S)
    assert table and table.group(1) == permission_table(), "docs/live.md's permission table is out of date"
    assert set(PROBES) == {k for k in ROUTES if k[0] != "WS"}


def test_each_role_against_each_route(tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    cfg = live_config(tmp_path)
    access = AccessStore(tmp_path / "monitor.sqlite3")
    tokens = {role: access.create(f"t-{role}", role)[1] for role in ROLES}
    _, studio_only = access.create("cam", "ingest", stream="studio")
    _, other_only = access.create("cam2", "ingest", stream="other")
    seen: dict[tuple[str, str, str], int] = {}
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        for role, tok in tokens.items():
            with srv.client(tok) as http:
                for key, probe in PROBES.items():
                    kw = {k: v for k, v in probe.items() if k != "url"}
                    seen[(role, *key)] = http.request(key[0], probe["url"], **kw).status_code
        with srv.client(studio_only) as http:
            own = http.post("/whip/studio", content=b"v=0", headers={"content-type": "text/plain"}).status_code
        with srv.client(other_only) as http:
            foreign = http.post("/whip/studio", content=b"v=0", headers={"content-type": "text/plain"})
    for (who, method, path), status in seen.items():
        allowed = ROUTES[(method, path)] in ROLE_GRANTS[who]  # type: ignore[index]
        if allowed:
            assert status not in (401, 403), f"{who} {method} {path}: {status}"
        else:
            assert status == 403, f"{who} {method} {path}: {status}"
    assert own == 415  # through the door, then refused for its content type
    assert foreign.status_code == 403 and "may only publish to stream 'other'" in foreign.json()["detail"]


def test_wrong_expired_revoked_tokens_and_the_websocket(tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    cfg = live_config(tmp_path)
    access = AccessStore(tmp_path / "monitor.sqlite3")
    info, revoked = access.create("gone", "admin")
    access.revoke(info.id)
    _, expired = access.create("old", "viewer", expires_in_s=0.01)
    _, viewer = access.create("v", "viewer")
    _, ingest = access.create("i", "ingest")
    time.sleep(0.05)
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        cases = {None: "missing bearer token", "nope": "wrong token", revoked: "token revoked",
                 expired: "token expired", viewer[:-2] + "xx": "wrong token", "exp_zz.y": "wrong token"}
        for tok, reason in cases.items():
            with srv.client(tok) as http:
                r = http.get("/api/streams")
                assert r.status_code == 401 and r.json()["detail"] == reason, (tok, r.text)
                assert r.headers["www-authenticate"] == "Bearer"

        async def ws_close(tok: str) -> tuple[int, str]:
            async with websockets.connect(f"{srv.ws_url}?token={tok}") as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None
                return closed.value.rcvd.code, closed.value.rcvd.reason

        assert asyncio.run(ws_close(revoked)) == (4401, "token revoked")
        assert asyncio.run(ws_close(ingest))[0] == 4403
        got = asyncio.run(collect_events(srv.ws_url, lambda ms: any(m["type"] == "heartbeat" for m in ms),
                                         token=viewer, timeout=10))
        assert any(m["type"] == "heartbeat" for m in got)


def test_rate_limit_per_token(tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, server={"rate_limit_per_s": 0.5, "rate_limit_burst": 3})
    access = AccessStore(tmp_path / "monitor.sqlite3")
    _, a = access.create("a", "viewer")
    _, b = access.create("b", "viewer")
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        with srv.client(a) as http:
            codes = [http.get("/api/streams").status_code for _ in range(4)]
            last = http.get("/api/streams")
        with srv.client(b) as http:
            other = http.get("/api/streams").status_code  # its own bucket
    assert codes == [200, 200, 200, 429] and last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1 and "rate limit of token 'a'" in last.json()["detail"]
    assert other == 200
    lim = RateLimiter(rate=2.0, burst=2)
    assert [lim.wait_s("k", now=0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    assert lim.wait_s("k", now=0.5) == 0.0  # refilled at 2 a second


def test_each_change_is_audited_append_only_and_published(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                                          tmp_path: Path) -> None:
    db = tmp_path / "monitor.sqlite3"
    cfg = live_config(tmp_path, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always", "realtime": False}])
    access = AccessStore(db)
    _, ana = access.create("ana", "analyst")
    _, viewer = access.create("vic", "viewer")
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        msgs = asyncio.run(collect_events(
            srv.ws_url, lambda ms: any(m["type"] == "alert" and m.get("action") == "opened" for m in ms),
            since=0, timeout=120))
        alert_id = next(m["alert"]["id"] for m in msgs if m["type"] == "alert")
        with srv.client() as http:  # the config's admin token
            assert http.post("/api/streams", json={"name": "lobby", "profile": "always"}).status_code == 201
            assert http.delete("/api/streams/lobby").status_code == 204
        with srv.client(ana) as http:
            assert http.post(f"/api/alerts/{alert_id}/ack", json={"by": "ana"}).status_code == 200
            assert http.post(f"/api/alerts/{alert_id}/close", json={"by": "ana", "reason": "drill"}).status_code == 200
        with srv.client(viewer) as http:
            assert http.delete("/api/streams/cam1").status_code == 403
        # the CLI writes to the same log
        subprocess.run([sys.executable, "-m", "expose.monitor.cli", "tokens", "create", "--name", "bot", "--role",
                        "viewer", "--db", str(db)], check=True, capture_output=True)
        with srv.client() as http:
            log = http.get("/api/audit").json()
            with srv.client(viewer) as v:
                assert v.get("/api/audit").status_code == 403
        events = asyncio.run(collect_events(srv.ws_url, lambda ms: sum(m["type"] == "audit" for m in ms) >= 6,
                                            since=0, timeout=20))
    rows = [(e["actor"], e["role"], e["action"], e["target"]) for e in log]
    assert ("admin (server.token)", "admin", "stream.add", "lobby") in rows
    assert ("admin (server.token)", "admin", "stream.remove", "lobby") in rows
    assert ("ana", "analyst", "alert.acknowledge", alert_id) in rows
    assert ("ana", "analyst", "alert.close", alert_id) in rows
    assert ("vic", "viewer", "denied", "DELETE /api/streams/{name}") in rows
    assert any(r[2] == "token.create" and r[1] == "cli" and r[0].startswith("cli:") for r in rows)
    close = next(e for e in log if e["action"] == "alert.close")
    assert close["detail"] == {"by": "ana", "reason": "drill"}
    ids = [e["id"] for e in log]
    assert ids == sorted(ids)
    published = [(m["actor"], m["action"]) for m in events if m["type"] == "audit"]
    assert ("ana", "alert.close") in published and ("admin (server.token)", "stream.add") in published
    # append-only: the database itself refuses to change or delete a row
    with sqlite3.connect(db) as con:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE audit SET actor = 'mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM audit")
    assert TOKEN not in str(log)  # no secret in the log


def test_cli_tokens_errors(tmp_path: Path) -> None:
    db = str(tmp_path / "m.sqlite3")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "expose.monitor.cli", "tokens", *args, "--db", db],
                              capture_output=True, text=True, timeout=120)

    bad = run("create", "--name", "x", "--role", "root")
    assert bad.returncode == 2 and "unknown role 'root'" in bad.stderr and "Traceback" not in bad.stderr
    scoped = run("create", "--name", "x", "--role", "viewer", "--stream", "cam")
    assert scoped.returncode == 2 and "only an ingest token" in scoped.stderr
    made = run("create", "--name", "cam", "--role", "ingest", "--stream", "studio")
    assert made.returncode == 0 and made.stdout.strip().startswith("exp_")
    tid = made.stdout.strip()[4:].split(".")[0]
    listed = run("list")
    assert tid in listed.stdout and "ingest" in listed.stdout and made.stdout.strip() not in listed.stdout
    assert run("revoke", tid).returncode == 0
    again = run("revoke", tid)
    assert again.returncode == 2 and "already revoked" in again.stderr
    assert "revoked" in run("list").stdout


def test_cli_profile_changes_are_audited(profiles_dir: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "profiles"
    shutil.copytree(profiles_dir / "trump", root / "trump")
    db = tmp_path / "monitor.sqlite3"
    config = tmp_path / "expose.toml"
    config.write_text(f'[server]\ndb_path = "{db}"\n')
    done = subprocess.run([sys.executable, "-m", "expose.monitor.cli", "profiles", "delete", "trump", "--profiles",
                           str(root), "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [(e.role, e.action, e.target) for e in AccessStore(db).audit_log()]
    assert rows == [("cli", "profile.delete", "trump")]
