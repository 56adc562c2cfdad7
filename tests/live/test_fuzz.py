"""Fuzzing the live server: schemathesis against its OpenAPI schema (every operation, a
valid admin token) finds no 5xx and no response that breaks the schema; a corpus of
malformed WHIP offers all get a 4xx while a stream keeps being scored."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from live_support import SPEECH_CLIP, TOKEN, collect_events, live_config, running_server

if TYPE_CHECKING:
    from tests.conftest import Clip

pytestmark = pytest.mark.timeout(900)

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def test_schemathesis_finds_no_server_error_or_schema_violation(tiny_model: Path, profiles_dir: Path,
                                                                 tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    # no rate limit: the fuzzer is one token sending hundreds of requests
    cfg = live_config(tmp_path, server={"rate_limit_per_s": 0})
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        run = subprocess.run(
            [st, "run", f"{srv.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS,
             "--max-examples", "25", "--phases", "examples,coverage,fuzzing", "--workers", "1",
             "--request-timeout", "20", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=800, cwd=tmp_path)
        with srv.client() as http:
            assert http.get("/healthz").status_code == 200  # still up after it
    out = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(out)
    assert run.returncode == 0, out[-4000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", out)
    assert summary, out[-2000:]
    generated, passed = int(summary.group(1)), int(summary.group(2))
    operations = re.search(r"Operations:\s+(\d+) selected", out)
    print(f"\nschemathesis: {generated} cases over {operations.group(1) if operations else '?'} operations, "
          f"{passed} passed")
    assert generated == passed and generated >= 200, out[-2000:]


# ---- malformed WHIP offers ----------------------------------------------------------------

GOOD_PREFIX = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "application/sdp"),
    "truncated": (GOOD_PREFIX[:20].encode(), "application/sdp"),
    "binary": (bytes(range(256)) * 8, "application/sdp"),
    "not utf-8": (b"v=0\r\n\xff\xfe\xfd\r\n", "application/sdp"),
    "huge": (b"a=x\r\n" * 40_000, "application/sdp"),
    "no media sections": (GOOD_PREFIX.encode(), "application/sdp"),
    "audio only": ((GOOD_PREFIX + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
                    ).encode(), "application/sdp"),
    "video without ice or dtls": ((GOOD_PREFIX + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
                                   "a=rtpmap:96 VP8/90000\r\na=sendonly\r\n").encode(), "application/sdp"),
    "json body": (b'{"sdp": "v=0"}', "application/json"),
    "wrong content type": (GOOD_PREFIX.encode(), "text/plain"),
    "no content type": (GOOD_PREFIX.encode(), ""),
    "nul bytes": (b"v=0\x00\x00\x00", "application/sdp"),
    "garbage lines": (b"hello\r\nworld\r\n=\r\nm=\r\n", "application/sdp"),
}


def test_malformed_offers_get_4xx_and_do_not_disturb_a_scored_stream(tiny_model: Path, profiles_dir: Path,
                                                                      clip: Clip, tmp_path: Path) -> None:
    cfg = live_config(tmp_path, streams=[
        {"name": "cam1", "url": str(clip(SPEECH_CLIP)), "profile": "trump", "realtime": True, "loop": True}],
        server={"rate_limit_per_s": 0})
    statuses: dict[str, int] = {}
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        before = asyncio.run(collect_events(
            srv.ws_url, lambda ms: sum(m["type"] == "score" for m in ms) >= 2, timeout=60))
        with srv.client() as http:
            for name, (body, ctype) in MALFORMED.items():
                headers = {"content-type": ctype} if ctype else {}
                for stream in ("fuzz", "cam1"):  # a new name, and the pulled stream's own
                    r = http.post(f"/whip/{stream}?profile=trump", content=body, headers=headers)
                    statuses[f"{name} -> {stream}"] = r.status_code
                    assert 400 <= r.status_code < 500, f"{name} -> {stream}: {r.status_code} {r.text[:200]}"
                    assert "detail" in r.json()
            streams = {s["name"]: s for s in http.get("/api/streams").json()}
        after = asyncio.run(collect_events(
            srv.ws_url, lambda ms: sum(m["type"] == "score" and m["stream"] == "cam1" for m in ms) >= 2,
            timeout=60))
    assert sum(m["type"] == "score" for m in before) >= 2
    assert sum(m["type"] == "score" and m["stream"] == "cam1" for m in after) >= 2  # still scored
    assert set(streams) == {"cam1"} and streams["cam1"]["whip_session"] is None
    print(f"\nmalformed offers: {len(statuses)} requests, statuses {sorted(set(statuses.values()))}")
