"""Bad input gives one clear line, never a traceback: through the Python API (MediaError
with a useful message) and through the CLI (``expose: error: ...`` on stderr, exit 2).

The media are real files made here with PyAV from a corpus clip or from synthetic
pictures and sound (tests/media_factory.py).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import media_factory as mf
import numpy as np
import pytest

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import AssetError, MediaError
from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.extract import extract_track

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract, RunCli

SRC = "real/lrs2_00008/00008.mp4"  # 3 s, 160x160 mpeg4 + aac; its moov atom is at the end

CliRuns = dict[str, subprocess.CompletedProcess[str]]  # case name -> its finished CLI process


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, clip: Clip) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-media")
    src = clip(SRC)
    text = d / "notes.mp4"  # a media name does not make it media
    text.write_text("these are meeting notes, not a video\n" * 20)
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    folder = d / "folder.mp4"
    folder.mkdir()
    faststart = mf.faststart_remux(src, d / "faststart.mp4")
    return {
        "text": text,
        "empty": empty,
        "missing": d / "no_such_clip.mp4",
        "directory": folder,
        "truncated": mf.truncated_copy(src, d / "truncated.mp4", 0.3),
        "no_audio": mf.video_only_remux(src, d / "no_audio.mp4", seconds=2.0),
        "audio_only": mf.audio_only_wav(src, d / "audio_only.wav", seconds=2.0),
        "no_face": mf.synthetic_av(d / "no_face.mp4", seconds=2.0),
        "truncated_faststart": mf.truncated_copy(faststart, d / "truncated_fs.mp4", 0.5),
        "source": src,
    }


# name -> phrases the one-line message must contain (besides the file's path)
ERRORS = {
    "text": ("cannot open as media",),
    "empty": ("file is empty",),
    "missing": ("no such file",),
    "directory": ("is a directory",),
    "truncated": ("cannot open as media",),  # the index (moov) was past the cut
    "no_audio": ("no audio stream",),
    "audio_only": ("no video stream", "audio-only"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_api_raises_media_error(case: str, media: dict[str, Path], feature_config: FeatureConfig,
                                face_model: Path) -> None:
    path = media[case]
    with pytest.raises(MediaError) as info:
        extract_track(path, feature_config, face_model)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for phrase in ERRORS[case]:
        assert phrase in msg


@pytest.fixture(scope="module")
def cli_runs(media: dict[str, Path], run_cli: RunCli, tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    """Every CLI case below, run concurrently (each is a separate process)."""
    d = tmp_path_factory.mktemp("cli-bad")
    garbage_model = d / "face_landmarker.task"
    garbage_model.write_bytes(b"PK\x03\x04 this is not a model bundle")
    bad_toml = d / "bad.toml"
    bad_toml.write_text("[features\nmax_side = 'big'\n")
    jobs: dict[str, tuple[list[object], dict[str, str] | None]] = {
        case: (["features", media[case]], None) for case in ERRORS
    }
    jobs |= {
        "allow_no_audio": (["features", media["no_audio"], "--allow-no-audio", "--json"], None),
        "no_face": (["features", media["no_face"]], None),
        "garbage_model": (["features", media["source"]],
                          {"EXPOSE_FACE_MODEL": str(garbage_model)}),
        "missing_model": (["features", media["source"]],
                          {"EXPOSE_FACE_MODEL": str(d / "nowhere" / "face.task")}),
        "missing_config": (["features", media["source"], "-c", d / "nope.toml"], None),
        "bad_config": (["features", media["source"], "-c", bad_toml], None),
        "url": (["features", "rtsp://camera.invalid/stream"], None),
        "bracket_path": (["features", d / "[/]" / "[bold]clip.mp4"], None),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, *args, env=env) for name, (args, env) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("expose: error: ")
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("case", list(ERRORS))
def test_cli_one_line_error(case: str, media: dict[str, Path], cli_runs: CliRuns) -> None:
    assert_one_line_error(cli_runs[case], str(media[case]), *ERRORS[case])


def test_no_audio_allowed_gives_silent_track(media: dict[str, Path], extract: Extract) -> None:
    track = extract(media["no_audio"], require_audio=False)
    assert not track.has_audio
    assert not track.speech.any() and track.speech_ratio == 0.0
    assert np.isfinite(track.mel).all() and track.mel.std() == 0.0  # one constant floor value
    assert 45 <= len(track) <= 55  # ~2 s of video
    assert track.face_ratio > 0.95


def test_cli_allow_no_audio(cli_runs: CliRuns) -> None:
    proc = cli_runs["allow_no_audio"]
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["has_audio"] is False
    assert info["speech_ratio"] == 0.0
    assert info["face_ratio"] > 0.95


def test_no_face_is_not_an_error(media: dict[str, Path], extract: Extract) -> None:
    track = extract(media["no_face"])
    assert len(track) == 50  # 2 s at 25 fps
    assert not track.face_mask.any()
    assert not track.expression.any()
    assert track.has_audio and np.isfinite(track.mel).all()


def test_cli_no_face_warns_and_succeeds(media: dict[str, Path], cli_runs: CliRuns) -> None:
    proc = cli_runs["no_face"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "face 0.0%" in proc.stdout
    assert "warning" in proc.stderr and "no face found" in proc.stderr
    assert media["no_face"].name in proc.stderr


def test_truncated_faststart_mp4_gives_what_it_holds(media: dict[str, Path], extract: Extract) -> None:
    """An mp4 with its index first, cut at half its bytes: the part before the cut is used."""
    full = extract(media["source"])
    part = extract(media["truncated_faststart"])
    assert 10 <= len(part) < len(full) - 10
    assert part.face_ratio > 0.95
    # The frames that survived are the same frames, with the same features.
    n = len(part) - 2  # the last rows may lose their audio / neighbours at the cut
    np.testing.assert_allclose(part.expression[:n], full.expression[:n], atol=1e-4)


def test_garbage_face_model(tmp_path: Path, cli_runs: CliRuns) -> None:
    garbage = tmp_path / "face_landmarker.task"
    garbage.write_text("not a model")
    with pytest.raises(AssetError, match="cannot load face model"):
        ExpressionExtractor(garbage)
    with pytest.raises(AssetError, match="cannot load face model"):
        ExpressionExtractor(tmp_path / "missing.task")
    assert_one_line_error(cli_runs["garbage_model"], "cannot load face model")


def test_cli_missing_face_model_names_the_variable(cli_runs: CliRuns) -> None:
    assert_one_line_error(cli_runs["missing_model"], "EXPOSE_FACE_MODEL", "nowhere")


def test_cli_config_errors(cli_runs: CliRuns) -> None:
    assert_one_line_error(cli_runs["missing_config"], "config file not found", "nope.toml")
    assert_one_line_error(cli_runs["bad_config"], "not valid TOML", "bad.toml")


def test_cli_refuses_live_url(cli_runs: CliRuns) -> None:
    assert_one_line_error(cli_runs["url"], "rtsp://camera.invalid/stream", "expose watch")


def test_cli_paths_are_not_rich_markup(cli_runs: CliRuns) -> None:
    """Square brackets in a path are printed as they are (and '[/]' does not crash)."""
    assert_one_line_error(cli_runs["bracket_path"], "[/]/[bold]clip.mp4", "no such file")
