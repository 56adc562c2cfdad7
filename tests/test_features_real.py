"""Feature extraction on real corpus clips of several sizes, frame rates and containers.

Each clip is extracted once per session (the ``extract`` fixture). The expected
timeline length is computed here independently, by decoding the clip's video frames
with PyAV.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import pytest

from expose.monitor.features.audio import MELS_PER_FRAME, N_MELS
from expose.monitor.features.expressions import BLENDSHAPE_NAMES, N_BLENDSHAPES
from expose.monitor.features.phones import N_PHONES, phone_posteriors
from expose.monitor.features.track import FeatureTrack

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

# (corpus path, what it covers). Header rates from MANIFEST.csv / PyAV.
CLIPS = [
    ("grid_s1/video/bbaf2n.mpg", "MPEG-PS, 360x288, 25 fps"),
    ("real/lrs2_00008/00008.mp4", "160x160, 25 fps, mpeg4 part 2"),
    ("real/vox_00010/clip_01.mp4", "224x224, 25 fps"),
    ("fake/news_anchor_zh/retalking.mp4", "700x700, 22.131 fps"),
    ("fake/news_anchor_zh/wav2lip.mp4", "700x700, 133/6 fps"),
    ("fake/news_anchor_zh/face_dain_50fps.mp4", "700x700, 50 fps (every other frame used)"),
    ("real/ocasio_cortez/clip_02.mp4", "512x512, 30000/1001 fps"),
    ("real/speaker_rt4/clip_01.mp4", "700x700, 30 fps"),
    ("real/mead_m030/M030_sad_3_001.mp4", "1920x1080, 1000000/33333 fps"),
    ("real/news_anchor_zh/original.mp4", "VFR (~22 fps avg), video starts 33 ms after audio"),
]
CLIP_IDS = [Path(p).parent.name + "/" + Path(p).name for p, _ in CLIPS]

ClipAndTrack = tuple[Path, FeatureTrack]
GridClip = tuple[Path, list[tuple[int, int, str]], FeatureTrack]  # (video, align rows, track)


def video_timeline_frames(path: Path) -> float:
    """Video duration x 25, measured by decoding every video frame with PyAV.

    Duration = last frame's time + one frame interval (the median spacing), measured
    from the container origin (the earliest stream start).
    """
    with av.open(str(path)) as c:
        origin = c.start_time / av.time_base if c.start_time is not None else 0.0
        times = [float(f.time) for f in c.decode(video=0) if f.time is not None]
    assert len(times) > 10, f"{path}: too few decodable frames"
    interval = float(np.median(np.diff(times)))
    return (times[-1] - origin + interval) * 25


@pytest.fixture(scope="module", params=[p for p, _ in CLIPS], ids=CLIP_IDS)
def clip_and_track(request: pytest.FixtureRequest, clip: Clip, extract: Extract) -> ClipAndTrack:
    path = clip(request.param)
    return path, extract(path)


def test_timeline_length_is_video_duration_at_25fps(clip_and_track: ClipAndTrack) -> None:
    path, track = clip_and_track
    expected = video_timeline_frames(path)
    assert abs(len(track) - expected) <= 1.0, (
        f"{path.name}: {len(track)} rows, video lasts {expected / 25:.3f} s = {expected:.2f} frames"
    )
    assert track.fps == 25
    assert track.duration == pytest.approx(len(track) / 25)


def test_face_found_on_almost_every_frame(clip_and_track: ClipAndTrack) -> None:
    path, track = clip_and_track
    # Observed: 1.0 on all of these but news_anchor_zh/original.mp4 (0.993).
    assert track.face_ratio > 0.95, f"{path.name}: face on {track.face_ratio:.1%} of frames"


def test_value_ranges_and_shapes(clip_and_track: ClipAndTrack) -> None:
    path, track = clip_and_track
    n = len(track)
    blend = track.expression[:, :N_BLENDSHAPES]
    assert blend.min() >= 0.0 and blend.max() <= 1.0
    # A talking face moves: some mouth blendshape varies (observed max std 0.13-0.30).
    mouth = [i for i, name in enumerate(BLENDSHAPE_NAMES) if name.startswith(("jaw", "mouth"))]
    assert blend[track.face_mask][:, mouth].std(axis=0).max() > 0.05
    pose = track.expression[track.face_mask, N_BLENDSHAPES:]
    assert np.isfinite(pose).all()
    # yaw, pitch, roll in radians: near-frontal talking heads (observed |angle| <= 0.65);
    # tz: the face is in front of the camera (observed -34 .. -21 canonical units).
    assert np.abs(pose[:, :3]).max() < 1.2
    assert (pose[:, 5] < -5).all()
    # Rows where no face was found are zero, not stale values from another frame.
    assert not track.expression[~track.face_mask].any()
    assert track.mel.shape == (n, MELS_PER_FRAME, N_MELS)
    assert np.isfinite(track.mel).all()
    assert track.mel.std() > 1.0  # real audio, not the zero/floor fill
    assert track.speech.min() >= 0.0 and track.speech.max() <= 1.0
    assert track.has_audio


def test_speech_found_in_clips_with_speech(clip_and_track: ClipAndTrack) -> None:
    path, track = clip_and_track
    # Observed speech ratios 0.48-0.99 (GRID clips ~0.5-0.6: ~1 s of silence around words).
    assert track.speech_ratio > 0.2, f"{path.name}: speech on {track.speech_ratio:.1%} of frames"


def test_same_audio_at_different_frame_rates_gives_the_same_audio_features(clip: Clip, extract: Extract) -> None:
    """retalking (22.131 fps) and wav2lip (133/6 fps) carry the same soundtrack: the audio
    features, which hang on the 25 fps clock and not on the video rate, must agree."""
    a = extract(clip("fake/news_anchor_zh/retalking.mp4"))
    b = extract(clip("fake/news_anchor_zh/wav2lip.mp4"))
    n = min(len(a), len(b))
    assert abs(len(a) - len(b)) <= 1
    agree = (a.speech_mask[:n] == b.speech_mask[:n]).mean()
    assert agree > 0.95
    corr = np.corrcoef(a.mel[:n].mean(axis=(1, 2)), b.mel[:n].mean(axis=(1, 2)))[0, 1]
    assert corr > 0.95


# --- audio/video alignment on GRID (speaker 1), with the corpus' word alignments ---------

GRID_CLIPS = ["bbaf2n", "bgwu8p", "lbad6n", "lgwt3a", "lwwm3a", "pgwe6n"]
ALIGN_UNITS_PER_S = 25_000  # see test_grid_align_units
MOUTH_OPENING = ("jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight",
                 "mouthUpperUpLeft", "mouthUpperUpRight")


def read_align(path: Path) -> list[tuple[int, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            start, end, word = line.split()
            rows.append((int(start), int(end), word))
    return rows


@pytest.fixture(scope="module")
def grid(corpus: Path, extract: Extract) -> list[GridClip]:
    """[(clip path, align rows, track)] for a few GRID s1 clips."""
    root = corpus / "grid_s1"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    out: list[GridClip] = []
    for name in GRID_CLIPS:
        video, align = root / "video" / f"{name}.mpg", root / "align" / f"{name}.align"
        out.append((video, read_align(align), extract(video)))
    return out


def frame_labels(align: list[tuple[int, int, str]], n: int) -> np.ndarray:
    """Per 25 fps frame: 1 inside a word, 0 inside silence ('sil'/'sp'), -1 elsewhere."""
    t = np.arange(n) / 25
    labels = np.full(n, -1)
    for start, end, word in align:
        inside = (t >= start / ALIGN_UNITS_PER_S) & (t < end / ALIGN_UNITS_PER_S)
        labels[inside] = 0 if word in ("sil", "sp") else 1
    return labels


def test_grid_align_units(grid: list[GridClip]) -> None:
    """The align files count 1/25000 s: the last 'sil' ends where the clip ends."""
    for video, align, track in grid:
        assert align[0][2] == "sil" and align[-1][2] == "sil"
        assert align[0][0] == 0
        end_s = align[-1][1] / ALIGN_UNITS_PER_S  # 74500 -> 2.98 s
        assert abs(end_s - video_timeline_frames(video) / 25) < 2 / 25
        assert abs(end_s - track.duration) < 2 / 25


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def _lagged_corr(video: np.ndarray, audio: np.ndarray, lag: int) -> float:
    """corr(video[k + lag], audio[k]): positive lag = the mouth moves after the sound."""
    if lag >= 0:
        return float(np.corrcoef(video[lag:], audio[: len(audio) - lag])[0, 1])
    return float(np.corrcoef(video[:lag], audio[-lag:])[0, 1])


def test_mouth_opening_is_in_sync_with_speech_energy(grid: list[GridClip]) -> None:
    """Cross-correlation of mouth opening with audio energy peaks at lag 0.

    A timestamp error between the video and audio paths (origin, resampling, mel
    centring) shows up as a shifted peak. Observed on these 6 clips: peak at lag 0,
    r = 0.71; r(+-1) ~ 0.69/0.67, r(+-3) ~ 0.5.
    """
    idx = [BLENDSHAPE_NAMES.index(n) for n in MOUTH_OPENING]
    video = np.concatenate([_z(tr.expression[:, idx].mean(axis=1)) for _, _, tr in grid])
    audio = np.concatenate([_z(tr.mel.mean(axis=(1, 2))) for _, _, tr in grid])
    lags = range(-8, 9)
    corr = np.array([_lagged_corr(video, audio, lag) for lag in lags])
    best = list(lags)[int(corr.argmax())]
    assert abs(best) <= 2, f"A/V peak at lag {best} frames; correlations {np.round(corr, 2)}"
    assert corr.max() > 0.4
    assert corr.max() - corr[0] > 0.1 and corr.max() - corr[-1] > 0.1  # a peak, not a slope


def test_jaw_opens_during_words_not_silence(grid: list[GridClip]) -> None:
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    in_word, in_sil = [], []
    for _, align, track in grid:
        labels = frame_labels(align, len(track))
        in_word.append(track.expression[labels == 1, jaw])
        in_sil.append(track.expression[labels == 0, jaw])
    word, sil = np.concatenate(in_word).mean(), np.concatenate(in_sil).mean()
    # Observed: 0.19 in words vs 0.04 in silence.
    assert word > 2 * sil, f"jawOpen mean {word:.3f} in words vs {sil:.3f} in silence"


def test_speech_activity_agrees_with_word_alignment(grid: list[GridClip]) -> None:
    agree, total = 0, 0
    for _, align, track in grid:
        labels = frame_labels(align, len(track))
        known = labels >= 0
        agree += int((track.speech_mask[known] == (labels[known] == 1)).sum())
        total += int(known.sum())
    # Observed: 0.91 of frames (disagreement sits at word edges).
    assert total > 0.9 * sum(len(tr) for _, _, tr in grid)
    assert agree / total > 0.8, f"speech activity agrees with the alignment on {agree / total:.1%}"


def test_late_video_start_leaves_the_first_tick_empty(clip: Clip, extract: Extract) -> None:
    """Video starting 33 ms after the audio: times count from the container origin (the
    audio start), so tick 0 has no picture and no face, rather than every row sliding
    33 ms against the audio."""
    path = clip("real/news_anchor_zh/original.mp4")
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        # the clip's header gives both start times and the time base
        assert v.start_time is not None and v.time_base is not None and c.start_time is not None
        video_start = float(v.start_time * v.time_base) - c.start_time / av.time_base
    assert 0.02 < video_start < 0.06  # the clip is as described (0.033 s)
    track = extract(path)
    assert not track.face_mask[0]
    assert track.face_mask[1:].all()


# share: the fraction of face ticks that get a frame of their own. The VFR clip averages
# 22 fps but its frames bunch, so several land on one tick and only ~80 % are observed.
@pytest.mark.parametrize("rel, share", [("real/news_anchor_zh/original.mp4", 0.80),
                                        ("fake/news_anchor_zh/retalking.mp4", 22.131 / 25),
                                        ("real/lrs2_00008/00008.mp4", 1.0)], ids=["vfr-22fps", "22.131fps", "25fps"])
def test_observed_marks_the_ticks_a_frame_landed_on(rel: str, share: float, clip: Clip, extract: Extract) -> None:
    """Below 25 fps some ticks get no frame: they are interpolated (face_mask) but not
    observed, so no reconstruction error is counted on them."""
    path = clip(rel)
    track = extract(path)
    with av.open(str(path)) as c:
        origin = c.start_time / av.time_base if c.start_time is not None else 0.0
        ticks = {int(np.floor((float(f.time) - origin) * 25 + 0.5)) for f in c.decode(video=0)}
    landed = np.zeros(len(track), dtype=bool)
    landed[[k for k in ticks if 0 <= k < len(track)]] = True
    np.testing.assert_array_equal(track.observed, landed & track.face_mask)
    assert not (track.observed & ~track.face_mask).any()
    ratio = track.observed.sum() / track.face_mask.sum()
    assert ratio == pytest.approx(share, abs=0.03)


def _audio(path: Path) -> np.ndarray:
    """The clip's audio as 16 kHz mono float32, decoded with PyAV."""
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        parts = [g.to_ndarray().ravel() for f in c.decode(audio=0) for g in resampler.resample(f)]
    return np.concatenate(parts)


def test_phones_do_not_depend_on_what_the_thread_decoded_before(clip: Clip) -> None:
    """One decoder per thread, reset before each call: the same span gives the same phones
    whatever ran before it, and the same as on a new thread (a new decoder)."""
    a = _audio(clip("real/trump/speech_01.mp4"))
    b = _audio(clip("real/macron/speech_01.mp4"))
    span = a[16000:64000]
    first = phone_posteriors(span, 75)
    assert first.shape == (75, N_PHONES) and (first[:, 1:].sum() > 10)  # speech, not all silence
    phone_posteriors(b[:80000], 125)  # other speech, another length, on the same decoder
    phone_posteriors(np.zeros(8000, dtype=np.float32), 12)
    assert np.array_equal(phone_posteriors(span, 75), first)
    fresh: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: fresh.append(phone_posteriors(span, 75)))
    worker.start()
    worker.join()
    assert np.array_equal(fresh[0], first)
