"""Fixtures of the live-monitor tests: a tiny EXAM model and enrolled profiles (helpers to
run the real server are in live_support.py).

The tiny model is untrained (fixed seed): it exercises the whole pipeline, not
detection quality. The ``always`` profile has a threshold below any distance, so every
scored window is over it and the alert path runs; ``trump`` has its calibrated one.

``starter_trump``: trump enrolled from speech_01.mp4 with the starter model (no decision, the
default configuration) and the default EnrollConfig: the detection tests' profile, made once
per session (a few minutes on 2 cores).

``explained``: the starter model with a made-up decision (every term standardised as is,
random face and voice cohorts) and ``always`` enrolled with it: the face and voice terms,
drivers and explanations flow through the live path, whatever their values say.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from live_support import SPEECH_CLIP, enroll_into

from expose.monitor.config import STARTER_MODEL
from expose.monitor.model.exam import Exam, ModelConfig, load_model, save_model
from expose.monitor.model.verification import TERMS, Decision, DecisionSpec, TermStats
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




@pytest.fixture(scope="session")
def starter_trump(tmp_path_factory: pytest.TempPathFactory, extract: Extract, clip: Clip) -> Path:
    root = tmp_path_factory.mktemp("starter-profiles")
    path = clip(SPEECH_CLIP)
    enroll_into(root, "trump", load_model(STARTER_MODEL), path, extract(path))
    return root


@dataclass(frozen=True)
class Explained:
    decision: Path  # model.decision of the config
    profiles: Path  # holds "always", enrolled with the starter model and that decision


@pytest.fixture(scope="session")
def explained(tmp_path_factory: pytest.TempPathFactory, extract: Extract, clip: Clip) -> Explained:
    root = tmp_path_factory.mktemp("explained")
    rng = np.random.default_rng(0)
    # every term but appearance, whose pair model this decision does not carry
    terms = {t: TermStats(mean=0.0, sd=1.0) for t in TERMS if t != "appearance"}
    spec = DecisionSpec(base_model_sha256=hashlib.sha256(STARTER_MODEL.read_bytes()).hexdigest(), motion_cohort=4,
                        rule="max", terms=terms, genuine_mean=0.0, genuine_std=1.0,
                        smoothing_sd_ratio=[1.0], cohort_identities=["a", "b", "c", "d"])
    decision = root / "decision.safetensors"
    Decision(spec, rng.normal(size=(4, 128)).astype(np.float32) * 0.05,
             rng.normal(size=(4, 256)).astype(np.float32)).save(decision)
    path = clip(SPEECH_CLIP)
    track = extract(path)
    prof = enroll("always", load_model(STARTER_MODEL, decision), [(track, Reference(str(path), "", 10.0, 0))],
                  EnrollConfig(steps=5, batch=8))
    ProfileStore(root / "profiles").save(
        dataclasses.replace(prof, calibration=dataclasses.replace(prof.calibration, threshold=-1e9, mean=-1e9)))
    return Explained(decision, root / "profiles")
