"""Face and voice verification terms, cohort normalisation and the fused decision, on real
corpus clips with the shipped decision (its face and voice cohorts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from expose.monitor.errors import ModelFileError
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer
from expose.monitor.model.verification import (
    STARTER_DECISION,
    Decision,
    DecisionSpec,
    IdentityReferences,
    TermStats,
    VerificationTerm,
    face_term,
    load_decision,
    resolve_decision,
    voice_term,
)
from expose.profiles.enroll import EnrollConfig, identity_references
from expose.profiles.store import Calibration, Profile, ProfileError, ProfileStore

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

ENROLLED = "real/ebs_professor/docu4_clip.mp4"  # one recording enrolled ...
OTHER_RECORDING = "real/ebs_professor/docu5_clip.mp4"  # ... another recording of the same person
OTHER_PERSON = "real/vidtimit_fadg0/s2_sx199.mp4"  # someone else
WINDOW = 64


@pytest.fixture(scope="module")
def decision() -> Decision:
    return load_decision(STARTER_DECISION)


@pytest.fixture(scope="module")
def tracks(extract: Extract, clip: Clip) -> dict[str, FeatureTrack]:
    return {k: extract(clip(v)) for k, v in
            {"enrolled": ENROLLED, "other_recording": OTHER_RECORDING, "other_person": OTHER_PERSON}.items()}


@pytest.fixture(scope="module")
def refs(tracks: dict[str, FeatureTrack]) -> IdentityReferences:
    t = tracks["enrolled"]
    return identity_references([(t, len(t))], EnrollConfig())


def _terms(fn: Callable[[Window], VerificationTerm | None], windows: list[Window]) -> list[float]:
    return [x.tnorm for x in map(fn, windows) if x is not None]


def test_enrollment_keeps_pose_spread_faces_and_voices(refs: IdentityReferences) -> None:
    assert 4 <= len(refs.face) <= EnrollConfig().face_references
    assert 1 <= len(refs.voice) <= EnrollConfig().voice_references
    assert np.isfinite(refs.face).all() and np.isfinite(refs.voice).all()


def test_face_term_accepts_other_recording_and_rejects_another_person(
        tracks: dict[str, FeatureTrack], refs: IdentityReferences, decision: Decision) -> None:
    def face(t: FeatureTrack) -> list[float]:
        return _terms(lambda w: face_term(w, refs, decision.face_cohort), windows_of(t, WINDOW, 25))

    genuine, impostor = face(tracks["other_recording"]), face(tracks["other_person"])
    assert len(genuine) >= 3 and len(impostor) >= 3
    assert max(genuine) < min(impostor) - 1.0, (genuine, impostor)
    # cohort normalisation: the genuine other recording sits below the cohort (negative), the stranger does not
    assert max(genuine) < -1.0 < min(impostor)


def test_voice_term_accepts_other_recording_and_rejects_another_person(
        tracks: dict[str, FeatureTrack], refs: IdentityReferences, decision: Decision) -> None:
    def voice(t: FeatureTrack) -> list[float]:
        return _terms(lambda w: voice_term(w, refs, decision.voice_cohort), windows_of(t, WINDOW, 25))

    genuine, impostor = voice(tracks["other_recording"]), voice(tracks["other_person"])
    assert len(genuine) >= 2 and len(impostor) >= 2
    assert max(genuine) < min(impostor) - 1.0, (genuine, impostor)


def test_too_little_speech_is_insufficient_not_authentic(
        tracks: dict[str, FeatureTrack], refs: IdentityReferences, decision: Decision) -> None:
    t = tracks["other_recording"]
    first = t.window(0, WINDOW)  # the voice tick at 2 s holds under the 2 s of speech an embedding needs
    assert first.voice_id is not None and not first.has_voice_id
    assert voice_term(first, refs, decision.voice_cohort) is None
    silent = dataclasses.replace(t.window(100, WINDOW), voice_id=np.full(256, np.nan, np.float32))
    assert voice_term(silent, refs, decision.voice_cohort) is None
    no_faces = dataclasses.replace(silent, face_ids=np.zeros((1, 128), np.float32), face_id_rows=np.zeros(1, np.int64))
    assert face_term(no_faces, refs, decision.face_cohort, min_faces=2) is None
    # and the fused decision leaves the missing terms out rather than reading them as genuine
    fused = decision.fuse({"identity": 0.0, "sync": 0.0, "face": None, "voice": None})
    assert set(fused.z) == {"identity", "sync"} & set(decision.spec.terms)


def test_fused_scores_are_deterministic_and_explained(
        tracks: dict[str, FeatureTrack], refs: IdentityReferences, decision: Decision, tmp_path: Path) -> None:
    base = load_model(Path(__file__).resolve().parents[1] / "monitor/assets/exam-small.safetensors", "auto")
    assert base.decision is not None and base.decision.sha256 == decision.sha256
    scorer = Scorer.of(base)
    profile = Profile("p", base.sha256, "now", [], _calibration(), {}, base.model.null_tokens.detach().clone(),
                      refs, decision.sha256)
    ws = windows_of(tracks["other_person"], WINDOW, 25)[:4]
    a = scorer.score(profile.requests(ws, scorer))
    b = scorer.score(profile.requests(ws, scorer))
    alone = scorer.score(profile.requests(ws[2:3], scorer))[0]
    assert [s.distance for s in a] == [s.distance for s in b]  # the same batch: bit for bit
    # alone in its batch: the same up to float32 rounding of a different batch size
    assert alone.distance == pytest.approx(a[2].distance, abs=1e-3) and alone.driver == a[2].driver
    for s in a:
        assert s.status == "scored" and s.identity_tnorm is not None and s.driver in s.terms
        assert s.distance == pytest.approx(_rule(decision, s.terms))
        assert s.explanation
    # another person's face drives the decision
    assert sum(s.driver == "face" for s in a) >= 3, [(s.driver, s.terms) for s in a]
    # the cohort members are the base model's nearest training identities, the same every time
    c1, c2 = scorer.motion_cohort(profile.tokens), scorer.motion_cohort(profile.tokens)
    assert c1 is not None and c2 is not None and torch.equal(c1, c2)
    assert len(c1) == decision.spec.motion_cohort


def _rule(decision: Decision, z: dict[str, float]) -> float:
    """The documented rules, written out again for the test."""
    if decision.spec.rule == "max":
        return max(z.values())
    if decision.spec.rule == "mean":
        return float(np.mean(list(z.values())))
    return max(float(np.mean([z[t] for t in c if t in z])) for c in decision.spec.channels if set(c) & set(z))


def test_channels_rule_lets_one_channel_decide(decision: Decision) -> None:
    stats = {t: TermStats(mean=0.0, sd=1.0) for t in ("identity", "sync", "fit", "face", "voice")}
    spec = decision.spec.model_copy(update={"rule": "channels", "terms": stats, "evidence": {}})
    channels = Decision(spec, decision.face_cohort, decision.voice_cohort)
    mean = Decision(spec.model_copy(update={"rule": "mean"}), decision.face_cohort, decision.voice_cohort)
    # a dub: another voice, the mouth a little off, face and motion identity unchanged
    dub = {"identity": 0.0, "sync": 1.0, "fit": 0.5, "face": -0.5, "voice": 3.0}
    fused = channels.fuse(dub)
    assert fused.distance == pytest.approx((3.0 + 1.0 + 0.5) / 3) and fused.driver == "voice"
    assert mean.fuse(dub).distance == pytest.approx(0.8)  # diluted by the unchanged seen channel
    # an impostor: the seen channel decides, named by its largest term
    fused = channels.fuse({"identity": 2.0, "sync": 0.0, "fit": 0.0, "face": 4.0, "voice": 0.5})
    assert fused.distance == pytest.approx(3.0) and fused.driver == "face"
    # a channel with no term (no speech: no voice, sync or fit) is left out, not read as genuine
    assert channels.fuse({"identity": -1.0, "face": -2.0}).distance == pytest.approx(-1.5)


def test_evidence_names_the_term_most_likely_attacked_and_leaves_the_distance(decision: Decision) -> None:
    stats = {t: TermStats(mean=0.0, sd=1.0) for t in ("identity", "sync", "fit", "face", "voice")}
    # a term whose attacks sit far up (the face: impostors ~4 spreads) gets a steep, late line
    lines = {"identity": (2.0, -1.7), "sync": (1.7, -1.1), "fit": (1.0, -0.5), "face": (3.5, -7.0),
             "voice": (2.3, -3.0)}
    plain = Decision(decision.spec.model_copy(update={"rule": "mean", "terms": stats, "evidence": {}}),
                     decision.face_cohort, decision.voice_cohort)
    ev = Decision(plain.spec.model_copy(update={"evidence": lines}), decision.face_cohort, decision.voice_cohort)
    # the person's own face from a new recording, 1.7 spreads up, under another person's voice
    dub = {"identity": 0.2, "sync": 0.8, "fit": 0.1, "face": 1.7, "voice": 1.6}
    assert plain.fuse(dub).driver == "face"
    assert ev.fuse(dub).driver == "voice"  # 2.3 * 1.6 - 3.0 = 0.68 against 3.5 * 1.7 - 7.0 = -1.05
    assert ev.fuse(dub).distance == plain.fuse(dub).distance == pytest.approx(0.88)
    assert ev.evidence(dub)["face"] == pytest.approx(-1.05)
    # an impostor's face is the most evidence
    assert ev.fuse({"identity": 1.0, "sync": 0.0, "fit": 0.0, "face": 4.2, "voice": 1.8}).driver == "face"
    # the lines must cover the fused terms and rise
    with pytest.raises(ValueError, match="evidence must cover the terms"):
        plain.spec.model_validate({**plain.spec.model_dump(), "evidence": {"face": (1.0, 0.0)}})
    with pytest.raises(ValueError, match="slopes must be finite and > 0"):
        plain.spec.model_validate({**plain.spec.model_dump(), "evidence": {**lines, "sync": (-1.0, 0.0)}})
    # and they survive the file
    assert DecisionSpec.model_validate_json(ev.spec.model_dump_json()).evidence == ev.spec.evidence


def test_profile_keeps_references_and_refuses_another_decision(refs: IdentityReferences, tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    p = Profile("p", "a" * 64, "now", [], _calibration(), {}, torch.zeros(4, 8), refs, "d" * 64)
    store.save(p)
    q = store.load("p")
    np.testing.assert_array_equal(q.identity.face, refs.face)
    np.testing.assert_array_equal(q.identity.voice, refs.voice)
    q.check_base("a" * 64, "d" * 64)
    with pytest.raises(ProfileError, match="calibrated with decision dddddddddddd, the loaded one is none"):
        q.check_base("a" * 64, None)


def test_bad_decision_files_fail_in_one_line(tmp_path: Path, decision: Decision) -> None:
    with pytest.raises(ModelFileError, match="decision file not found"):
        load_decision(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="unreadable decision file"):
        load_decision(junk)
    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(other), metadata={"format": "something else"})
    with pytest.raises(ModelFileError, match="not a decision file"):
        load_decision(other)
    with pytest.raises(ModelFileError, match="decision made for model"):
        resolve_decision(STARTER_DECISION, "0" * 64)
    assert resolve_decision("auto", "0" * 64) is None  # the shipped one only goes with its model
    assert resolve_decision("none", decision.spec.base_model_sha256) is None


def _calibration() -> Calibration:
    return Calibration(n_windows=8, mean=0.0, std=1.0, threshold=2.3, target_far=0.01)
