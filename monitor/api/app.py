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
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from expose.exporters.websocket import WebsocketHub
from expose.monitor import __version__
from expose.monitor.alerts.policy import AlertLifecycleError
from expose.monitor.config import StreamConfig
from expose.monitor.live.monitor import LiveMonitor, NotFound, StreamError
from expose.monitor.media.whip import SdpError
from expose.profiles.store import ProfileError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_bearer = HTTPBearer(auto_error=False, description="The monitor's token (config server.token / env EXPOSE_TOKEN).")


class AckBody(BaseModel):
    by: str = Field(min_length=1, max_length=200, description="Who acknowledges (operator name or id).")


class CloseBody(BaseModel):
    by: str = Field(min_length=1, max_length=200, description="Who closes the alert.")
    reason: str = Field(min_length=1, max_length=1000, description="Why: e.g. 'confirmed impostor', 'false alarm'.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def create_app(monitor: LiveMonitor, hub: WebsocketHub, token: str) -> FastAPI:
    cfg = monitor.cfg.server

    def check_token(supplied: str | None) -> bool:
        return supplied is not None and secrets.compare_digest(supplied.encode(), token.encode())

    def auth(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if creds is None:
            raise _unauthorized("missing bearer token")
        if not check_token(creds.credentials):
            raise _unauthorized("wrong token")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await monitor.start()
        try:
            yield
        finally:
            await monitor.stop()

    app = FastAPI(title="expose live monitor", version=__version__, lifespan=lifespan,
                  description="Live-call impersonation monitor: WHIP ingest, streams, profiles, alerts.")

    # ---- WHIP (RFC 9725) -------------------------------------------------------------
    whip = APIRouter(tags=["whip"])

    @whip.post("/whip/{stream}", status_code=201, dependencies=[Depends(auth)], responses={
        201: {"content": {"application/sdp": {}}, "description": "SDP answer; Location: the session URL"},
        400: {"description": "malformed SDP or no claimed profile"}, 401: {"description": "missing / wrong token"},
        404: {"description": "unknown profile"}, 409: {"description": "stream busy"},
        413: {"description": "offer too large"}, 415: {"description": "not application/sdp"}})
    async def whip_publish(stream: str, request: Request,
                           profile: Annotated[str | None, Query(description="Claimed profile")] = None) -> Response:
        """Publish a WebRTC stream (WHIP): POST an SDP offer, get the answer."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/sdp":
            raise HTTPException(415, f"WHIP offers are application/sdp, not {ctype or 'no content type'}")
        offer = await _read_limited(request, cfg.max_sdp_bytes)
        try:
            StreamConfig(name=stream)  # the same name rule as configured streams
        except ValueError:
            raise HTTPException(400, f"invalid stream name {stream!r}: 1-64 letters, digits, '_', '.', '-'") from None
        try:
            session = await monitor.start_whip(stream, profile, offer)
        except ProfileError as err:
            raise _profile_http(monitor, err) from None
        except SdpError as err:
            raise HTTPException(400, str(err)) from None
        except StreamError as err:
            code = 400 if "no claimed profile" in str(err) else 409
            raise HTTPException(code, str(err)) from None
        location = f"/whip/{stream}/{session.id}"
        return Response(session.answer, status_code=201, media_type="application/sdp",
                        headers={"Location": location, "ETag": f'"{session.id}"'})

    @whip.delete("/whip/{stream}/{session}", dependencies=[Depends(auth)])
    async def whip_end(stream: str, session: str) -> Response:
        """End a WHIP session."""
        await monitor.end_whip(stream, session)
        return Response(status_code=200)

    @whip.patch("/whip/{stream}/{session}", status_code=405)
    async def whip_patch(stream: str, session: str) -> Response:
        """Trickle ICE / ICE restart are not supported: the answer carries all candidates."""
        return Response("trickle ICE is not supported; the answer holds every candidate", status_code=405,
                        headers={"Allow": "POST, DELETE"})

    # ---- REST API --------------------------------------------------------------------
    # (dependencies=, not annotations: with postponed annotations FastAPI cannot resolve a closure)
    api = APIRouter(prefix="/api", dependencies=[Depends(auth)])

    @api.get("/streams", tags=["streams"])
    async def list_streams() -> list[dict[str, Any]]:
        return [v.to_dict() for v in monitor.views()]

    @api.post("/streams", status_code=201, tags=["streams"])
    async def add_stream(spec: StreamConfig) -> dict[str, Any]:
        """Watch a file or URL (rtsp://, http(s)://), or register a WHIP stream name (no url)."""
        try:
            return monitor.add_stream(spec).to_dict()
        except ProfileError as err:
            raise _profile_http(monitor, err) from None
        except StreamError as err:
            raise HTTPException(409, str(err)) from None

    @api.get("/streams/{name}", tags=["streams"])
    async def get_stream(name: str) -> dict[str, Any]:
        return monitor.view(name).to_dict()

    @api.get("/streams/{name}/health", tags=["streams"])
    async def stream_health(name: str) -> dict[str, Any]:
        v = monitor.view(name)
        return v.to_dict()["health"] or {"name": name, "phase": "idle"}

    @api.delete("/streams/{name}", status_code=204, tags=["streams"])
    async def remove_stream(name: str) -> Response:
        await monitor.remove_stream(name)
        return Response(status_code=204)

    @api.get("/profiles", tags=["profiles"])
    async def list_profiles() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for n in monitor.profile_names():
            try:
                p = monitor.profiles.load(n)
            except ProfileError as err:
                rows.append({"name": n, "error": str(err)})
                continue
            rows.append({"name": n, "created": p.created, "threshold": p.calibration.threshold,
                         "references": len(p.references), "base_model": p.base_model_sha256[:12],
                         "compatible": p.base_model_sha256 == monitor.base_sha256})
        return rows

    @api.get("/alerts", tags=["alerts"])
    async def list_alerts(
        status: Annotated[str | None, Query(pattern="^(open|acknowledged|closed)$")] = None,
        stream: str | None = None, profile: str | None = None,
        since: Annotated[float | None, Query(description="Opened at or after (epoch seconds)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        return [a.to_dict() for a in monitor.store.list_alerts(status=status, stream=stream, profile=profile,
                                                               since=since, limit=limit)]

    @api.get("/alerts/{alert_id}", tags=["alerts"])
    async def get_alert(alert_id: str) -> dict[str, Any]:
        return monitor.alert(alert_id).to_dict()

    @api.post("/alerts/{alert_id}/ack", tags=["alerts"])
    async def ack(alert_id: str, body: AckBody) -> dict[str, Any]:
        return monitor.acknowledge(alert_id, body.by).to_dict()

    @api.post("/alerts/{alert_id}/close", tags=["alerts"])
    async def close(alert_id: str, body: CloseBody) -> dict[str, Any]:
        return monitor.close(alert_id, body.by, body.reason).to_dict()

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """Liveness, without a token."""
        loop = monitor.loop
        return {"status": "ok", "version": __version__, "streams": len(monitor.stream_names()),
                "scoring": {"pending": loop.pending, "batches": loop.batches, "dropped": loop.dropped,
                            "last_batch": loop.last_batch_size, "last_latency_s": loop.last_latency_s},
                "websocket_clients": hub.clients}

    # ---- websocket -------------------------------------------------------------------
    @app.websocket("/ws")
    async def ws(websocket: WebSocket, token: str | None = None, since: int | None = None) -> None:
        """Events as JSON: ``?since=SEQ`` replays what followed SEQ, ``?since=-N`` the last N events."""
        supplied = token
        header = websocket.headers.get("authorization", "")
        if supplied is None and header.lower().startswith("bearer "):
            supplied = header[7:].strip()
        await websocket.accept()
        if not check_token(supplied):
            await websocket.close(code=4401, reason="missing or wrong token")
            return
        await _stream_events(websocket, monitor, hub, since, cfg.heartbeat_s)

    app.include_router(whip)
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard", StaticFiles(directory=STATIC, html=True), name="dashboard")

    # One mapping for the whole API instead of a try/except in every route.
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(AlertLifecycleError)
    async def lifecycle_conflict(request: Request, exc: AlertLifecycleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(413)
    async def too_large(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=413, headers={"Connection": "close"})

    return app


def _profile_http(monitor: LiveMonitor, err: ProfileError) -> HTTPException:
    msg = str(err)
    return HTTPException(404 if msg.startswith("unknown profile") else 409, msg)


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
        raise HTTPException(400, "malformed SDP offer: not UTF-8 text") from None


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
                for ev in page:
                    await websocket.send_text(ev.to_json())
                    last = ev.seq
                if len(page) < 1000:
                    break
        await websocket.send_json(_heartbeat(last, monitor))
        while not closed.is_set():
            try:
                ev = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                await websocket.send_json(_heartbeat(last, monitor))
                continue
            if sub.lagging:
                await websocket.close(code=1013, reason=f"too slow; reconnect with ?since={last}")
                return
            if ev.seq <= last:
                continue
            await websocket.send_text(ev.to_json())
            last = ev.seq
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        watcher.cancel()
        if websocket.application_state == WebSocketState.CONNECTED and not closed.is_set():
            with contextlib.suppress(Exception):
                await websocket.close()


def _heartbeat(seq: int, monitor: LiveMonitor) -> dict[str, Any]:
    return {"seq": seq, "type": "heartbeat", "stream": None, "ts": time.time(),
            "streams": {v.name: v.state for v in monitor.views()}}
