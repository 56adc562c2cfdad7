"""DiffFake's appearance term through the pipeline, on real corpus clips: tracks and live windows
carry one appearance embedding per face descriptor (the same faces), the embeddings survive the
file, key the feature cache, and reach enrollment, the profile store, the Score and the fused
decision ("face looks manipulated"); a decision with the term refuses features without it.

The weights here are a small network with seeded random weights and a pair model fitted on its
embeddings of one person's real faces: what is tested is where the embeddings go, not how well
they separate fakes (bench/appearance_eval.py and the dev evaluation measure that, with the
trained weights)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import AssetError, ConfigError, ModelFileError
from expose.monitor.features.appearance import (
    AppearanceConfig,
    AppearanceEmbedder,
    AppearanceNet,
    load_appearance,
    save_appearance,
)
from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.extract import extract_track, extractor_version
from expose.monitor.features.face_id import sample_faces
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.identity import IdentityEmbedders
from expose.monitor.features.stream import LiveFeatureSettings, StreamFeaturizer
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.media.reader import MediaReader
from expose.monitor.model.difffake import HeadScore, PairModel, appearance_score, same_identity_pairs
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer
from expose.monitor.model.verification import (
    STARTER_APPEARANCE_DECISION,
    STARTER_DECISION,
    Decision,
    TermStats,
    appearance_term,
    check_appearance,
    explain,
    load_decision,
)
from expose.profiles.enroll import EnrollConfig, identity_references
from expose.profiles.store import Calibration, Profile, ProfileStore

if TYPE_CHECKING:
    from tests.conftest import Clip

CLIP = "real/trump/speech_01.mp4"  # 10 s, one speaker, face throughout
OTHER = "real/vidtimit_fadg0/s2_sx199.mp4"  # someone else, another camera
STARTER_MODEL = Path(__file__).resolve().parents[1] / "monitor/assets/exam-small.safetensors"
WINDOW = 64
_CALIB = Calibration(n_windows=8, mean=0.0, std=1.0, threshold=2.3, target_far=0.01)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, clip: Clip, face_model: Path) -> Path:
    torch.manual_seed(0)
    net = AppearanceNet(AppearanceConfig(size=64, widths=(8, 16, 32))).eval()
    path = tmp_path_factory.mktemp("appearance") / "app.safetensors"
    save_appearance(net, path, {"test": True})
    faces, _ = sample_faces(clip(CLIP), face_model, 24, 5)
    emb = AppearanceEmbedder(path).embed(faces)
    pair = PairModel.fit(same_identity_pairs(emb, ["trump"] * len(emb), 4, seed=0, normalise=False), normalise=False)
    save_appearance(net, path, {"test": True}, pair.tensors())
    return path


@pytest.fixture(scope="module")
def cfg(feature_config: FeatureConfig, weights: Path) -> FeatureConfig:
    return feature_config.model_copy(update={"appearance_model": str(weights)})


@pytest.fixture(scope="module")
def tracks(cfg: FeatureConfig, clip: Clip, face_model: Path) -> dict[str, FeatureTrack]:
    return {k: extract_track(clip(v), cfg, face_model) for k, v in {"own": CLIP, "other": OTHER}.items()}


def _decision(weights: Path, kind: str = "pair") -> Decision:
    """The shipped decision with the appearance term added (its score, by ``kind``, from ``weights``)."""
    from expose.monitor.features.appearance import load_score_tensors

    d = load_decision(STARTER_DECISION)
    spec = d.spec.model_copy(update={"terms": {**d.spec.terms, "appearance": TermStats(mean=0.0, sd=1.0)},
                                     "evidence": {**d.spec.evidence, "appearance": (1.0, 0.0)} if d.spec.evidence
                                     else {},
                                     "appearance_sha256": sha256_file(weights), "appearance_score": kind})
    return Decision(spec, d.face_cohort, d.voice_cohort,
                    appearance=appearance_score(kind, load_score_tensors(weights)))


def test_tracks_carry_one_appearance_embedding_per_face_descriptor(
        tracks: dict[str, FeatureTrack], weights: Path, cfg: FeatureConfig, face_model: Path) -> None:
    t = tracks["own"]
    assert len(t.face_ids) >= 8
    assert t.appearance.shape == (len(t.face_ids), 32) and t.appearance.dtype == np.float32
    assert np.isfinite(t.appearance).all() and np.unique(t.appearance, axis=0).shape[0] == len(t.appearance)
    # a window and a segment keep the rows of their faces, aligned with the descriptors
    w = t.window(130, WINDOW)
    inside = (t.face_id_ticks >= 130) & (t.face_id_ticks < 194)
    np.testing.assert_array_equal(w.appearance, t.appearance[inside])
    seg = t.segment(30, 130)
    np.testing.assert_array_equal(seg.appearance, t.appearance[(t.face_id_ticks >= 30) & (t.face_id_ticks < 130)])
    thin = t.thin_face_ids(50)
    np.testing.assert_array_equal(thin.appearance, t.appearance[t.face_id_ticks % 50 == 0])
    # the weights key the extractor version: never served a track made without them, or with others
    plain = cfg.model_copy(update={"appearance_model": "none"})
    assert extractor_version(cfg, face_model) != extractor_version(plain, face_model)
    assert "-app" in extractor_version(cfg, face_model) and "-app" not in extractor_version(plain, face_model)


def test_live_windows_carry_the_offline_appearance_embeddings(
        tracks: dict[str, FeatureTrack], cfg: FeatureConfig, clip: Clip) -> None:
    offline = {round(w.t0, 3): w for w in windows_of(tracks["own"], WINDOW, 25)}
    live: list[Window] = []
    with MediaReader(clip(CLIP)) as reader, \
            ExpressionExtractor(cfg.face_model or Path(), cfg.num_faces, cfg.min_face_confidence) as ex:
        feat = StreamFeaturizer("live", ex, LiveFeatureSettings(window=WINDOW, hop=25),
                                identity=IdentityEmbedders.from_config(cfg))
        for item in reader.read(max_side=cfg.max_side):
            live += feat.push(item)
        live += feat.finish()
    assert len(live) >= 3
    for w in live:
        o = offline[round(w.t0, 3)]
        # same frames, same landmarks, same network in eval mode: bit for bit
        np.testing.assert_array_equal(w.appearance, o.appearance)
        assert len(w.appearance) == len(w.face_ids) >= 2


def test_appearance_survives_the_file_and_old_files_have_none(tracks: dict[str, FeatureTrack], tmp_path: Path) -> None:
    t = tracks["own"]
    t.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(FeatureTrack.load(tmp_path / "t.npz").appearance, t.appearance)
    # a file written before the member existed: the same track without appearance
    with np.load(tmp_path / "t.npz", allow_pickle=False) as z:
        members = {k: z[k] for k in z.files if k != "appearance"}
    np.savez(tmp_path / "old.npz", **members)
    old = FeatureTrack.load(tmp_path / "old.npz")
    assert old.appearance.shape == (len(t.face_ids), 0)
    np.testing.assert_array_equal(old.face_ids, t.face_ids)
    with pytest.raises(ValueError, match="appearance"):
        dataclasses.replace(t, appearance=t.appearance[1:])


def test_enrollment_keeps_the_appearance_of_its_face_references_and_the_store_keeps_them(
        tracks: dict[str, FeatureTrack], tmp_path: Path) -> None:
    t = tracks["own"]
    refs = identity_references([(t, len(t))], EnrollConfig())
    assert refs.appearance.shape == (len(refs.face), 32)
    for f, a in zip(refs.face, refs.appearance, strict=True):  # each reference's own face
        i = int(np.flatnonzero((t.face_ids == f).all(axis=1))[0])
        np.testing.assert_array_equal(a, t.appearance[i])
    base = load_model(STARTER_MODEL)
    store = ProfileStore(tmp_path / "profiles")
    store.save(Profile("p", base.sha256, "now", [], _CALIB, {},
                       base.model.null_tokens.detach().clone(), refs, None))
    back = store.load("p").identity
    np.testing.assert_array_equal(back.appearance, refs.appearance)
    # tracks without appearance enrol none
    off = dataclasses.replace(t, appearance=np.zeros((len(t.face_ids), 0), np.float32))
    plain = identity_references([(off, len(off))], EnrollConfig())
    assert plain.appearance.shape == (0, 0) and len(plain.face) == len(refs.face)


def test_the_decision_fuses_the_appearance_term_and_names_it(
        tracks: dict[str, FeatureTrack], weights: Path, tmp_path: Path) -> None:
    d = _decision(weights)
    d.save(tmp_path / "d.safetensors")
    back = load_decision(tmp_path / "d.safetensors")
    assert isinstance(back.appearance, PairModel) and isinstance(d.appearance, PairModel)
    assert back.spec.appearance_sha256 == sha256_file(weights)
    np.testing.assert_array_equal(back.appearance.means, d.appearance.means)
    # the term: the pair model's mean NLL over the window's faces and the references
    t = tracks["own"]
    refs = identity_references([(t, len(t))], EnrollConfig())
    w = tracks["other"].window(0, WINDOW)
    value = appearance_term(w, refs, back.appearance)
    assert value is not None and value == pytest.approx(
        float(back.appearance.distance(refs.appearance, w.appearance).mean()))
    # too few faces, or no appearance on either side: no term, never a "genuine" zero
    assert appearance_term(dataclasses.replace(w, face_ids=w.face_ids[:1], face_id_rows=w.face_id_rows[:1],
                                               appearance=w.appearance[:1]), refs, back.appearance) is None
    off = dataclasses.replace(w, appearance=np.zeros((len(w.face_ids), 0), np.float32))
    assert appearance_term(off, refs, back.appearance) is None
    # a window whose appearance stands out drives the decision, with its own explanation
    fused = back.fuse({"identity": 0.0, "sync": 0.0, "face": 0.0, "voice": 0.0, "appearance": 50.0})
    assert fused.driver == "appearance" and explain(fused.driver) == "face looks manipulated"


def test_the_scorer_computes_the_term_for_an_enrolled_profile(tracks: dict[str, FeatureTrack], weights: Path) -> None:
    d = _decision(weights)
    base = dataclasses.replace(load_model(STARTER_MODEL), decision=d)
    scorer = Scorer.of(base)
    t = tracks["own"]
    refs = identity_references([(t, len(t))], EnrollConfig())
    profile = Profile("p", base.sha256, "now", [], _CALIB, {},
                      base.model.null_tokens.detach().clone(), refs, None)
    ws = windows_of(tracks["other"], WINDOW, 25)[:3]
    scores = [s for s in scorer.score(profile.requests(ws, scorer)) if s.status == "scored"]
    assert scores
    for s, w in zip(scores, ws, strict=False):
        assert s.appearance is not None and "appearance" in s.terms
        assert d.appearance is not None and s.appearance == pytest.approx(appearance_term(w, refs, d.appearance))


@pytest.mark.parametrize("kind", ["head", "head_centred"])
def test_the_head_scores_read_the_networks_own_logit(
        tracks: dict[str, FeatureTrack], weights: Path, tmp_path: Path, kind: str) -> None:
    """The head scores are the network's real-vs-blended logit on the very embeddings the
    windows carry (its head is linear on them); centred, less the references' mean logit. The
    decision stores the head and reloads it as the same kind."""
    d = _decision(weights, kind)
    d.save(tmp_path / "d.safetensors")
    back = load_decision(tmp_path / "d.safetensors")
    assert isinstance(back.appearance, HeadScore) and back.appearance.kind == kind == back.spec.appearance_score
    t = tracks["own"]
    refs = identity_references([(t, len(t))], EnrollConfig())
    w = tracks["other"].window(0, WINDOW)
    net, _ = load_appearance(weights)
    with torch.no_grad():  # the network's own head on the carried embeddings
        logit = net.head(torch.from_numpy(w.appearance)).numpy()[:, 0].astype(np.float64)
        ref_logit = net.head(torch.from_numpy(refs.appearance)).numpy()[:, 0].astype(np.float64)
    want = logit.mean() - (ref_logit.mean() if kind == "head_centred" else 0.0)
    value = appearance_term(w, refs, back.appearance)
    assert value == pytest.approx(want, rel=1e-4, abs=1e-4)
    if kind == "head_centred":  # the references score zero against themselves
        assert float(back.appearance.distance(refs.appearance, refs.appearance).mean()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown appearance score"):
        appearance_score("mean", {})


def test_a_decision_with_the_term_needs_its_weights(weights: Path, cfg: FeatureConfig, tmp_path: Path) -> None:
    d = _decision(weights)
    check_appearance(d, cfg)  # the weights it was fitted with: fine
    with pytest.raises(ConfigError, match="appearance_model"):
        check_appearance(d, cfg.model_copy(update={"appearance_model": "none"}))
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_appearance(AppearanceNet(AppearanceConfig(size=64, widths=(8, 16, 32))).eval(), other, {})
    with pytest.raises(ConfigError, match="fitted with appearance weights"):
        check_appearance(d, cfg.model_copy(update={"appearance_model": str(other)}))
    with pytest.raises(AssetError, match="appearance weights not found"):
        IdentityEmbedders.from_config(cfg.model_copy(update={"appearance_model": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="face_id_every"):
        IdentityEmbedders.from_config(cfg.model_copy(update={"face_id_every": 0}))
    # a decision file that names the term but lacks the pair model is refused in one line
    spec = d.spec.model_copy(update={"appearance_sha256": None})
    with pytest.raises(ValueError, match="needs its score"):
        Decision(spec, d.face_cohort, d.voice_cohort, appearance=d.appearance)
    with pytest.raises(ValueError, match="spec says head"):  # a score of another kind than the spec names
        Decision(d.spec.model_copy(update={"appearance_score": "head"}), d.face_cohort, d.voice_cohort,
                 appearance=d.appearance)
    d.save(tmp_path / "d.safetensors")
    from safetensors.numpy import load_file, save_file

    tensors = {k: v for k, v in load_file(str(tmp_path / "d.safetensors")).items() if not k.startswith("pair.")}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="pair"):
        load_decision(tmp_path / "broken.safetensors")


def test_the_shipped_weights_load_with_their_pair_model(feature_config: FeatureConfig) -> None:
    """``appearance_model = "auto"`` is the shipped file: a network, its training record and the
    pair model fitted after training (monitor/assets/APPEARANCE_CARD.md)."""
    from expose.monitor.features.appearance import load_score_tensors
    from expose.monitor.features.identity import STARTER_APPEARANCE, appearance_weights

    path = appearance_weights(feature_config.model_copy(update={"appearance_model": "auto"}))
    assert path == STARTER_APPEARANCE and path.stat().st_size < 10_000_000
    emb = AppearanceEmbedder(path)
    pair = PairModel.from_tensors(load_score_tensors(path))
    assert pair.means.shape[1] == emb.dim and emb.meta  # the training record is in the header
    assert appearance_weights(feature_config) is None  # the default is off


@pytest.mark.skipif(not STARTER_APPEARANCE_DECISION.is_file(), reason="no shipped decision with the appearance term")
def test_auto_takes_the_appearance_decision_with_the_shipped_weights_only(
        feature_config: FeatureConfig, cfg: FeatureConfig) -> None:
    """``model.decision = "auto"`` with ``features.appearance_model = "auto"``: the shipped
    decision holding the appearance term, fitted on those very weights; with the term off, or
    with other weights (which it was not fitted on), the shipped decision without it."""
    from expose.monitor.features.identity import appearance_weights

    on = feature_config.model_copy(update={"appearance_model": "auto"})
    with_term = load_model(STARTER_MODEL, "auto", on).decision
    assert with_term is not None and with_term.path == STARTER_APPEARANCE_DECISION
    assert with_term.appearance is not None and "appearance" in with_term.spec.terms
    weights = appearance_weights(on)
    assert weights is not None and with_term.spec.appearance_sha256 == sha256_file(weights)
    plains = [load_model(STARTER_MODEL, "auto", f).decision for f in (feature_config, cfg)]  # off; random weights
    for plain in plains:
        assert plain is not None and plain.path == STARTER_DECISION and plain.appearance is None
    plain = load_decision(STARTER_DECISION)
    # the same cohorts (to float32 rounding: the voice means were summed in another order)
    np.testing.assert_allclose(with_term.face_cohort, plain.face_cohort, atol=1e-6)
    np.testing.assert_allclose(with_term.voice_cohort, plain.voice_cohort, atol=1e-6)
    # named by its path without the weights on: one line saying what to set
    with pytest.raises(ConfigError, match="features.appearance_model"):
        load_model(STARTER_MODEL, STARTER_APPEARANCE_DECISION, feature_config)
