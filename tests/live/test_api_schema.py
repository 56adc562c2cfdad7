"""The typed HTTP and websocket boundaries, against the real server on a loopback port:
/openapi.json describes what every route returns, a bad request gets the status of its
error's type, every websocket (and JSONL) message is one of the Event models byte for
byte, and docs/live.md's field tables are those of the models."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import websockets
from fastapi import FastAPI
from fastapi.routing import APIRoute
from live_support import SPEECH_CLIP, TOKEN, RunningServer, live_config, running_server
from pydantic import TypeAdapter

from expose.monitor.alerts.events import EVENTS, SourcePhase
from expose.monitor.alerts.policy import AlertLifecycleError
from expose.monitor.api.app import ERROR_STATUS, status_of
from expose.monitor.api.reference import documented, markdown, section_of
from expose.monitor.api.schemas import (
    AlertDetail,
    ErrorBody,
    Health,
    IdleHealth,
    ProfileInfo,
    ProfileUnreadable,
    StreamHealthInfo,
    StreamInfo,
)
from expose.monitor.live import watchdog
from expose.monitor.live.monitor import BadStreamRequest, NotFound, StreamError
from expose.monitor.media.whip import SdpError
from expose.profiles.store import InvalidProfileName, ProfileError, ProfileStore, UnknownProfile

pytestmark = pytest.mark.timeout(300)

DOC = Path(__file__).resolve().parents[2] / "docs" / "live.md"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# routes whose success is an empty body or that exist to refuse (documented as such)
EMPTY_BODY = {("DELETE", "/whip/{stream}/{session}")}
REFUSING = {("PATCH", "/whip/{stream}/{session}")}  # trickle ICE: 405 with a text/plain reason


@dataclasses.dataclass
class Served:
    srv: RunningServer
    raw: list[str]  # every /ws message text of the stream's run, from seq 0
    jsonl: Path


async def _raw_messages(ws_url: str, until: Callable[[list[dict[str, Any]]], bool], since: int | None = None,
                        timeout: float = 120) -> list[str]:
    """/ws message texts, as sent, until ``until(parsed)`` holds (or the timeout)."""
    query = f"?token={TOKEN}" + (f"&since={since}" if since is not None else "")
    raw: list[str] = []
    parsed: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    async with websockets.connect(ws_url + query, open_timeout=10) as ws:
        while not until(parsed) and (left := deadline - time.monotonic()) > 0:
            try:
                text = await asyncio.wait_for(ws.recv(), timeout=left)
            except TimeoutError:
                break
            assert isinstance(text, str)
            raw.append(text)
            parsed.append(json.loads(text))
    return raw


def _kinds(msgs: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    return {(m["type"], m.get("action")) for m in msgs}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, profiles_dir: Path,
           clip: Callable[[str], Path]) -> Iterator[Served]:
    """One server for the module: a file stream claimed as ``always`` (every window over the
    threshold, so alerts open and update), a JSONL sink of every event type, and profiles
    that fail in each way: a damaged one and one enrolled with another base model."""
    tmp = tmp_path_factory.mktemp("api-schema")
    profiles = ProfileStore(tmp / "profiles")
    source = ProfileStore(profiles_dir)
    for name in source.names():
        profiles.save(source.load(name))
    profiles.save(dataclasses.replace(source.load("trump"), name="othermodel", base_model_sha256="0" * 64))
    (tmp / "profiles" / "broken").mkdir()
    (tmp / "profiles" / "broken" / "profile.json").write_text("{not json")
    jsonl = tmp / "events.jsonl"
    cfg = live_config(tmp, streams=[{"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "always",
                                     "realtime": False}],
                      exporters=[{"kind": "jsonl", "path": str(jsonl), "types": ["score", "alert", "stream", "audit"]}])

    def enough(ms: list[dict[str, Any]]) -> bool:
        return {("alert", "updated"), ("stream", "phase"), ("heartbeat", None)} <= _kinds(ms)

    with running_server(cfg, tiny_model, tmp / "profiles") as srv:
        raw = asyncio.run(_raw_messages(srv.ws_url, enough, since=0))
        yield Served(srv, raw, jsonl)


# ---- OpenAPI ---------------------------------------------------------------------------

def _refs(schema: dict[str, Any]) -> list[str]:
    """Names of the component models a response schema refers to."""
    return [ref.rsplit("/", 1)[-1] for ref in re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))]


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    path: str
    status_code: int | None


def _http_routes(app: FastAPI) -> list[_Route]:
    """Every HTTP route the app serves and puts in its schema. FastAPI 0.16x keeps an included
    router as one entry of ``app.routes`` (walked by ``iter_route_contexts``); before, it
    copied the router's routes into it."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        routes: list[Any] = list(app.routes)
    else:
        routes = list(iter_route_contexts(app.routes))
    out = []
    for r in routes:
        route = getattr(r, "original_route", r)
        if isinstance(route, APIRoute) and r.include_in_schema:
            out += [_Route(m, r.path_format, r.status_code) for m in sorted(r.methods or ())]
    return out


