"""Pull sources with real servers: files, a real GStreamer RTSP server serving a corpus clip,
and an HTTP server that dies mid-stream (reconnects with backoff, then ``failed``)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import pytest
from live_support import (
    SPEECH_CLIP,
    collect_events,
    live_config,
    rtsp_server,
    running_server,
)

from expose.monitor.errors import MediaError
from expose.monitor.media.reader import AudioChunk, VideoFrame
from expose.monitor.media.sources import DropQueue, EndOfStream, PullSource

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(300)
HERE = Path(__file__).parent


def _v(t: float) -> VideoFrame:
    return VideoFrame(None, None, t, np.zeros((4, 4, 3), dtype=np.uint8))


def _a(t: float) -> AudioChunk:
    return AudioChunk(t, np.zeros(160, dtype=np.float32))


def test_drop_queue_drops_the_oldest_video_frame_and_keeps_audio() -> None:
    async def go() -> tuple[list[Any], int]:
        q = DropQueue(3)
        for item in (_a(0.0), _v(0.0), _v(0.04), _a(0.01), _v(0.08)):
            q.put_nowait(item)
        q.close()
        got = []
        with pytest.raises(EndOfStream):
            while True:
                got.append(await q.get())
        return got, q.dropped

    got, dropped = asyncio.run(go())
    assert dropped == 2
    assert [(type(i).__name__, i.time) for i in got] == [("AudioChunk", 0.0), ("AudioChunk", 0.01),
                                                         ("VideoFrame", 0.08)]


def test_file_source_read_as_fast_as_possible_loses_nothing(clip: Clip) -> None:
    async def go() -> tuple[list[float], int, int]:
        src = PullSource(str(clip(SPEECH_CLIP)), realtime=False, queue_items=8)
        times, samples = [], 0
        try:
            while True:
                item = await asyncio.wait_for(src.recv(), 30)
                if isinstance(item, VideoFrame):
                    times.append(item.time)
                else:
                    samples += len(item.samples)
        except EndOfStream:
            pass
        return times, samples, src.dropped

    times, samples, dropped = asyncio.run(go())
    assert len(times) == 250 and times == sorted(times) and dropped == 0
    assert abs(samples - 160_000) < 1600


def test_missing_file_is_a_media_error_from_recv(tmp_path: Path) -> None:
    async def go() -> None:
        await asyncio.wait_for(PullSource(str(tmp_path / "nope.mp4")).recv(), 30)

    with pytest.raises(MediaError, match="no such file"):
        asyncio.run(go())


# ---- a server that dies mid-stream -------------------------------------------------------

@pytest.fixture(scope="module")
def ts_clip(clip: Clip, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The speech clip remuxed (no re-encoding) to MPEG-TS, which streams over plain HTTP."""
    out = tmp_path_factory.mktemp("ts") / "clip.ts"
    with av.open(str(clip(SPEECH_CLIP))) as src, av.open(str(out), "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    return out.read_bytes()


@pytest.fixture
def dying_http(ts_clip: bytes) -> Iterator[tuple[str, list[int]]]:
    """http://127.0.0.1:PORT/clip.ts: the first two requests get 40 % of the clip and then the
    connection drops; later ones are refused with 503 (the camera is gone)."""
    hits: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            hits.append(1)
            if len(hits) > 2:
                self.send_error(503, "gone")
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            self.wfile.write(ts_clip[: int(len(ts_clip) * 0.4)])
            self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/clip.ts", hits
    finally:
        server.shutdown()
        server.server_close()


def test_source_dying_mid_stream_reconnects_with_backoff_then_fails(
        dying_http: tuple[str, list[int]], tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    url, hits = dying_http
    cfg = live_config(tmp_path, live={"backoff_initial_s": 0.2, "backoff_max_s": 0.4, "max_restarts": 2,
                                      "open_timeout_s": 5})
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        with srv.client() as http_:
            r = http_.post("/api/streams", json={"name": "cam", "url": url, "profile": "trump"})
            assert r.status_code == 201, r.text

        def failed(ms: list[dict[str, Any]]) -> bool:
            return any(m["type"] == "stream" and m.get("phase") == "failed" for m in ms)

        msgs = asyncio.run(collect_events(srv.ws_url, failed, since=0, timeout=120))
        with srv.client() as http_:
            health = http_.get("/api/streams/cam/health").json()
            view = http_.get("/api/streams/cam").json()
            alive = http_.get("/healthz").json()
    phases = [m["phase"] for m in msgs if m["type"] == "stream" and m.get("action") == "phase"]
    assert phases[:3] == ["live", "down", "connecting"], phases
    assert phases[-1] == "failed" and "down" in phases
    assert health["phase"] == "failed" and health["reconnects"] == 2 and "restarts" in health["reason"]
    assert health["last_frame_age_s"] is not None
    assert len(hits) == 3  # first connection + two reconnects
    # the stream's state is the one its last window left (none scored: insufficient, never authentic)
    states = [m["state"] for m in msgs if m["type"] == "score" and m["stream"] == "cam"]
    assert view["state"] == (states[-1] if states else "insufficient")
    assert alive["status"] == "ok"


# ---- a real RTSP server --------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def rtsp_url(clip: Clip) -> Iterator[str]:
    with rtsp_server(clip(SPEECH_CLIP)) as url:
        yield url


def test_rtsp_stream_is_scored(rtsp_url: str, tiny_model: Path, profiles_dir: Path, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, streams=[{"name": "door", "url": rtsp_url, "profile": "always"}])
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        def scored(ms: list[dict[str, Any]]) -> bool:
            return any(m["type"] == "score" and m["status"] == "scored" for m in ms)

        msgs = asyncio.run(collect_events(srv.ws_url, scored, since=0, timeout=90))
        with srv.client() as http_:
            health = http_.get("/api/streams/door/health").json()
            assert http_.delete("/api/streams/door").status_code == 204
            assert http_.get("/api/streams/door").status_code == 404
    scores = [m for m in msgs if m["type"] == "score" and m["stream"] == "door"]
    assert scored(scores), [s.get("reason") for s in scores]
    assert health["kind"] == "pull" and health["url"] == rtsp_url and health["windows"] >= 1
    assert isinstance(health["behind"], bool)
    assert health["behind"] or (health["dropped_frames"] == 0 and health["skipped_windows"] == 0)
