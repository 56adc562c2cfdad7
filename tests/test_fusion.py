"""The score's terms and how they are fused: the fit term, the mirror augmentation, the
attacks made from real validation windows, and the choice of weights."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from expose.monitor.features.audio import MELS_PER_FRAME, N_MELS
from expose.monitor.features.expressions import EXPRESSION_NAMES
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.model.exam import Exam, ModelConfig
from expose.monitor.model.fusion import MOUTH, choose_weights, transplant, validation_families
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import Scorer, ScoreSettings, requests_for
from expose.monitor.training.train import Segment, WindowSampler, mirror_expression

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, audio_layers=1, n_identities=3)
IDX = {n: i for i, n in enumerate(EXPRESSION_NAMES)}


@pytest.fixture(scope="module")
def real_windows(extract: Extract, clip: Clip) -> list[Window]:
    return windows_of(extract(clip("real/lrs2_00016/00016.mp4")), TINY.window, 16)


def test_mirror_swaps_sides_flips_yaw_and_is_its_own_inverse() -> None:
    x = np.random.default_rng(0).normal(size=(64, 58)).astype(np.float32)
    m = mirror_expression(x)
    np.testing.assert_array_equal(m[:, IDX["mouthSmileLeft"]], x[:, IDX["mouthSmileRight"]])
    np.testing.assert_array_equal(m[:, IDX["eyeBlinkRight"]], x[:, IDX["eyeBlinkLeft"]])
    np.testing.assert_array_equal(m[:, IDX["mouthLeft"]], x[:, IDX["mouthRight"]])
    np.testing.assert_array_equal(m[:, IDX["jawOpen"]], x[:, IDX["jawOpen"]])  # no side: kept
    np.testing.assert_array_equal(m[:, IDX["yaw"]], -x[:, IDX["yaw"]])
    np.testing.assert_array_equal(m[:, IDX["pitch"]], x[:, IDX["pitch"]])
    np.testing.assert_array_equal(m[:, IDX["tx"]], -x[:, IDX["tx"]])
    np.testing.assert_array_equal(mirror_expression(m), x)


def test_mirrored_windows_train_only_the_null_tokens() -> None:
    rng = np.random.default_rng(0)
    n = 200
    tr = FeatureTrack(expression=rng.normal(size=(n, 58)).astype(np.float32), face_mask=np.ones(n, dtype=bool),
                      mel=rng.normal(size=(n, MELS_PER_FRAME, N_MELS)).astype(np.float32),
                      speech=np.ones(n, dtype=np.float32), has_audio=True, source="synthetic")
    seg = [Segment(tr, 2, 0, n, np.array([10]))]
    plain = WindowSampler(seg, 64, np.random.default_rng(1)).sample(64)
    b = WindowSampler(seg, 64, np.random.default_rng(1), mirror=0.5).sample(64)
    flipped = b.identity.numpy() == -1
    assert 10 < flipped.sum() < 54  # about half of them
    assert (b.identity.numpy()[~flipped] == 2).all()
    np.testing.assert_allclose(b.x0.numpy()[flipped], mirror_expression(plain.x0.numpy()[0])[None].repeat(
        flipped.sum(), 0), rtol=1e-6)
    np.testing.assert_array_equal(b.x0.numpy()[~flipped], plain.x0.numpy()[~flipped])


def test_fit_term_is_the_subject_mouth_error_and_enters_the_distance(real_windows: list[Window]) -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    tok = m.null_tokens.detach() + 0.1
    ws = real_windows[:3]
    base = Scorer(m, ScoreSettings(w_identity=1.0, w_sync=1.0, w_fit=0.0)).score(requests_for(ws, tok, "p"))
    fused = Scorer(m, ScoreSettings(w_identity=1.0, w_sync=1.0, w_fit=0.5)).score(requests_for(ws, tok, "p"))
    for a, b in zip(base, fused, strict=True):
        assert a.fit is not None and math.isfinite(a.fit)
        assert a.fit == pytest.approx(b.fit)
        assert a.distance is not None  # a scored window has a distance
        assert b.distance == pytest.approx(a.distance + 0.5 * a.fit, rel=1e-6, abs=1e-6)
    # a mouth that jitters from frame to frame is explained worse, whoever it is
    jitter = np.random.default_rng(1).normal(0, 0.15, (TINY.window, int(MOUTH.sum()))).astype(np.float32)
    rough = [dataclasses.replace(w, expression=_with_mouth(w.expression, jitter)) for w in ws]
    worse = Scorer(m).score(requests_for(rough, tok, "p"))
    assert all(_fit(r) > _fit(a) for r, a in zip(worse, base, strict=True))


def _fit(s: Score) -> float:
    assert s.fit is not None, "a scored window has a fit term"
    return s.fit


def _with_mouth(expr: np.ndarray, delta: np.ndarray) -> np.ndarray:
    out = expr.copy()
    out[:, MOUTH] += delta
    return out


def test_transplant_takes_the_donor_mouth_and_audio_only(real_windows: list[Window]) -> None:
    w, donor = real_windows[0], real_windows[-1]
    t = transplant(w, donor)
    np.testing.assert_array_equal(t.expression[:, MOUTH], donor.expression[:, MOUTH])
    np.testing.assert_array_equal(t.expression[:, ~MOUTH], w.expression[:, ~MOUTH])
    np.testing.assert_array_equal(t.audio, donor.audio)


def test_validation_families_score_every_attack_on_the_same_windows(real_windows: list[Window]) -> None:
    torch.manual_seed(0)
    m = Exam(TINY)
    ws = [(w, j % 3) for j, w in enumerate(real_windows[:4])]
    fam = validation_families(m, ws)
    assert set(fam) == {"genuine", "impostor", "dub", "transplant"}
    assert all(x.shape == (4, 3) and np.isfinite(x).all() for x in fam.values())
    # the impostor rows differ from the genuine ones only through the tokens: same sync input
    assert not np.allclose(fam["impostor"][:, 0], fam["genuine"][:, 0])


def _families(rng: np.random.Generator, n: int = 80) -> dict[str, np.ndarray]:
    """Synthetic terms: identity catches impostors, sync catches dubs, fit is noise."""
    gen = rng.normal(size=(n, 3))
    return {"genuine": gen, "impostor": rng.normal(size=(n, 3)) + [3.0, 0.0, 0.0],
            "dub": rng.normal(size=(n, 3)) + [0.0, 3.0, 0.0], "transplant": gen + 0.1}


def test_choose_weights_balances_the_terms_each_family_needs() -> None:
    fam = _families(np.random.default_rng(0))
    w = choose_weights(fam)
    assert w.identity > 0.2 and w.sync > 0.2  # both attack families need their term
    assert w.fit < min(w.identity, w.sync)  # noise gets the least weight
    assert w.val_worst_auc is not None  # choose_weights reports the worst validation AUC
    assert min(w.val_auc["impostor"], w.val_auc["dub"]) > 0.9 and w.val_worst_auc > 0.9
    assert w.val_auc["transplant"] < 0.7  # reported, not optimised
    fused = fam["genuine"] @ np.array([w.identity, w.sync, w.fit])
    assert fused.std() == pytest.approx(w.genuine_std)


def test_genuine_spread_leaves_out_what_profiles_centre() -> None:
    """Between-person offsets of the identity and fit terms are removed by each profile's
    calibration, so they must not widen the spread floor; the sync term's stay."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(20), 6)
    noise = rng.normal(0.0, 1.0, size=(len(groups), 3))
    offsets = rng.normal(0.0, 5.0, size=(20, 3))[groups]
    fams = {"genuine": noise + offsets * np.array([1.0, 0.0, 1.0]),  # big offsets in identity, fit
            "impostor": noise + np.array([3.0, 0.0, 0.0]), "dub": noise + np.array([0.0, 3.0, 0.0])}
    w = choose_weights(fams, groups)
    plain = choose_weights(fams)
    assert plain.genuine_std == pytest.approx(w.genuine_std_uncentred)
    assert w.genuine_std is not None and w.genuine_std_uncentred is not None  # both are measured
    assert w.genuine_std < 0.5 * w.genuine_std_uncentred
    # offsets in the uncentred sync term do count
    fams_sync = dict(fams, genuine=noise + offsets * np.array([0.0, 1.0, 0.0]))
    ws = choose_weights(fams_sync, groups)
    assert ws.genuine_std == pytest.approx(ws.genuine_std_uncentred, rel=0.15)