def test_openapi_has_a_response_schema_for_every_route(served: Served) -> None:
    srv = served.srv
    with srv.client() as http:
        oa = http.get("/openapi.json").json()
    components = oa["components"]["schemas"]
    routes = _http_routes(srv.service.app)
    ops = {(r.method, r.path) for r in routes}
    assert {("GET", "/api/streams"), ("POST", "/api/streams"), ("GET", "/api/streams/{name}"),
            ("DELETE", "/api/streams/{name}"), ("GET", "/api/streams/{name}/health"), ("GET", "/api/profiles"),
            ("GET", "/api/alerts"), ("GET", "/api/alerts/{alert_id}"), ("POST", "/api/alerts/{alert_id}/ack"),
            ("POST", "/api/alerts/{alert_id}/close"), ("GET", "/healthz"), ("POST", "/whip/{stream}"),
            ("DELETE", "/whip/{stream}/{session}")} <= ops
    assert ops == {(m.upper(), p) for p, item in oa["paths"].items() for m in item}  # nothing hidden, nothing extra

    for route in routes:
        method = route.method
        responses = oa["paths"][route.path][method.lower()]["responses"]
        code = route.status_code or 200
        where = f"{method} {route.path}"
        if (method, route.path) not in REFUSING:
            assert 200 <= code < 300, f"{where}: success status {code}"
        declared = responses[str(code)]
        content = declared.get("content", {})
        if code == 204 or (method, route.path) in EMPTY_BODY:
            assert not content, f"{where}: an empty body must not promise content"
            continue
        assert content, f"{where}: {code} declares no content"
        for media, body in content.items():
            assert body.get("schema"), f"{where}: {code} {media} has no schema"
            if media == "application/json":
                names = _refs(body["schema"])
                assert names, f"{where}: {code} returns an untyped JSON value {body['schema']}"
                for name in names:  # a closed model: its fields are the document
                    assert components[name].get("properties"), f"{where}: {name} has no fields"
                    assert components[name].get("additionalProperties") is False, f"{where}: {name} is open"
        for status, resp in responses.items():  # errors: FastAPI's 422 list, else one ErrorBody shape
            if status.startswith("4") and status not in ("422", str(code)):
                assert _refs(resp["content"]["application/json"]["schema"]) == ["ErrorBody"], \
                    f"{where}: {status}"

    # every model the API names is in docs/live.md's reference (FastAPI's 422 models aside)
    missing = set(components) - documented() - {"HTTPValidationError", "ValidationError"}
    assert not missing, f"models without a table in the reference: {sorted(missing)}"


def test_docs_route_table_names_what_each_route_returns(served: Served) -> None:
    """docs/live.md's REST table (written by hand) against the live OpenAPI: each route has
    a row whose "returns" cell names its response models or media type."""
    with served.srv.client() as http:
        oa = http.get("/openapi.json").json()
    doc = DOC.read_text()
    for path, item in oa["paths"].items():
        for method, op in item.items():
            row = re.search(rf"^\| `{method.upper()} {re.escape(path)}` \| ([^|]*) \|", doc, re.M)
            assert row, f"docs/live.md has no row for {method.upper()} {path}"
            codes = [c for c in op["responses"] if c.startswith("2")] or [c for c in op["responses"] if c != "422"]
            for media, body in op["responses"][codes[0]].get("content", {}).items():
                expected = _refs(body["schema"]) if media == "application/json" else [media]
                for name in expected:
                    assert f"`{name}`" in row.group(1), f"{method.upper()} {path}: {row.group(1)!r} lacks {name}"


