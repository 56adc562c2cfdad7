"""The ``expose`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from expose.monitor import __version__
from expose.monitor.features.track import FeatureTrack

if TYPE_CHECKING:
    from tests.conftest import Clip, RunCli

CLIP = "real/lrs2_00008/00008.mp4"  # 3 s
OTHER = "grid_s1/video/bbaf2n.mpg"  # 3 s
SUMMARY_KEYS = {"source", "duration_s", "frames", "fps", "face_ratio", "speech_ratio",
                "has_audio", "cached", "processing_s", "x_realtime"}

# (the clip, the output folder, the two finished runs)
JsonRuns = tuple[Path, Path, list[subprocess.CompletedProcess[str]]]


def expose_script() -> Path:
    script = Path(sys.executable).with_name("expose")
    if not script.is_file():
        pytest.skip(f"the `expose` console script is not installed beside {sys.executable}")
    return script


def test_console_script_help() -> None:
    proc = subprocess.run([str(expose_script()), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "features" in proc.stdout and "Usage" in proc.stdout


def test_features_help(run_cli: RunCli) -> None:
    proc = run_cli("features", "--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--json", "--output", "--allow-no-audio", "--no-cache", "--config"):
        assert option in proc.stdout
    assert "features" in proc.stdout


def test_version(run_cli: RunCli) -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"expose {__version__}"


def test_unknown_subcommand_fails(run_cli: RunCli) -> None:
    proc = run_cli("no-such-command")
    assert proc.returncode != 0
    assert "no-such-command" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {"EXPOSE_CACHE": str(tmp_path_factory.mktemp("cli-cache"))}


@pytest.fixture(scope="module")
def json_runs(clip: Clip, face_model: Path, module_cache: dict[str, str],
              tmp_path_factory: pytest.TempPathFactory) -> JsonRuns:
    """Two runs of ``expose features CLIP --json -o out.npz`` on an empty cache."""
    out = tmp_path_factory.mktemp("cli-out")
    media = clip(CLIP)
    env = {**os.environ, **module_cache}
    runs: list[subprocess.CompletedProcess[str]] = []
    for name in ("first.npz", "second.npz"):
        runs.append(subprocess.run(
            [str(expose_script()), "features", str(media), "--json", "-o", str(out / name)],
            capture_output=True, text=True, timeout=120, env=env))
    return media, out, runs


def test_features_json_summary_and_output(json_runs: JsonRuns) -> None:
    media, out, (first, _) = json_runs
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert set(info) >= SUMMARY_KEYS
    assert info["cached"] is False
    assert info["source"] == str(media)
    assert info["fps"] == 25
    assert info["x_realtime"] > 0 and info["processing_s"] > 0
    assert info["output"] == str(out / "first.npz")
    track = FeatureTrack.load(out / "first.npz")
    assert info["frames"] == len(track) == 74  # 2.96 s of video at 25 fps
    assert info["duration_s"] == pytest.approx(track.duration, abs=1e-3)
    assert info["face_ratio"] == pytest.approx(track.face_ratio, abs=1e-4)
    assert info["speech_ratio"] == pytest.approx(track.speech_ratio, abs=1e-4)
    assert info["has_audio"] is True and track.has_audio
    assert track.face_ratio > 0.95 and track.speech_ratio > 0.2


def test_second_run_is_cached(json_runs: JsonRuns) -> None:
    _, out, (first, second) = json_runs
    assert second.returncode == 0, second.stderr
    info = json.loads(second.stdout)
    assert info["cached"] is True
    assert info["x_realtime"] is None  # no extraction happened, so no speed to report
    a, b = FeatureTrack.load(out / "first.npz"), FeatureTrack.load(out / "second.npz")
    np.testing.assert_array_equal(a.expression, b.expression)
    np.testing.assert_array_equal(a.speech, b.speech)
    assert json.loads(first.stdout)["frames"] == info["frames"]


def test_several_media_into_a_directory(run_cli: RunCli, clip: Clip, module_cache: dict[str, str],
                                        tmp_path: Path) -> None:
    a, b = clip(CLIP), clip(OTHER)
    proc = run_cli("features", a, b, "-o", tmp_path, env=module_cache)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(str(b)) and "75 frames @ 25 fps" in lines[1]
    assert "face 100.0%" in lines[1]
    for media in (a, b):
        saved = FeatureTrack.load(tmp_path / f"{media.stem}.features.npz")
        assert saved.source == str(media) and len(saved) > 70


def test_several_media_need_a_directory(run_cli: RunCli, clip: Clip, tmp_path: Path) -> None:
    proc = run_cli("features", clip(CLIP), clip(OTHER), "-o", tmp_path / "one.npz")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("expose: error: --output")
    assert "give a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "one.npz").exists()
