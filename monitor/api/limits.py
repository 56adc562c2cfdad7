"""HTTP policy around the app: the request-body size limit and the optional CORS allow-list.

``BodyLimit`` is a plain ASGI middleware: a request whose ``Content-Length`` is over the
limit is answered 413 without reaching a route; a body without one (chunked) is counted
as the route reads it, and 413 is answered as soon as it grows past the limit. The
answer is the API's usual ``{"detail": ...}`` JSON (ErrorBody) with ``Connection: close``.

Before answering, what the client is still sending is read and dropped (up to
``DRAIN_CAP``): closing a socket with unread data makes the kernel reset the connection,
and the client would see "connection reset" instead of the 413 (as in app._read_limited).
"""

from __future__ import annotations

import json

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from expose.monitor.config import ServerSection

DRAIN_CAP = 8 << 20  # bytes read and dropped from an oversized request before the 413


def install_http_policy(app: FastAPI, cfg: ServerSection) -> None:
    """Add the body limit and, when ``server.cors_origins`` is set, CORS for exactly those origins.

    CORS is added last, so it is the outer layer and a 413 also carries its headers.
    """
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    if cfg.cors_origins:
        # bearer tokens, no cookies: no credentials; Location / ETag for a browser WHIP client
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Location", "ETag"], allow_credentials=False, max_age=600)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body grows past the limit: FastAPI's handlers pass an
    HTTPException through to the app's 413 handler; anything else lets it reach BodyLimit."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail, headers={"Connection": "close"})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # that client waits before sending
                await _drain(receive, 0)
            await _reject(send, f"request body of {int(declared)} bytes is over the {limit}-byte limit")
            return

        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body", False):
                        await _drain(receive, seen)
                    raise BodyTooLarge(f"request body is over the {limit}-byte limit")
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # not turned into a response on the way out (e.g. a mounted app)
            if started:
                raise
            await _reject(send, str(exc.detail))


async def _drain(receive: Receive, seen: int) -> None:
    while seen <= DRAIN_CAP:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _reject(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
