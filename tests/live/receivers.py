"""Real HTTP receivers for the exporter tests: a Standard Webhooks endpoint that verifies
every signature with the ``standardwebhooks`` library, and a Splunk HEC endpoint. Each runs
a ThreadingHTTPServer on a loopback port in a thread; ``script`` makes it answer some
requests with an error status first (and a Retry-After header where given)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.monotonic() when it came


@dataclass
class Receiver:
    """``answer(request_number, headers, body) -> (status, extra headers)``; default 200."""

    port: int
    path: str
    verify: Callable[[bytes, dict[str, str]], None] | None = None
    answer: Callable[[int, dict[str, str], bytes], tuple[int, dict[str, str]]] | None = None
    requests: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra = 200, dict[str, str]()
                if self.path != rx.path:
                    status = 404
                elif rx.verify is not None:
                    try:
                        rx.verify(body, headers)
                    except WebhookVerificationError:
                        with rx._lock:
                            rx.bad_signatures += 1
                        status = 401
                with rx._lock:
                    n = len(rx.requests)
                    if status == 200 and rx.answer is not None:
                        status, extra = rx.answer(n, headers, body)
                    rx.requests.append(Received(headers, body, status, time.monotonic()))
                out = b'{"text":"Success","code":0}' if status == 200 else b'{"text":"error"}'
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status == 200]

    def unique_payloads(self) -> dict[str, Any]:
        """Accepted bodies by webhook-id: what a receiver that de-duplicates on the id keeps."""
        return {r.headers["webhook-id"]: json.loads(r.body) for r in self.accepted()}


def webhook_receiver(secret: str, port: int | None = None, **kw: Any) -> Receiver:
    hook = Webhook(secret)
    return Receiver(port or free_port(), "/hook", verify=lambda body, headers: hook.verify(body, headers), **kw)
