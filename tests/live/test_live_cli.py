"""`expose watch` and `expose serve` as a user runs them (subprocesses, real files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from live_support import SPEECH_CLIP, stop_process

if TYPE_CHECKING:
    from tests.conftest import Clip, RunCli

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]


def test_watch_prints_a_line_per_window_and_the_alert(run_cli: RunCli, clip: Clip, tiny_model: Path,
                                                     profiles_dir: Path) -> None:
    r = run_cli("watch", clip(SPEECH_CLIP), "--as", "always", "--profiles", profiles_dir, "--model", tiny_model,
                "--no-realtime", "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    scores = [e for e in events if e["type"] == "score"]
    assert len(scores) >= 7  # a 10 s clip, 2.56 s windows every second
    assert [s["t0"] for s in scores] == sorted(s["t0"] for s in scores)
    assert any(e["type"] == "alert" and e["action"] == "opened" for e in events)


def test_watch_missing_file_is_one_line_error(run_cli: RunCli, tmp_path: Path, tiny_model: Path,
                                              profiles_dir: Path) -> None:
    r = run_cli("watch", tmp_path / "nope.mp4", "--as", "trump", "--profiles", profiles_dir, "--model", tiny_model)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_serve_starts_prints_the_dashboard_and_stops_on_sigint(tmp_path: Path, tiny_model: Path,
                                                               profiles_dir: Path) -> None:
    cfg = tmp_path / "expose.toml"
    cfg.write_text(f'[server]\ndb_path = "{tmp_path / "m.sqlite3"}"\n', encoding="utf-8")
    env = {**os.environ, "EXPOSE_TOKEN": "tok-abc"}
    proc = subprocess.Popen([sys.executable, "-m", "expose.monitor.cli", "serve", "--config", str(cfg), "--port", "0",
                             "--model", str(tiny_model), "--profiles", str(profiles_dir)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        dash = next(line for line in lines if line.startswith("dashboard:"))
        base = dash.split()[1].split("/dashboard")[0]
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(f"{base}/dashboard/", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not answer"
                time.sleep(0.2)
        assert page.status_code == 200 and "expose" in page.text
        profs = httpx.get(f"{base}/api/profiles", headers={"Authorization": "Bearer tok-abc"}, timeout=10).json()
        assert {p["name"] for p in profs} == {"always", "trump"} and all(p["compatible"] for p in profs)
    finally:
        stop_process(proc, signal.SIGINT, timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def test_token_env_overrides_the_config_file_then_one_is_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    from expose.monitor.api.serve import Token, resolve_token
    from expose.monitor.config import Config

    cfg = Config.model_validate({"server": {"token": "from-file"}})
    monkeypatch.setenv("EXPOSE_TOKEN", "from-env")
    assert resolve_token(cfg) == Token("from-env", False)
    monkeypatch.delenv("EXPOSE_TOKEN")
    assert resolve_token(cfg) == Token("from-file", False)
    generated = resolve_token(Config())
    assert generated.generated and len(generated.value) >= 20 and generated.value != resolve_token(Config()).value
