"""Live features equal offline features: the StreamFeaturizer fed a corpus clip item by
item gives the windows that windows_of(extract_track(clip)) gives; and its buffers stay
bounded when one side of a stream stalls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expose.monitor.config import FeatureConfig
from expose.monitor.features.audio import N_MELS
from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.stream import LiveFeatureSettings, StreamFeaturizer
from expose.monitor.features.windows import windows_of
from expose.monitor.media.reader import AudioChunk, MediaReader, VideoFrame

MEL = slice(0, 4 * N_MELS)
PHONES = slice(4 * N_MELS, -1)


def _live_windows(path: Path, cfg: FeatureConfig, settings: LiveFeatureSettings) -> list:  # type: ignore[type-arg]
    out = []
    with MediaReader(path) as reader, \
            ExpressionExtractor(cfg.face_model, cfg.num_faces, cfg.min_face_confidence) as ex:
        feat = StreamFeaturizer("live", ex, settings)
        for item in reader.read(max_side=cfg.max_side):
            out += feat.push(item)
        out += feat.finish()
    return out


@pytest.mark.parametrize("rel", ["real/trump/speech_01.mp4", "real/news_anchor_zh/original.mp4"],
                         ids=["25fps", "vfr-22fps"])
def test_live_windows_equal_offline_windows(rel: str, clip, extract, feature_config) -> None:  # type: ignore[no-untyped-def]
    path = clip(rel)
    offline = {round(w.t0, 3): w for w in windows_of(extract(path), 64, 25)}
    live = _live_windows(path, feature_config, LiveFeatureSettings(window=64, hop=25))
    assert len(live) >= 3
    for w in live:
        o = offline[round(w.t0, 3)]
        assert w.t1 == pytest.approx(o.t1)
        # same frames, same ticks, same landmarker calls: bit-identical expressions and masks
        np.testing.assert_array_equal(w.face_mask, o.face_mask)
        np.testing.assert_array_equal(w.observed, o.observed)
        np.testing.assert_allclose(w.expression, o.expression, atol=1e-6)
        # mel frames see the same samples (the window's span plus context)
        np.testing.assert_allclose(w.audio[:, MEL], o.audio[:, MEL], atol=1e-4)
        # VAD state and the phone decoder's context differ slightly from a whole-file pass
        assert np.abs(w.speech - o.speech).mean() < 0.05
        assert np.abs(w.audio[:, PHONES] - o.audio[:, PHONES]).mean() < 0.05
        assert abs(w.speech_ratio - o.speech_ratio) <= 0.1


def _blank(t: float) -> VideoFrame:
    return VideoFrame(None, None, t, np.zeros((64, 64, 3), dtype=np.uint8))


def test_stalled_audio_keeps_the_video_buffer_bounded_and_counts_drops(feature_config) -> None:  # type: ignore[no-untyped-def]
    # audio that never comes, and a lag limit that never gives up on it: nothing can be emitted
    settings = LiveFeatureSettings(window=64, hop=25, audio_max_lag_s=1e9, max_buffer_s=5.0)
    with ExpressionExtractor(feature_config.face_model) as ex:
        feat = StreamFeaturizer("s", ex, settings)
        windows = [w for k in range(300) for w in feat.push(_blank(k / 25))]
        stats = feat.stats()
    assert windows == []
    assert stats.dropped_ticks == 300 - 125  # 5 s of rows kept
    assert stats.skipped_windows >= 6  # window starts that fell out of the buffer


def test_missing_audio_reads_as_silence_after_the_lag_limit(feature_config) -> None:  # type: ignore[no-untyped-def]
    settings = LiveFeatureSettings(window=64, hop=25, audio_max_lag_s=0.5)
    with ExpressionExtractor(feature_config.face_model) as ex:
        feat = StreamFeaturizer("s", ex, settings, time_offset=30.0)
        windows = [w for k in range(120) for w in feat.push(_blank(k / 25))]
    assert [w.t0 for w in windows] == [30.0, 31.0, 32.0]  # stream clock, not the connection's media clock
    assert all(not w.face_mask.any() and w.speech_ratio == 0.0 for w in windows)


def test_stalled_video_keeps_the_audio_buffer_bounded(feature_config) -> None:  # type: ignore[no-untyped-def]
    settings = LiveFeatureSettings(window=64, hop=25, max_buffer_s=5.0)
    chunk = 1600
    with ExpressionExtractor(feature_config.face_model) as ex:
        feat = StreamFeaturizer("s", ex, settings)
        for k in range(100):  # 10 s of audio, no video
            assert feat.push(AudioChunk(k * chunk / 16000, np.zeros(chunk, dtype=np.float32))) == []
        stats = feat.stats()
    assert stats.dropped_samples == 100 * chunk - 5 * 16000
