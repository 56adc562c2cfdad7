"""DiffFake's pair model (monitor/model/difffake.py): pair features, a mixture fitted on pristine
pairs only, and a higher distance for a probe that differs from the references unusually."""

from __future__ import annotations

import numpy as np
import pytest

from expose.monitor.errors import ModelFileError
from expose.monitor.model.difffake import PairModel, pair_features, same_identity_pairs


def _people(rng: np.random.Generator, n_people: int = 12, per: int = 10, dim: int = 16) -> tuple[np.ndarray, list[str]]:
    centres = rng.normal(size=(n_people, dim)) * 3
    emb = np.concatenate([c + rng.normal(scale=0.5, size=(per, dim)) for c in centres])
    return emb, [f"p{i}" for i in range(n_people) for _ in range(per)]


def test_pair_features_are_normalised_squared_differences() -> None:
    refs, probes = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[3.0, 4.0]])
    raw = pair_features(refs, probes, normalise=False)
    assert raw.shape == (1, 2, 2) and np.allclose(raw[0, 0], [9.0, 16.0])
    unit = pair_features(refs, probes)
    assert np.allclose(np.linalg.norm(unit, axis=-1), 1.0)
    with pytest.raises(ValueError):
        pair_features(refs, np.zeros((1, 3)))


def test_pristine_pairs_are_same_person_pairs_of_distinct_faces() -> None:
    rng = np.random.default_rng(0)
    emb, ids = _people(rng, n_people=3, per=4, dim=5)
    pairs = same_identity_pairs(emb, ids, per_face=2, seed=0, normalise=False)
    assert pairs.shape == (12 * 2, 5)
    # every pair feature is the squared difference of two distinct faces of one person
    allowed = {tuple(np.round((emb[i] - emb[j]) ** 2, 9)) for i in range(12) for j in range(12)
               if i != j and ids[i] == ids[j]}
    assert all(tuple(np.round(p, 9)) in allowed for p in pairs)
    with pytest.raises(ValueError, match="no pristine pair"):
        same_identity_pairs(emb[:3], ["a", "b", "c"], 2, 0)


def test_an_unusual_difference_scores_higher_and_the_model_round_trips() -> None:
    rng = np.random.default_rng(1)
    emb, ids = _people(rng)
    model = PairModel.fit(same_identity_pairs(emb, ids, per_face=6, seed=0), seed=0)
    refs, real = emb[:5], emb[5:10]  # one person's faces
    # a "manipulated" probe: the same person with a few channels pushed far off
    fake = real.copy()
    fake[:, :3] += 4.0
    d_real, d_fake = model.distance(refs, real), model.distance(refs, fake)
    assert d_real.shape == (5,) and (d_fake > d_real.max()).all()
    again = PairModel.from_tensors(model.tensors())
    assert np.allclose(again.distance(refs, fake), d_fake, rtol=1e-4)
    assert np.array_equal(model.distance(refs, fake), d_fake)  # deterministic
    with pytest.raises(ModelFileError, match="no pair model"):
        PairModel.from_tensors({})
