"""Unit tests of the EXAM pieces: schedule, masking, checkpoint round trip, frozen base
during enrollment, deterministic scores, insufficient windows. Tiny model preset,
fixed seeds; features from real corpus clips where the test needs real windows."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from expose.monitor.features.audio import MELS_PER_FRAME, N_MELS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import AUDIO_DIM, Window, center_expression, windows_of
from expose.monitor.model.diffusion import add_noise, alpha_bar
from expose.monitor.model.exam import Exam, ModelConfig, ModelFileError, load_model, save_model
from expose.monitor.model.scorer import Scorer, requests_for
from expose.profiles.enroll import EnrollConfig, enroll
from expose.profiles.store import ProfileError, ProfileStore, Reference

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

TrackOf = Callable[[str], FeatureTrack]  # corpus clip (relative path) -> its features


@pytest.fixture(scope="module")
def track_of(extract: Extract, clip: Clip) -> TrackOf:
    return lambda rel: extract(clip(rel))


TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, audio_layers=1, n_identities=3)


def test_cosine_schedule_is_monotone_from_signal_to_noise() -> None:
    t = torch.linspace(0, 1, 101)
    ab = alpha_bar(t)
    assert ab[0] > 0.999 and ab[-1] < 1e-3
    assert bool((ab[1:] <= ab[:-1]).all())
    # variance preserving: unit-variance x0 and noise give unit-variance x_t
    x0, noise = torch.randn(20000, 1, 1), torch.randn(20000, 1, 1)
    for tv in (0.2, 0.5, 0.8):
        xt = add_noise(x0, torch.full((20000,), tv), noise)
        assert math.isclose(float(xt.var()), 1.0, abs_tol=0.05)


def test_window_error_ignores_frames_without_face() -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    x0 = torch.zeros(2, 64, TINY.expr_dim)
    pred = torch.zeros_like(x0)
    pred[:, 32:] = 5.0  # wrong only where the face is missing
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[:, 32:] = False
    assert torch.allclose(m.window_error(x0, pred, mask), torch.zeros(2))
    mask[1, 40] = True
    err = m.window_error(x0, pred, mask)
    assert err[0] == 0 and err[1] > 0


def test_center_expression_removes_session_offsets() -> None:
    rng = np.random.default_rng(0)
    motion = rng.normal(size=(64, 58)).astype(np.float32)
    mask = np.ones(64, dtype=bool)
    a = center_expression(motion, mask)
    b = center_expression(motion + 3.0, mask)  # another session: constant pose/lighting offset
    np.testing.assert_allclose(a, b, atol=1e-5)
    mask[:10] = False
    assert np.all(center_expression(motion, mask)[:10] == 0)


def test_session_gain_scales_each_channel_and_spares_validation() -> None:
    from expose.monitor.training.train import Segment, WindowSampler

    rng = np.random.default_rng(0)
    n = 200
    tr = FeatureTrack(expression=rng.normal(size=(n, 58)).astype(np.float32), face_mask=np.ones(n, dtype=bool),
                      mel=rng.normal(size=(n, MELS_PER_FRAME, N_MELS)).astype(np.float32),
                      speech=np.ones(n, dtype=np.float32), has_audio=True, source="synthetic")
    seg = [Segment(tr, 0, 0, n, np.array([10]))]  # one start: every draw is the same window
    plain = WindowSampler(seg, 64, np.random.default_rng(1)).sample(4).x0.numpy()
    aug = WindowSampler(seg, 64, np.random.default_rng(1), session_gain=0.3)
    x = aug.sample(4).x0.numpy()
    gains = x / plain  # one gain per (window, channel), constant over time
    np.testing.assert_allclose(gains, gains[:, :1].repeat(64, axis=1), rtol=1e-4)
    g = np.log(gains[:, 0])
    assert 0.1 < g.std() < 0.6 and not np.allclose(g[0], g[1])  # channels and windows differ
    np.testing.assert_array_equal(aug.fixed(4, seed=3).x0.numpy(), plain[:1])  # validation: never augmented


def test_checkpoint_round_trip_and_bad_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    m.expr_scale.fill_(0.5)
    path = tmp_path / "m.safetensors"
    save_model(m, path, {"identities": ["a", "b", "c"]})
    loaded = load_model(path)
    assert loaded.model.cfg == TINY
    assert loaded.meta["identities"] == ["a", "b", "c"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError):
        load_model(bad)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def _windows(track_of: TrackOf, clip: str, hop: int = 16) -> list[Window]:
    return windows_of(track_of(clip), TINY.window, hop)


def test_scores_are_deterministic_and_batch_independent(track_of: TrackOf) -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    ws = _windows(track_of, "real/lrs2_00016/00016.mp4")
    assert len(ws) >= 3
    tok = m.null_tokens.detach() + 0.1
    s1 = Scorer(m).score(requests_for(ws, tok, "p"))
    s2 = Scorer(m).score(requests_for(ws[:1], tok, "p"))
    s3 = Scorer(m).score(requests_for(ws, tok, "p"))
    assert [s.distance for s in s1] == [s.distance for s in s3]
    assert s1[0].distance == pytest.approx(s2[0].distance, rel=1e-5, abs=1e-6)
    assert all(s.status == "scored" for s in s1)


def test_interpolated_rows_do_not_count_in_the_errors(track_of: TrackOf) -> None:
    """A source below 25 fps: scores come from the frames really seen, so changing what
    was interpolated between them changes nothing."""
    torch.manual_seed(0)
    m = Exam(TINY)
    w = _windows(track_of, "real/lrs2_00016/00016.mp4")[0]
    seen = np.ones(w.length, dtype=bool)
    seen[1::4] = False  # every 4th tick interpolated, as at ~19 fps
    a = dataclasses.replace(w, observed=seen)
    expr = w.expression.copy()
    expr[1::4] += 1.0  # other values on the unseen ticks only
    b = dataclasses.replace(a, expression=expr)
    tok = m.null_tokens.detach() + 0.1
    sa, sb = Scorer(m).score(requests_for([a, b], tok, "p"))
    full = Scorer(m).score(requests_for([dataclasses.replace(b, observed=np.ones(w.length, dtype=bool))], tok, "p"))[0]
    assert sa.fit is not None and sb.fit is not None and full.fit is not None
    # the model still sees the changed rows (they move its predictions a little) ...
    assert sa.fit != sb.fit
    # ... but counting their errors moves the score far more
    assert abs(full.fit - sb.fit) > 5 * abs(sa.fit - sb.fit)


def test_window_without_face_or_speech_is_insufficient() -> None:
    m = Exam(TINY)
    t = TINY.window
    silent = Window("s", 0.0, t / 25, np.zeros((t, 58), np.float32), np.zeros((t, AUDIO_DIM), np.float32),
                    np.ones(t, bool), np.zeros(t, np.float32))
    faceless = Window("s", 0.0, t / 25, np.zeros((t, 58), np.float32), np.zeros((t, AUDIO_DIM), np.float32),
                      np.zeros(t, bool), np.ones(t, np.float32))
    out = Scorer(m).score(requests_for([silent, faceless], m.null_tokens.detach(), "p"))
    assert [s.status for s in out] == ["insufficient", "insufficient"]
    assert all(s.distance is None for s in out)
    assert "speech" in out[0].reason and "face" in out[1].reason


def test_enrollment_changes_only_the_tokens(track_of: TrackOf, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    path = tmp_path / "base.safetensors"
    save_model(m, path, {"identities": ["a", "b", "c"]})
    base = load_model(path)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    tr = track_of("real/vox_00098/clip_01.mp4")
    refs = [(tr, Reference(tr.source, tr.media_sha256, tr.duration, 0))]
    profile = enroll("subj", base, refs, EnrollConfig(steps=15, batch=8))
    after = base.model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"base weight {k} changed during enrollment"
    assert not torch.allclose(profile.tokens, base.model.null_tokens.detach())
    assert profile.base_model_sha256 == base.sha256
    c = profile.calibration
    assert c.n_windows > 0
    assert c.threshold > c.mean
    # the smoothed-distance threshold starts at the one-window threshold and falls with n
    assert c.alert_threshold(1) == pytest.approx(c.mean + 2.3263 * c.std, abs=1e-3)
    assert c.alert_threshold(1) <= c.threshold
    assert c.alert_threshold(1) > c.alert_threshold(4) > c.alert_threshold(16) > c.mean
    # only the identity term is centred per profile: normalized() removes w_identity x its mean
    assert profile.normalized(c.center) == 0.0 and profile.normalized(c.center + c.scale) == pytest.approx(1.0)

    store = ProfileStore(tmp_path / "profiles")
    store.save(profile)
    again = store.load("subj")
    assert torch.equal(again.tokens, profile.tokens)
    again.check_base(base.sha256)

    # a profile written by an older version (format 1: no centre/scale) is refused, not misread
    meta_path = tmp_path / "profiles" / "subj" / "profile.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"format": 1}))
    with pytest.raises(ProfileError, match="re-enroll"):
        store.load("subj")
    with pytest.raises(ProfileError, match="re-enroll"):
        again.check_base("0" * 64)
    with pytest.raises(ProfileError, match="unknown profile"):
        store.load("nobody")
    with pytest.raises(ProfileError, match="invalid profile name"):
        store.load("../etc")
