"""Fixtures of the live-monitor tests: a tiny EXAM model and enrolled profiles (helpers to
run the real server are in live_support.py).

The tiny model is untrained (fixed seed): it exercises the whole pipeline, not
detection quality. The ``always`` profile has a threshold below any distance, so every
scored window is over it and the alert path runs; ``trump`` has its calibrated one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from live_support import SPEECH_CLIP

from expose.monitor.model.exam import Exam, ModelConfig, load_model, save_model
from expose.profiles.enroll import EnrollConfig, enroll
from expose.profiles.store import ProfileStore, Reference

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, audio_layers=1, n_identities=1)


@pytest.fixture(autouse=True)
def _token_from_the_config_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """EXPOSE_TOKEN overrides server.token: one set in the caller's shell must not override the tests'."""
    monkeypatch.delenv("EXPOSE_TOKEN", raising=False)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(Exam(TINY), path, {"note": "untrained test model"})
    return path


@pytest.fixture(scope="session")
def profiles_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, extract: Extract, clip: Clip) -> Path:
    root = tmp_path_factory.mktemp("profiles")
    base = load_model(tiny_model)
    path = clip(SPEECH_CLIP)
    track = extract(path)
    ref = Reference(str(path), "", round(track.duration, 3), 0)
    prof = enroll("trump", base, [(track, ref)], EnrollConfig(steps=5, batch=8))
    store = ProfileStore(root)
    store.save(prof)
    always = dataclasses.replace(prof, name="always",
                                 calibration=dataclasses.replace(prof.calibration, threshold=-1e9, mean=-1e9))
    store.save(always)
    return root


