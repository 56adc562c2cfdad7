"""Identity embeddings in FeatureTracks and Windows: face descriptors on the sampled ticks
that show a face, voice embeddings of the speech before every voice tick; live windows carry
exactly what the offline windows at the same start carry; disabled sides give empty arrays;
the embeddings survive the npz file and the feature cache, and key it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import media_factory as mf
import numpy as np
import pytest

from expose.monitor.config import FeatureConfig
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.extract import extract_track, extractor_version
from expose.monitor.features.face_id import DESCRIPTOR_DIM
from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM, IdentityEmbedders, IdentitySettings
from expose.monitor.features.stream import LiveFeatureSettings, StreamFeaturizer
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.voice_id import DIM as VOICE_DIM
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.media.reader import MediaReader

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

SPEECH_CLIP = "real/trump/speech_01.mp4"  # 10 s, 25 fps, one speaker talking throughout


def _live_windows(path: Path, cfg: FeatureConfig, settings: LiveFeatureSettings) -> list[Window]:
    out: list[Window] = []
    with MediaReader(path) as reader, \
            ExpressionExtractor(cfg.face_model or Path(), cfg.num_faces, cfg.min_face_confidence) as ex:
        feat = StreamFeaturizer("live", ex, settings, identity=IdentityEmbedders.from_config(cfg))
        for item in reader.read(max_side=cfg.max_side):
            out += feat.push(item)
        out += feat.finish()
    return out


def test_the_constants_are_the_builtin_embedders_sizes() -> None:
    assert (FACE_ID_DIM, VOICE_ID_DIM) == (DESCRIPTOR_DIM, VOICE_DIM)


def test_track_carries_face_descriptors_at_the_sampled_ticks_and_voice_embeddings(
        clip: Clip, extract: Extract, feature_config: FeatureConfig) -> None:
    track = extract(clip(SPEECH_CLIP))
    every, voice_every = feature_config.face_id_every, feature_config.voice_every
    assert (every, voice_every) == (25, 25)  # the defaults: a face and a voice embedding a second
    # every sampled tick landmarked on a real frame with a face, and only those
    expected = [k for k in range(0, len(track), every) if track.observed[k]]
    assert len(expected) >= 0.9 * len(track) / every
    assert track.face_id_ticks.tolist() == expected
    assert track.face_ids.shape == (len(expected), FACE_ID_DIM) and track.face_ids.dtype == np.float32
    # one person throughout: all descriptors within dlib's same-person radius of each other
    d = np.linalg.norm(track.face_ids[:, None] - track.face_ids[None], axis=-1)
    assert d.max() < 0.6
    # a voice embedding at the end of every second (the track's end included when on the grid)
    assert track.voice_id_ticks.tolist() == list(range(voice_every, len(track) + 1, voice_every))
    assert track.voice_ids.shape == (len(track.voice_id_ticks), VOICE_ID_DIM)
    ok = np.isfinite(track.voice_ids).all(axis=1)
    # one second of context holds less than the 2 s of speech an embedding needs: NaN, not a vector
    assert not ok[0] and np.isnan(track.voice_ids[0]).all()
    assert ok[4:].all()  # 5 s and more of a speech clip
    np.testing.assert_allclose(np.linalg.norm(track.voice_ids[ok], axis=1), 1.0, atol=1e-5)
    assert (track.voice_ids[ok] @ track.voice_ids[ok].T).min() > 0.8  # one speaker
    # a window carries the descriptors of its ticks and the embedding at its end tick
    w = track.window(130, 64)
    assert w.face_id_rows.tolist() == [k - 130 for k in expected if 130 <= k < 194]
    inside = (track.face_id_ticks >= 130) & (track.face_id_ticks < 194)
    np.testing.assert_array_equal(w.face_ids, track.face_ids[inside])
    assert w.voice_id_row == 175 - 130 and w.has_voice_id
    np.testing.assert_array_equal(w.voice_id, track.voice_ids[6])
    # a segment keeps the embeddings of its ticks, shifted
    seg = track.segment(30, 130)
    assert seg.face_id_ticks.tolist() == [k - 30 for k in expected if 30 <= k < 130]
    assert seg.voice_id_ticks.tolist() == [50 - 30, 75 - 30, 100 - 30, 125 - 30]


@pytest.mark.parametrize("rel", [SPEECH_CLIP, "real/news_anchor_zh/original.mp4"], ids=["25fps", "vfr-22fps"])
def test_live_windows_carry_the_offline_identity_embeddings(rel: str, clip: Clip, extract: Extract,
                                                          feature_config: FeatureConfig) -> None:
    path = clip(rel)
    offline = {round(w.t0, 3): w for w in windows_of(extract(path), 64, 25)}
    live = _live_windows(path, feature_config, LiveFeatureSettings(window=64, hop=25))
    assert len(live) >= 3
    faces = voices = 0
    for w in live:
        o = offline[round(w.t0, 3)]
        # same frames, same landmarks, same network, no jitter: bit-identical descriptors
        np.testing.assert_array_equal(w.face_id_rows, o.face_id_rows)
        np.testing.assert_array_equal(w.face_ids, o.face_ids)
        # same samples and the span's own VAD: the same embeddings (NaN where both lack speech), to
        # float rounding: numpy's BLAS (the mel filterbank) rounds differently with another thread
        # count, and a live monitor earlier in this process may have set it to 1 (live.native_threads)
        assert w.voice_id_row == o.voice_id_row
        assert w.voice_id is not None and o.voice_id is not None
        np.testing.assert_allclose(w.voice_id, o.voice_id, rtol=0, atol=1e-6)
        faces += len(w.face_ids)
        voices += w.has_voice_id
    # 2-3 sampled ticks per 64-frame window, fewer at 22 fps (ticks no frame lands on get none)
    assert faces >= 1.5 * len(live)
    assert voices >= len(live) - 2  # the first windows may hold too little speech


def test_disabled_sides_give_empty_arrays(tmp_path: Path, face_model: Path, clip: Clip) -> None:
    cfg = FeatureConfig(face_model=face_model, face_id_every=0, voice_every=0)
    src = mf.video_only_remux(clip(SPEECH_CLIP), tmp_path / "short.mp4", seconds=3.0)
    track = extract_track(src, cfg, face_model, require_audio=False)
    assert track.face_ids.shape == (0, FACE_ID_DIM) and track.face_id_ticks.shape == (0,)
    assert track.voice_ids.shape == (0, VOICE_ID_DIM) and track.voice_id_ticks.shape == (0,)
    assert track.face_mask.mean() > 0.9  # faces were there, just not embedded
    w = track.window(0, 64)
    assert w.face_ids.shape == (0, FACE_ID_DIM) and w.face_id_rows.shape == (0,)
    assert w.voice_id is None and w.voice_id_row is None and not w.has_voice_id
    # the disabled version key needs neither embedder, and differs from the enabled one
    assert "faceid" not in extractor_version(cfg, face_model) and "voiceid" not in extractor_version(cfg, face_model)
    assert extractor_version(cfg, face_model) != extractor_version(FeatureConfig(face_model=face_model), face_model)
    assert IdentitySettings.from_config(cfg) == IdentitySettings()


def test_identity_embeddings_round_trip_through_the_file_and_the_cache(
        tmp_path: Path, clip: Clip, extract: Extract, feature_config: FeatureConfig, face_model: Path) -> None:
    path = clip(SPEECH_CLIP)
    track = extract(path)
    track.save(tmp_path / "t.npz")
    back = FeatureTrack.load(tmp_path / "t.npz")
    for name in ("face_ids", "face_id_ticks", "voice_ids", "voice_id_ticks"):
        a, b = getattr(track, name), getattr(back, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # NaN rows stay NaN
    # the cache hands back a stored entry with its embeddings (stored under this config's key)
    cache = FeatureCache(tmp_path / "cache", feature_config, face_model)
    from expose.monitor.features.face_model import sha256_file

    digest = sha256_file(path)
    dataclasses.replace(track, media_sha256=digest).save(cache.entry_path(digest))
    cached, was_cached = cache.get(path)
    assert was_cached
    np.testing.assert_array_equal(cached.face_ids, track.face_ids)
    np.testing.assert_array_equal(cached.voice_ids, track.voice_ids)
    # another sampling rate is another key: never served this entry
    other = FeatureCache(tmp_path / "cache", feature_config.model_copy(update={"face_id_every": 10}), face_model)
    assert other.entry_path(digest) != cache.entry_path(digest)


def test_bad_embedding_arrays_are_refused() -> None:
    n = 30
    base = dict(expression=np.zeros((n, 58), np.float32), face_mask=np.ones(n, bool),
                mel=np.zeros((n, 4, 80), np.float32), speech=np.zeros(n, np.float32), has_audio=True)
    with pytest.raises(ValueError, match="face_id_ticks"):
        FeatureTrack(**base, face_ids=np.zeros((2, 128), np.float32),  # type: ignore[arg-type]
                     face_id_ticks=np.array([5, 5], np.int64))
    with pytest.raises(ValueError, match="voice_ids"):
        FeatureTrack(**base, voice_ids=np.zeros((2, 256), np.float64),  # type: ignore[arg-type]
                     voice_id_ticks=np.array([25, 50], np.int64))
    with pytest.raises(ValueError, match="voice_id_ticks"):
        FeatureTrack(**base, voice_ids=np.zeros((1, 256), np.float32),  # type: ignore[arg-type]
                     voice_id_ticks=np.array([n + 1], np.int64))
