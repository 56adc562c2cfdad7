"""Shared fixtures: the real corpus and face model from ``../shared``, one extraction per
clip per session, and an environment that keeps every test (and every CLI subprocess)
away from the user's real cache.

Tests that need ``../shared`` skip with the reason when it is absent; the pure unit
tests (audio features, FeatureTrack files, config) run anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from expose.monitor.config import FeatureConfig
from expose.monitor.features.extract import extract_track
from expose.monitor.features.track import FeatureTrack

SHARED = (Path(__file__).parents[1] / ".." / "shared").resolve()
FACE_MODEL = SHARED / "models" / "face_landmarker.task"
REPO = Path(__file__).resolve().parents[1]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared data folder beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """EXPOSE_CACHE -> a fresh temp dir, EXPOSE_FACE_MODEL -> the shared model (if any).

    Set in os.environ so that CLI subprocesses inherit it; restored after the session.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPOSE_CACHE", str(tmp_path_factory.mktemp("expose-cache")))
        if FACE_MODEL.is_file():
            mp.setenv("EXPOSE_FACE_MODEL", str(FACE_MODEL))
        else:
            mp.delenv("EXPOSE_FACE_MODEL", raising=False)
        mp.setenv("PYTHONUNBUFFERED", "1")
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED, "shared data folder")


@pytest.fixture(scope="session")
def corpus(shared_dir: Path) -> Path:
    return _require(shared_dir / "corpus", "corpus")


@pytest.fixture(scope="session")
def face_model(shared_dir: Path) -> Path:
    return _require(FACE_MODEL, "face landmarker model")


@pytest.fixture(scope="session")
def feature_config(face_model: Path) -> FeatureConfig:
    return FeatureConfig(face_model=face_model)


Extract = Callable[..., FeatureTrack]


@pytest.fixture(scope="session")
def extract(feature_config: FeatureConfig, face_model: Path) -> Extract:
    """``extract(path, require_audio=True)`` -> FeatureTrack, computed once per session."""
    done: dict[tuple[str, bool], FeatureTrack] = {}

    def _extract(path: Path, require_audio: bool = True) -> FeatureTrack:
        key = (str(Path(path).resolve()), require_audio)
        if key not in done:
            done[key] = extract_track(path, feature_config, face_model, require_audio=require_audio)
        return done[key]

    return _extract


Clip = Callable[[str], Path]


@pytest.fixture(scope="session")
def clip(corpus: Path) -> Clip:
    """``clip("real/lrs2_00008/00008.mp4")`` -> its path; skips if that file is missing."""

    def _clip(rel: str) -> Path:
        return _require(corpus / rel, f"corpus clip {rel}")

    return _clip


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """Run ``python -m expose.monitor.cli ARGS`` in a subprocess with the isolated environment
    (plus ``env`` overrides)."""

    def _run(*args: str | Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "expose.monitor.cli", *map(str, args)],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**os.environ, **(env or {})},
        )

    return _run