def test_docs_reference_is_generated_from_the_models() -> None:
    assert section_of(DOC.read_text()) == markdown(), (
        "docs/live.md's reference is out of date with the models: "
        "python -m expose.monitor.api.reference --write docs/live.md")


def test_the_message_phase_is_the_watchdogs() -> None:
    assert get_args(SourcePhase) == get_args(watchdog.Phase)  # alerts may not import live: two spellings


# ---- websocket messages ----------------------------------------------------------------

def test_websocket_and_jsonl_messages_are_the_models_byte_for_byte(served: Served) -> None:
    srv = served.srv
    events = [EVENTS.validate_json(text) for text in served.raw]
    for text, ev in zip(served.raw, events, strict=True):
        assert ev.model_dump_json() == text  # what was sent is exactly the model's serialisation
    parsed = [json.loads(t) for t in served.raw]
    assert {("score", None), ("alert", "opened"), ("alert", "updated"), ("stream", "added"), ("stream", "phase"),
            ("heartbeat", None)} <= _kinds(parsed)
    for m in parsed:  # the envelope first, as before the models
        assert list(m)[:4] == ["seq", "type", "stream", "ts"], list(m)
    updated = next(m for m in parsed if m.get("action") == "updated")
    assert "scores" not in updated["alert"] and "thumbnail_jpeg" not in updated["alert"]
    opened = next(m for m in parsed if m.get("action") == "opened")
    assert opened["alert"]["scores"] and opened["alert"]["thumbnail_jpeg"]

    # a stream added and removed through the API reaches the websocket as typed events too
    last = max(ev.seq for ev in events)
    with srv.client() as http:
        assert http.post("/api/streams", json={"name": "later", "profile": "trump"}).status_code == 201
        assert http.delete("/api/streams/later").status_code == 204
    more = asyncio.run(_raw_messages(srv.ws_url, lambda ms: ("audit", "stream.remove") in _kinds(ms), since=last,
                                     timeout=30))
    for text in more:
        assert EVENTS.validate_json(text).model_dump_json() == text
    assert [(m["stream"], m["action"]) for m in map(json.loads, more) if m["type"] == "stream"][-2:] == [
        ("later", "added"), ("later", "removed")]
    # and each change is an audit event too
    assert [(m["target"], m["action"]) for m in map(json.loads, more) if m["type"] == "audit"][-2:] == [
        ("later", "stream.add"), ("later", "stream.remove")]

    # the JSONL sink writes the same text for the same seq
    sent = {json.loads(t)["seq"]: t for t in [*served.raw, *more] if json.loads(t)["type"] != "heartbeat"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(served.jsonl.read_text().splitlines()) < len(sent):
        time.sleep(0.1)
    lines = {json.loads(line)["seq"]: line for line in served.jsonl.read_text().splitlines()}
    assert set(sent) <= set(lines)
    for seq, text in sent.items():
        assert lines[seq] == text
        EVENTS.validate_json(lines[seq])


def test_rest_responses_validate_against_their_models(served: Served) -> None:
    with served.srv.client() as http:
        streams = TypeAdapter(list[StreamInfo]).validate_python(http.get("/api/streams").json())
        cam = StreamInfo.model_validate(http.get("/api/streams/cam1").json())
        health = TypeAdapter(StreamHealthInfo | IdleHealth).validate_python(
            http.get("/api/streams/cam1/health").json())
        profiles = TypeAdapter(list[ProfileInfo | ProfileUnreadable]).validate_python(
            http.get("/api/profiles").json())
        alerts = TypeAdapter(list[AlertDetail]).validate_python(http.get("/api/alerts").json())
        Health.model_validate(http.get("/healthz").json())
    assert "cam1" in [s.name for s in streams] and cam.last_score is not None and cam.health is not None
    assert isinstance(health, StreamHealthInfo) and health.windows >= 1
    by_name = {p.name: p for p in profiles}
    assert isinstance(by_name["broken"], ProfileUnreadable) and "damaged" in by_name["broken"].error
    assert isinstance(by_name["othermodel"], ProfileInfo) and not by_name["othermodel"].compatible
    assert isinstance(by_name["always"], ProfileInfo) and by_name["always"].compatible
    assert alerts and alerts[0].stream == "cam1"


# ---- errors: the status of the error's type --------------------------------------------

@pytest.mark.parametrize(("error", "status"), [
    (NotFound("x"), 404), (UnknownProfile("x"), 404), (BadStreamRequest("x"), 400), (InvalidProfileName("x"), 400),
    (SdpError("x"), 400), (StreamError("x"), 409), (ProfileError("x"), 409), (AlertLifecycleError("x"), 409)])
def test_a_subclass_refines_its_base_status(error: Exception, status: int) -> None:
    assert status_of(error) == status
    assert type(error) in ERROR_STATUS


def _error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    detail = ErrorBody.model_validate(r.json()).detail
    assert words in detail, detail


def test_bad_requests_get_the_status_of_their_error_type(served: Served) -> None:
    with httpx.Client(base_url=served.srv.url, headers=AUTH, timeout=30) as http:
        # NotFound
        _error(http.get("/api/streams/nope"), 404, "unknown stream")
        _error(http.get("/api/streams/nope/health"), 404, "unknown stream")
        _error(http.delete("/api/streams/nope"), 404, "unknown stream")
        _error(http.get("/api/alerts/nope"), 404, "unknown alert")
        _error(http.delete("/whip/cam1/nosession", headers=AUTH), 404, "no WHIP session")
        # profiles: unknown 404, invalid name 400, damaged or for another model 409
        _error(http.post("/api/streams", json={"name": "y", "profile": "nobody"}), 404, "unknown profile 'nobody'")
        _error(http.post("/api/streams", json={"name": "y", "profile": "no/such"}), 400, "invalid profile name")
        _error(http.post("/api/streams", json={"name": "y", "profile": "broken"}), 409, "damaged")
        _error(http.post("/api/streams", json={"name": "y", "profile": "othermodel"}), 409, "re-enroll")
        # streams: a taken name 409; the body is checked by its model (422)
        _error(http.post("/api/streams", json={"name": "cam1", "url": "x.mp4"}), 409, "already exists")
        assert http.post("/api/streams", json={"name": "y", "bogus": 1}).status_code == 422
        assert http.get("/api/alerts", params={"status": "pending"}).status_code == 422

        def whip(path: str, body: str | bytes) -> httpx.Response:
            return http.post(path, content=body, headers={"Content-Type": "application/sdp"})

        _error(whip("/whip/x", "v=0\r\n"), 400, "no claimed profile")
        _error(whip("/whip/bad%20name?profile=always", "v=0\r\n"), 400, "invalid stream name")
        _error(whip("/whip/x?profile=always", b"v=0\r\n\xff\xfe"), 400, "not UTF-8")
        _error(whip("/whip/x?profile=always", "hello"), 400, "malformed SDP")
        _error(whip("/whip/x?profile=no/such", "v=0\r\n"), 400, "invalid profile name")
        _error(whip("/whip/x?profile=othermodel", "v=0\r\n"), 409, "re-enroll")
        _error(whip("/whip/cam1?profile=always", "v=0\r\n"), 409, "pulls from")

        # the alert lifecycle: each step once (AlertLifecycleError: 409)
        alert = AlertDetail.model_validate(http.get("/api/alerts").json()[0])
        _error(http.post("/api/alerts/nope/ack", json={"by": "a"}), 404, "unknown alert")
        acked = AlertDetail.model_validate(http.post(f"/api/alerts/{alert.id}/ack", json={"by": "ana"}).json())
        assert acked.status == "acknowledged" and acked.acknowledged_by == "ana"
        _error(http.post(f"/api/alerts/{alert.id}/ack", json={"by": "ana"}), 409, "only an open alert")
        assert http.post(f"/api/alerts/{alert.id}/close", json={"by": "ana", "reason": "  "}).status_code == 422
        assert http.post(f"/api/alerts/{alert.id}/close", json={"by": "ana", "reason": "x", "x": 1}).status_code == 422
        closed = AlertDetail.model_validate(
            http.post(f"/api/alerts/{alert.id}/close", json={"by": "ana", "reason": "test"}).json())
        assert closed.status == "closed" and closed.close_reason == "test"
        _error(http.post(f"/api/alerts/{alert.id}/close", json={"by": "ana", "reason": "again"}), 409, "already closed")
