"""Bad input to the running server: each gets its status code and a clear message, and a
stream that is being watched meanwhile keeps being scored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import websockets
from live_support import (
    SPEECH_CLIP,
    TOKEN,
    live_config,
    running_server,
)

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)

# a syntactically fine offer with audio only (no face to watch)
AUDIO_ONLY = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
              "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
              "a=sendonly\r\na=mid:0\r\n")


def _whip(http: httpx.Client, path: str, body: str | bytes, token: str | None = TOKEN,
          ctype: str = "application/sdp") -> httpx.Response:
    headers = {"Content-Type": ctype} | ({"Authorization": f"Bearer {token}"} if token else {})
    return http.post(path, content=body, headers=headers)


def _windows(http: httpx.Client) -> int:
    return int(http.get("/api/streams/cam", headers={"Authorization": f"Bearer {TOKEN}"}).json()["health"]["windows"])


def test_bad_requests_get_clear_errors_and_do_not_disturb_streams(
        tiny_model: Path, profiles_dir: Path, clip: Clip, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, server={"max_sdp_bytes": 4096}, streams=[
        {"name": "cam", "url": str(clip(SPEECH_CLIP)), "profile": "trump", "loop": True}])
    with running_server(cfg, tiny_model, profiles_dir) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while _windows(http) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = _windows(http)
        assert before >= 1

        r = _whip(http, "/whip/x?profile=trump", "v=0\r\n", token=None)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"] == "missing bearer token"
        r = _whip(http, "/whip/x?profile=trump", "v=0\r\n", token="wrong")
        assert r.status_code == 401 and r.json()["detail"] == "wrong token"
        r = _whip(http, "/whip/x?profile=trump", "v=0\r\n", ctype="text/plain")
        assert r.status_code == 415 and "application/sdp" in r.json()["detail"]
        r = _whip(http, "/whip/x?profile=trump", "hello, not SDP")
        assert r.status_code == 400 and "malformed SDP" in r.json()["detail"]
        r = _whip(http, "/whip/x?profile=trump", AUDIO_ONLY)
        assert r.status_code == 400 and "no video" in r.json()["detail"]
        r = _whip(http, "/whip/x?profile=nobody", AUDIO_ONLY)
        assert r.status_code == 404 and "unknown profile 'nobody'" in r.json()["detail"]
        r = _whip(http, "/whip/x", AUDIO_ONLY)
        assert r.status_code == 400 and "no claimed profile" in r.json()["detail"]
        r = _whip(http, "/whip/x?profile=trump", "v=0\r\n" + "a=x\r\n" * 2000)
        assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]

        def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(100):
                yield b"a=x\r\n" * 20

        r = http.post("/whip/x?profile=trump", content=chunks(),
                      headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 413
        r = _whip(http, "/whip/bad name?profile=trump", AUDIO_ONLY)
        assert r.status_code == 400 and "invalid stream name" in r.json()["detail"]
        r = _whip(http, "/whip/cam?profile=trump", AUDIO_ONLY)
        assert r.status_code == 409 and "pulls from" in r.json()["detail"]

        assert http.get("/api/streams").status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert http.get("/api/alerts/nope", headers=auth).status_code == 404
        assert http.post("/api/alerts/nope/ack", json={"by": "a"}, headers=auth).status_code == 404
        assert http.post("/api/streams", json={"name": "cam", "url": "x.mp4"}, headers=auth).status_code == 409
        r = http.post("/api/streams", json={"name": "y", "url": "x.mp4", "profile": "nobody"}, headers=auth)
        assert r.status_code == 404
        assert http.post("/api/streams", json={"name": "y", "bogus": 1}, headers=auth).status_code == 422
        assert http.delete("/whip/cam/nosuchsession", headers=auth).status_code == 404

        async def ws_with(token: str) -> tuple[int | None, str | None]:
            async with websockets.connect(f"{srv.ws_url}?token={token}", open_timeout=10) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return ws.close_code, ws.close_reason

        assert asyncio.run(ws_with("wrong")) == (4401, "wrong token")

        deadline = time.monotonic() + 60
        while _windows(http) <= before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _windows(http) > before  # the watched stream went on
        assert http.get("/api/streams/cam", headers=auth).json()["health"]["phase"] == "live"
        schema = http.get("/openapi.json").json()
        assert {"/whip/{stream}", "/api/streams", "/api/alerts/{alert_id}/ack"} <= set(schema["paths"])
