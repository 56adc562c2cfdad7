"""The scorer's typed boundaries: fusion weights read once from the checkpoint (validated,
defaults for a model without them) and typed score requests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from expose.monitor.config import STARTER_MODEL
from expose.monitor.features.windows import AUDIO_DIM, Window
from expose.monitor.model.exam import Exam, ModelConfig, ModelFileError, load_model, save_model
from expose.monitor.model.score import FusionWeights, ScoreSettings
from expose.monitor.model.scorer import Scorer, ScoreRequest, nearest_cohort, requests_for

TINY = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, audio_layers=1, n_identities=3)


def _window(seed: int, length: int) -> Window:
    rng = np.random.default_rng(seed)
    ones = np.ones(length, dtype=bool)
    return Window("s", 0.0, length / 25, rng.normal(size=(length, 58)).astype(np.float32),
                  rng.normal(size=(length, AUDIO_DIM)).astype(np.float32), ones, np.ones(length, np.float32), ones)


def test_starter_model_weights_are_typed_and_drive_the_scorer() -> None:
    base = load_model(STARTER_MODEL)
    w = base.weights
    assert w.fit > 0 and w.genuine_std is not None and w.smoothing_sd_ratio  # chosen on validation
    s = w.settings()
    assert (s.w_identity, s.w_sync, s.w_fit) == (w.identity, w.sync, w.fit)


def test_a_model_without_weights_gets_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(Exam(TINY), path, {"identities": ["a", "b", "c"]})
    w = load_model(path).weights
    assert w == FusionWeights() and (w.identity, w.sync, w.fit) == (1.0, 1.0, 0.0)
    assert w.genuine_std is None and w.smoothing_sd_ratio is None


@pytest.mark.parametrize("bad", [{"identity": "heavy"}, {"genuine_std": -1.0}, {"colour": 1.0}])
def test_invalid_weights_in_a_checkpoint_fail_in_one_line(tmp_path: Path, bad: dict[str, object]) -> None:
    path = tmp_path / "m.safetensors"
    save_model(Exam(TINY), path, {"identities": ["a", "b", "c"], "score_weights": bad})
    with pytest.raises(ModelFileError, match=r"invalid score_weights") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_weights_survive_the_checkpoint_round_trip(tmp_path: Path) -> None:
    w = FusionWeights(identity=0.5, sync=2.0, fit=1.5, genuine_std=0.8, smoothing_sd_ratio=[1.0, 0.9])
    path = tmp_path / "m.safetensors"
    save_model(Exam(TINY), path, {"score_weights": w.model_dump(exclude_none=True)})
    assert load_model(path).weights == w


def test_score_requests_are_typed_and_mixed_profiles_score_in_one_call() -> None:
    torch.manual_seed(0)
    m = Exam(TINY).eval()
    with pytest.raises(ValueError, match="tokens must be"):
        ScoreRequest(_window(0, TINY.window), torch.zeros(TINY.d_model), "p")
    ws = [_window(i, TINY.window) for i in range(3)]
    tok_a, tok_b = m.id_tokens[0].detach(), m.id_tokens[1].detach()
    mixed = Scorer(m).score([ScoreRequest(ws[0], tok_a, "a"), ScoreRequest(ws[1], tok_b, "b"),
                             ScoreRequest(ws[2], tok_a, "a")])
    assert [s.profile for s in mixed] == ["a", "b", "a"]
    alone = Scorer(m).score(requests_for(ws[1:2], tok_b, "b"))[0]
    assert mixed[1].distance == pytest.approx(alone.distance, abs=1e-5)  # batch-independent
    assert mixed[0].identity != pytest.approx(Scorer(m).score(requests_for(ws[:1], tok_b, "b"))[0].identity)


def test_cohort_tnorm_is_deterministic_and_relative_to_the_cohort() -> None:
    """The cohort branches join the one batched pass: the plain terms do not move, the
    T-normed identity is reproducible, and a subject that is itself a cohort member sits at
    its own place among them."""
    torch.manual_seed(0)
    m = Exam(dataclasses.replace(TINY, n_identities=6)).eval()
    with torch.no_grad():  # identities an untrained model tells apart (init tokens are near-equal)
        m.id_tokens.normal_(0.0, 1.0)
    ws = [_window(i, TINY.window) for i in range(2)]
    tok = m.id_tokens[0].detach()
    cohort = nearest_cohort(m, tok, 4, exclude=(0,))
    assert cohort.shape == (4, *tok.shape)
    with pytest.raises(ValueError, match="cohort size"):
        nearest_cohort(m, tok, 6, exclude=(0,))
    plain = Scorer(m).score(requests_for(ws, tok, "p"))
    normed = Scorer(m).score(requests_for(ws, tok, "p", cohort))
    again = Scorer(m).score(requests_for(ws, tok, "p", cohort))
    for a, b, c in zip(plain, normed, again, strict=True):
        assert a.identity_tnorm is None and b.identity_tnorm is not None
        assert b.identity == pytest.approx(a.identity, abs=1e-5) and b.sync == pytest.approx(a.sync, abs=1e-5)
        assert b.identity_tnorm == c.identity_tnorm
    # T-norm by hand: score the window as each cohort member, normalise the subject's identity
    # (the cohort on every noise draw here; by default on the first only, which costs a quarter)
    every = Scorer(m, ScoreSettings(cohort_draws=ScoreSettings().draws))
    ids = np.array([s.identity for s in every.score([ScoreRequest(ws[0], c, "c") for c in cohort])])
    expected = (plain[0].identity - ids.mean()) / ids.std(ddof=1)
    assert every.score(requests_for(ws[:1], tok, "p", cohort))[0].identity_tnorm == pytest.approx(
        expected, rel=1e-3, abs=1e-4)
    assert normed[0].identity_tnorm != pytest.approx(expected, rel=1e-3, abs=1e-4)  # one draw is not all four
    # mixed cohort sizes in one call are scored in one pass per size, in request order
    mixed = Scorer(m).score([ScoreRequest(ws[0], tok, "p", cohort), ScoreRequest(ws[1], tok, "p")])
    assert mixed[0].identity_tnorm == pytest.approx(normed[0].identity_tnorm, rel=1e-2)  # float32, batch size
    assert mixed[1].identity_tnorm is None
