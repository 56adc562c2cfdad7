"""The HTTP face of the live monitor: WHIP ingest, the REST API (OpenAPI at /docs), the
websocket event stream and the dashboard, in one FastAPI app.

``create_app`` takes an already-built LiveMonitor (the composition root builds it)
and closes over it; nothing is stored on the app object. One token opens WHIP, the
API (``Authorization: Bearer``) and the websocket (``?token=`` works from a browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from expose.exporters.outbox import OutboxState
from expose.exporters.websocket import WebsocketHub
from expose.monitor import __version__
from expose.monitor.alerts.events import AlertDetail, AuditData, HeartbeatEvent
from expose.monitor.alerts.policy import AlertLifecycleError, AlertStatus
from expose.monitor.api.access import ROUTES, AccessError, AccessStore, Permission, Principal, RateLimiter
from expose.monitor.api.limits import install_http_policy
from expose.monitor.api.schemas import (
    AckBody,
    AuditRecord,
    CloseBody,
    ErrorBody,
    ExporterInfo,
    Health,
    IdleHealth,
    OutboxEntryInfo,
    ProfileInfo,
    ProfileUnreadable,
    ScoringStats,
    StreamHealthInfo,
    StreamInfo,
)
from expose.monitor.config import StreamConfig
from expose.monitor.live.monitor import BadStreamRequest, LiveMonitor, NotFound, StreamError
from expose.monitor.live.store import CLUSTER_CURSOR
from expose.monitor.media.whip import SdpError
from expose.profiles.store import InvalidProfileName, ProfileError, UnknownProfile

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_bearer = HTTPBearer(auto_error=False, description="The monitor's token (config server.token / env EXPOSE_TOKEN).")

# The status of each domain error, by type: an error gets that of the nearest class in its
# MRO, so a subclass refines its base (UnknownProfile 404, any other ProfileError 409).
ERROR_STATUS: dict[type[Exception], int] = {
    NotFound: 404, UnknownProfile: 404,
    BadStreamRequest: 400, InvalidProfileName: 400, SdpError: 400,
    StreamError: 409, ProfileError: 409, AlertLifecycleError: 409,
}


def status_of(exc: Exception) -> int:
    return next(ERROR_STATUS[c] for c in type(exc).__mro__ if c in ERROR_STATUS)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))


def _errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with an ErrorBody."""
    return {code: {"model": ErrorBody, "description": text} for code, text in described.items()}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def create_app(monitor: LiveMonitor, hub: WebsocketHub, token: str, access: AccessStore | None = None) -> FastAPI:
    """``token``: the configured admin token; ``access``: the stored role tokens and the audit
    log (default: in the monitor's SQLite file)."""
    cfg = monitor.cfg.server
    tokens = access if access is not None else AccessStore(monitor.store.path)
    limiter = RateLimiter(cfg.rate_limit_per_s, cfg.rate_limit_burst)

    def record(who: Principal, action: str, target: str, stream: str | None = None, **detail: Any) -> None:
        """One audit row, published as an ``audit`` event."""
        entry = tokens.audit(who, action, target, **detail)
        monitor.emit(stream, AuditData(audit_id=entry.id, actor=entry.actor, role=entry.role, action=action,
                                       target=target, detail=entry.detail))

    def admit(supplied: str | None, permission: Permission, method: str, path: str,
              stream: str | None = None) -> Principal:
        """The caller, if its token is valid, within its rate and allowed ``permission``; else
        the HTTPException to answer (401, 429, 403; a refusal of a valid token is audited)."""
        try:
            who = tokens.authenticate(supplied, token)
        except AccessError as err:
            raise _unauthorized(str(err)) from None
        wait = limiter.wait_s(who.id)
        if wait > 0:
            raise HTTPException(429, f"rate limit of token {who.name!r} exceeded ({cfg.rate_limit_per_s:g}/s)",
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        why = None
        if not who.allows(permission):
            why = f"role {who.role} may not call {method} {path} (needs {permission})"
        elif permission == "ingest" and who.stream is not None and stream != who.stream:
            why = f"token {who.name!r} may only publish to stream {who.stream!r}"
        if why is not None:
            record(who, "denied", f"{method} {path}", stream, reason=why)
            raise HTTPException(403, why)
        return who

    def auth(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        permission = ROUTES.get((request.method, path), "admin")  # a route not in the table: admins only
        who = admit(creds.credentials if creds else None, permission, request.method, path,
                    request.path_params.get("stream"))
        request.state.principal = who
        return who

    def caller(request: Request) -> Principal:
        who: Principal = request.state.principal
        return who

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await monitor.start()
        try:
            yield
        finally:
            await monitor.stop()

    app = FastAPI(title="expose live monitor", version=__version__, lifespan=lifespan,
                  description="Live-call impersonation monitor: WHIP ingest, streams, profiles, alerts.")
    install_http_policy(app, cfg)  # server.max_body_bytes (413), server.cors_origins

    # ---- WHIP (RFC 9725) -------------------------------------------------------------
    whip = APIRouter(tags=["whip"])

    @whip.post("/whip/{stream}", status_code=201, dependencies=[Depends(auth)], response_class=Response,
               responses={
                   201: {"description": "The SDP answer; Location: the session URL (DELETE it to end)",
                         "content": {"application/sdp": {"schema": {"type": "string"}}},
                         "headers": {"Location": {"description": "/whip/{stream}/{session}",
                                                 "schema": {"type": "string"}},
                                     "ETag": {"description": "The session id, quoted", "schema": {"type": "string"}}}},
                   **_errors({400: "malformed SDP, an offer without video, no claimed profile, an invalid stream "
                                   "name, an invalid profile name",
                              401: "missing or wrong token", 404: "unknown profile",
                              409: "the stream already has a publisher or pulls from a URL; the profile is damaged "
                                   "or enrolled with another base model",
                              413: "offer over server.max_sdp_bytes", 415: "not application/sdp"})})
    async def whip_publish(stream: str, request: Request,
                           profile: Annotated[str | None, Query(description="Claimed profile")] = None) -> Response:
        """Publish a WebRTC stream (WHIP): POST an SDP offer, get the answer."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise HTTPException(415, f"WHIP offers are application/sdp, not {ctype or 'no content type'}")
        offer = await _read_limited(request, cfg.max_sdp_bytes)
        session = await monitor.start_whip(stream, profile, offer)
        record(caller(request), "whip.publish", stream, stream, session=session.id, profile=session.profile)
        location = f"/whip/{stream}/{session.id}"
        return Response(session.answer, status_code=201, media_type="application/sdp",
                        headers={"Location": location, "ETag": f'"{session.id}"'})

    @whip.delete("/whip/{stream}/{session}", dependencies=[Depends(auth)], response_class=Response, responses={
        200: {"description": "Session ended (empty body)"},
        **_errors({401: "missing or wrong token", 404: "no such session on that stream"})})
    async def whip_end(stream: str, session: str, request: Request) -> Response:
        """End a WHIP session."""
        await monitor.end_whip(stream, session)
        record(caller(request), "whip.end", stream, stream, session=session)
        return Response(status_code=200)

    @whip.patch("/whip/{stream}/{session}", status_code=405, response_class=Response, responses={
        405: {"description": "Not supported; Allow: POST, DELETE",
              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def whip_patch(stream: str, session: str) -> Response:
        """Trickle ICE / ICE restart are not supported: the answer carries all candidates."""
        return Response("trickle ICE is not supported; the answer holds every candidate", status_code=405,
                        media_type="text/plain", headers={"Allow": "POST, DELETE"})

    # ---- REST API --------------------------------------------------------------------
    # (dependencies=, not annotations: with postponed annotations FastAPI cannot resolve a closure)
    api = APIRouter(prefix="/api", dependencies=[Depends(auth)],
                    responses=_errors({401: "missing or wrong token"}))

    @api.get("/streams", tags=["streams"])
    async def list_streams() -> list[StreamInfo]:
        """Every stream: pulled ones and WHIP stream names."""
        return [StreamInfo.of(v) for v in monitor.views()]

    @api.post("/streams", status_code=201, tags=["streams"], responses=_errors({
        400: "invalid profile name; a body that is not JSON", 404: "unknown profile",
        409: "the name is taken; the profile is damaged or enrolled with another base model"}))
    async def add_stream(spec: StreamConfig, request: Request) -> StreamInfo:
        """Watch a file or URL (rtsp://, http(s)://), or register a WHIP stream name (no url)."""
        info = StreamInfo.of(monitor.add_stream(spec))
        record(caller(request), "stream.add", spec.name, spec.name, url=spec.url, profile=spec.profile)
        return info

    @api.get("/streams/{name}", tags=["streams"], responses=_errors({404: "unknown stream"}))
    async def get_stream(name: str) -> StreamInfo:
        return StreamInfo.of(monitor.view(name))

    @api.get("/streams/{name}/health", tags=["streams"], responses=_errors({404: "unknown stream"}))
    async def stream_health(name: str) -> StreamHealthInfo | IdleHealth:
        """The source's health; a WHIP stream without a publisher is idle."""
        v = monitor.view(name)
        return StreamHealthInfo.of(v.health) if v.health is not None else IdleHealth(name=name, phase="idle")

    @api.delete("/streams/{name}", status_code=204, tags=["streams"], response_class=Response,
                responses=_errors({404: "unknown stream"}))
    async def remove_stream(name: str, request: Request) -> Response:
        """Stop the stream and forget it (also across restarts)."""
        await monitor.remove_stream(name)
        record(caller(request), "stream.remove", name, name)
        return Response(status_code=204)

    @api.get("/profiles", tags=["profiles"])
    async def list_profiles() -> list[ProfileInfo | ProfileUnreadable]:
        """Every profile in the store; one that cannot be loaded is listed with the reason."""
        rows: list[ProfileInfo | ProfileUnreadable] = []
        for n in monitor.profile_names():
            try:
                p = monitor.profiles.load(n)
            except ProfileError as err:  # one unreadable profile must not hide the others
                rows.append(ProfileUnreadable(name=n, error=str(err)))
                continue
            rows.append(ProfileInfo.of(p, monitor.base_sha256, monitor.decision_sha256))
        return rows

    @api.get("/alerts", tags=["alerts"])
    async def list_alerts(
        status: AlertStatus | None = None,
        stream: str | None = None, profile: str | None = None,
        since: Annotated[float | None, Query(description="Opened at or after (epoch seconds)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AlertDetail]:
        """Alerts, newest first."""
        return [AlertDetail.of(a) for a in monitor.store.list_alerts(status=status, stream=stream, profile=profile,
                                                                     since=since, limit=limit)]

    @api.get("/alerts/{alert_id}", tags=["alerts"], responses=_errors({404: "unknown alert"}))
    async def get_alert(alert_id: str) -> AlertDetail:
        return AlertDetail.of(monitor.alert(alert_id))

    @api.post("/alerts/{alert_id}/ack", tags=["alerts"],
              responses=_errors({400: "a body that is not JSON", 404: "unknown alert", 409: "the alert is not open"}))
    async def ack(alert_id: str, body: AckBody, request: Request) -> AlertDetail:
        """Acknowledge an open alert: returns it updated."""
        alert = monitor.acknowledge(alert_id, body.by)
        record(caller(request), "alert.acknowledge", alert_id, alert.stream, by=body.by)
        return AlertDetail.of(alert)

    @api.post("/alerts/{alert_id}/close", tags=["alerts"],
              responses=_errors({400: "a body that is not JSON", 404: "unknown alert",
                                 409: "the alert is already closed"}))
    async def close(alert_id: str, body: CloseBody, request: Request) -> AlertDetail:
        """Close an open or acknowledged alert, with a reason: returns it updated."""
        alert = monitor.close(alert_id, body.by, body.reason)
        record(caller(request), "alert.close", alert_id, alert.stream, by=body.by, reason=body.reason)
        return AlertDetail.of(alert)

    @api.get("/exporters", tags=["exporters"])
    async def list_exporters() -> list[ExporterInfo]:
        """The configured exporters: deliveries since start and, for webhooks, the outbox by state."""
        return [ExporterInfo.of(s, kind) for s, kind in monitor.exporters()]

    @api.get("/exporters/{name}/outbox", tags=["exporters"],
             responses=_errors({404: "no such exporter, or it has no outbox"}))
    async def exporter_outbox(name: str, state: OutboxState | None = None,
                              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[OutboxEntryInfo]:
        """A webhook exporter's deliveries, newest first; ``?state=dead`` lists the dead-lettered."""
        return [OutboxEntryInfo.of(e) for e in monitor.outbox(name).entries(name, state, limit)]

    @api.post("/exporters/{name}/outbox/{entry_id}/retry", tags=["exporters"],
              responses=_errors({404: "no such exporter, or no dead entry with that id"}))
    async def retry_outbox(name: str, entry_id: str, request: Request) -> OutboxEntryInfo:
        """Queue a dead-lettered delivery again (its attempts start from zero)."""
        box = monitor.outbox(name)
        if not box.retry(name, entry_id):
            raise NotFound(f"no dead entry {entry_id!r} in exporter {name!r}")
        record(caller(request), "exporter.retry", entry_id, exporter=name)
        monitor.wake_exporter(name)
        return next(OutboxEntryInfo.of(e) for e in box.entries(name) if e.id == entry_id)

    @api.get("/audit", tags=["audit"])
    async def audit_log(since: Annotated[int, Query(ge=0, le=2**62, description="Entries after this audit id")] = 0,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditRecord]:
        """The append-only audit log, oldest first: who changed what, and refused calls of valid tokens."""
        return [AuditRecord.of(e) for e in tokens.audit_log(since_id=since, limit=limit)]

    # Prometheus text format, not JSON: documented in docs/siem.md, not in the OpenAPI schema
    # (whose clients have no use for it). The same token as /api (scrape_configs: authorization).
    @app.get("/metrics", dependencies=[Depends(auth)], include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics (monitor.live.telemetry); read on the event loop, as the streams change there."""
        return Response(monitor.telemetry.scrape(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Health:
        """Liveness, without a token."""
        return Health(status="ok", version=__version__, streams=len(monitor.stream_names()),
                      scoring=ScoringStats.of(monitor.loop), websocket_clients=hub.clients)

    # ---- websocket -------------------------------------------------------------------
    @app.websocket("/ws")
    async def ws(websocket: WebSocket, token: str | None = None, since: str | None = None) -> None:
        """Events as JSON: ``?since=SEQ`` replays what followed SEQ, ``?since=-N`` the last N events;
        in a cluster ``?since=ID`` (an event's ``origin``, the same on every console) what followed it."""
        supplied = token
        header = websocket.headers.get("authorization", "")
        if supplied is None and header.lower().startswith("bearer "):
            supplied = header[7:].strip()
        await websocket.accept()
        try:
            admit(supplied, ROUTES[("WS", "/ws")], "WS", "/ws")
        except HTTPException as err:
            code = {401: 4401, 403: 4403, 429: 4429}.get(err.status_code, 4400)
            await websocket.close(code=code, reason=str(err.detail)[:120])
            return
        after = None
        if since is not None:
            try:
                after = _since_seq(since, monitor)
            except ValueError as err:
                await websocket.close(code=1008, reason=str(err)[:120])
                return
        await _stream_events(websocket, monitor, hub, after, cfg.heartbeat_s)

    app.include_router(whip)
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard", StaticFiles(directory=STATIC, html=True), name="dashboard")

    # One mapping for the whole API instead of a try/except in every route.
    for exc_type in ERROR_STATUS:
        app.add_exception_handler(exc_type, _domain_error)

    @app.exception_handler(413)
    async def too_large(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})

    return app


_DRAIN_CAP = 1 << 20


async def _read_limited(request: Request, limit: int) -> str:
    """The body as text, or 413 past ``limit`` bytes.

    An oversized body is still read (and dropped) up to 1 MiB before answering: closing
    the socket on a client that is still sending makes the kernel reset the connection,
    and the client then sees "connection reset" instead of the 413.
    """
    declared = request.headers.get("content-length")
    too_large = None
    if declared is not None and declared.isdigit() and int(declared) > limit:
        too_large = f"offer of {declared} bytes is over the {limit}-byte limit"
        if int(declared) > _DRAIN_CAP:
            raise HTTPException(413, too_large)
    body, seen = bytearray(), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if too_large is None and seen > limit:
            too_large = f"offer is over the {limit}-byte limit"
        if too_large is None:
            body += chunk
        elif seen > _DRAIN_CAP:
            break
    if too_large is not None:
        raise HTTPException(413, too_large)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("malformed SDP offer: not UTF-8 text") from None


def _since_seq(since: str, monitor: LiveMonitor) -> int:
    """``?since=``: an event seq (negative: the last N), or in a cluster a Redis entry id
    (``seq_at_origin`` refuses a malformed one)."""
    if re.fullmatch(r"-?\d{1,19}", since):
        return max(-(2**62), min(int(since), 2**62))  # SQLite integers are 64-bit
    if monitor.store.meta(CLUSTER_CURSOR) is not None:
        return monitor.store.seq_at_origin(since)
    raise ValueError("since: an event seq, or in a cluster an event's origin id (MS-N)")


async def _stream_events(websocket: WebSocket, monitor: LiveMonitor, hub: WebsocketHub, since: int | None,
                         heartbeat_s: float) -> None:
    """Replay from the store after ``since`` (if given), then live events and heartbeats.

    Subscribing before the replay and skipping ``seq <= last sent`` afterwards means no
    event is lost or sent twice at the seam.
    """
    sub = hub.subscribe()
    closed = asyncio.Event()

    async def watch_client() -> None:  # notice a client that goes away while we wait
        try:
            while True:
                await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            closed.set()

    watcher = asyncio.create_task(watch_client())
    last = monitor.store.last_seq()
    try:
        if since is not None:
            last = since if since >= 0 else max(0, last + since)  # since=-N: the last N events
            while True:
                page = await asyncio.to_thread(monitor.store.events_since, last, 1000)
                for rec in page:
                    last = rec.seq
                    try:
                        stored = rec.event()
                    except ValidationError as err:
                        # a row of another shape (another expose version): skipping it beats a
                        # connection that dies at the same row on every reconnect
                        log.warning("event %d (%s) is not a valid message, not replayed: %s", rec.seq, rec.type,
                                    str(err).splitlines()[0])
                        continue
                    await websocket.send_text(stored.model_dump_json())
                if len(page) < 1000:
                    break
        await websocket.send_text(_heartbeat(last, monitor).model_dump_json())
        while not closed.is_set():
            try:
                ev = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                await websocket.send_text(_heartbeat(last, monitor).model_dump_json())
                continue
            if sub.lagging:
                await websocket.close(code=1013, reason=f"too slow; reconnect with ?since={last}")
                return
            if ev.seq <= last:
                continue
            await websocket.send_text(ev.model_dump_json())
            last = ev.seq
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        watcher.cancel()
        if websocket.application_state == WebSocketState.CONNECTED and not closed.is_set():
            with contextlib.suppress(Exception):
                await websocket.close()


def _heartbeat(seq: int, monitor: LiveMonitor) -> HeartbeatEvent:
    return HeartbeatEvent(seq=seq, ts=time.time(), streams={v.name: v.state for v in monitor.views()})
