"""FeatureTrack values and files, the feature cache, the audio features on synthetic
signals, face model resolution and the config tree."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import media_factory as mf
import numpy as np
import pytest

from expose.monitor.config import Config, FeatureConfig, load_config
from expose.monitor.errors import AssetError, ConfigError, FeatureFileError, MediaError
from expose.monitor.features.audio import (
    HOP,
    MELS_PER_FRAME,
    N_MELS,
    WIN,
    log_mel,
    speech_activity,
)
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.expressions import EXPRESSION_DIM
from expose.monitor.features.extract import extractor_version
from expose.monitor.features.face_model import ENV_VAR, FACE_MODEL_NAME, resolve_face_model
from expose.monitor.features.track import FORMAT_VERSION, FeatureTrack
from expose.monitor.media.reader import AUDIO_RATE

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

SR = AUDIO_RATE
FLOOR = float(np.log(1e-10))  # log_mel's value where there is no energy at all


def make_track(n: int = 40, seed: int = 0, **overrides: Any) -> FeatureTrack:
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = dict(
        expression=rng.random((n, EXPRESSION_DIM), dtype=np.float32),
        face_mask=rng.random(n) > 0.2,
        mel=(rng.standard_normal((n, MELS_PER_FRAME, N_MELS)) * 5 - 8).astype(np.float32),
        speech=rng.random(n, dtype=np.float32),
        has_audio=True,
        source="/some/clip.mp4",
        media_sha256="ab" * 32,
        extractor_version="test-version",
    )
    fields.update(overrides)
    return FeatureTrack(**fields)


def assert_tracks_equal(a: FeatureTrack, b: FeatureTrack) -> None:
    np.testing.assert_array_equal(a.expression, b.expression)
    np.testing.assert_array_equal(a.face_mask, b.face_mask)
    np.testing.assert_array_equal(a.observed, b.observed)
    np.testing.assert_array_equal(a.speech, b.speech)
    # mel is stored as float16: 11 significant bits
    np.testing.assert_allclose(b.mel, a.mel, rtol=2**-11, atol=1e-6)
    for name in ("phones",):  # optional per-frame arrays added after format 1
        if getattr(a, name, None) is not None:
            np.testing.assert_allclose(getattr(b, name), getattr(a, name), atol=1e-3)
    assert (a.has_audio, a.source, a.media_sha256, a.extractor_version, a.fps) == (
        b.has_audio, b.source, b.media_sha256, b.extractor_version, b.fps)


# --- FeatureTrack ------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path: Path) -> None:
    t = make_track()
    path = tmp_path / "sub" / "t.npz"
    t.save(path)
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    assert_tracks_equal(t, FeatureTrack.load(path))


def test_round_trip_of_a_real_track(tmp_path: Path, clip: Clip, extract: Extract) -> None:
    t = extract(clip("real/lrs2_00008/00008.mp4"))
    t.save(tmp_path / "real.npz")
    assert_tracks_equal(t, FeatureTrack.load(tmp_path / "real.npz"))


def test_observed_rows_round_trip_and_default_to_the_face_mask(tmp_path: Path) -> None:
    mask = np.arange(40) % 5 != 0
    seen = mask & (np.arange(40) % 3 != 0)
    t = make_track(n=40, face_mask=mask, observed=seen)
    t.save(tmp_path / "t.npz")
    np.testing.assert_array_equal(FeatureTrack.load(tmp_path / "t.npz").observed, seen)
    np.testing.assert_array_equal(t.segment(5, 20).observed, seen[5:20])
    # a file written before `observed` existed: every face row counts as observed
    _rewrite_npz(tmp_path / "t.npz", lambda m: m.pop("observed"))
    np.testing.assert_array_equal(FeatureTrack.load(tmp_path / "t.npz").observed, mask)
    with pytest.raises(ValueError, match="subset"):
        make_track(n=40, face_mask=mask, observed=~mask)


def test_derived_properties() -> None:
    t = make_track(n=50, face_mask=np.arange(50) < 10,
                   speech=np.where(np.arange(50) < 25, 1.0, 0.25).astype(np.float32))
    assert len(t) == 50 and t.duration == 2.0
    assert t.times[1] == pytest.approx(0.04)
    assert t.face_ratio == pytest.approx(0.2)
    assert t.speech_ratio == pytest.approx(0.5)


def _rewrite_npz(path: Path, change: Callable[[dict[str, np.ndarray]], object]) -> None:
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    change(members)
    np.savez(path, **members)


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    make_track().save(path)

    def bump(m: dict[str, np.ndarray]) -> None:
        meta = json.loads(str(m["meta"]))
        meta["format_version"] = FORMAT_VERSION + 1
        m["meta"] = np.array(json.dumps(meta))

    _rewrite_npz(path, bump)
    with pytest.raises(FeatureFileError) as info:
        FeatureTrack.load(path)
    msg = str(info.value)
    assert f"format {FORMAT_VERSION + 1}" in msg and f"reads {FORMAT_VERSION}" in msg
    assert "expose features" in msg and str(path) in msg


def test_missing_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    make_track().save(path)
    _rewrite_npz(path, lambda m: m.update(meta=np.array(json.dumps({"fps": 25}))))
    with pytest.raises(FeatureFileError, match="format None"):
        FeatureTrack.load(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_mel", "bad_shape", "pickle"])
def test_damaged_file_raises_feature_file_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "t.npz"
    make_track().save(path)
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip at all" * 50)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "no_mel":
        _rewrite_npz(path, lambda m: m.pop("mel"))
    elif damage == "bad_shape":
        _rewrite_npz(path, lambda m: m.update(speech=m["speech"][:-3]))
    elif damage == "pickle":  # an object array would need pickle: refused, never executed
        _rewrite_npz(path, lambda m: m.update(speech=np.array([{"x": 1}], dtype=object)))
    with pytest.raises(FeatureFileError) as info:
        FeatureTrack.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FeatureFileError, match="no such feature file"):
        FeatureTrack.load(tmp_path / "absent.npz")


def test_loaded_file_is_plain_npz(tmp_path: Path) -> None:
    """The format promises plain arrays, no pickle: check the members directly."""
    path = tmp_path / "t.npz"
    make_track().save(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        for name in names:
            arr = np.lib.format.read_array(io.BytesIO(zf.read(name)), allow_pickle=False)
            assert arr.dtype != object
    assert {"meta.npy", "expression.npy", "face_mask.npy", "mel.npy", "speech.npy"} <= names


@pytest.mark.parametrize("bad", [
    {"expression": np.zeros((40, EXPRESSION_DIM - 1), np.float32)},
    {"expression": np.zeros((40, EXPRESSION_DIM), np.float64)},
    {"face_mask": np.ones(40, np.uint8)},
    {"mel": np.zeros((40, MELS_PER_FRAME, N_MELS - 1), np.float32)},
    {"mel": np.zeros((41, MELS_PER_FRAME, N_MELS), np.float32)},
    {"speech": np.zeros(39, np.float32)},
    {"fps": 30},
], ids=["expr_dim", "expr_dtype", "mask_dtype", "mel_bins", "mel_len", "speech_len", "fps"])
def test_invalid_shapes_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="FeatureTrack"):
        make_track(n=40, **bad)


def test_track_is_frozen() -> None:
    t = make_track()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.has_audio = False  # type: ignore[misc]  # assigning to a frozen field is what is tested


# --- FeatureCache -------------------------------------------------------------------------

CACHE_CLIP = "real/lrs2_00008/00008.mp4"  # 3 s, the cheapest clip to extract


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


def test_cache_miss_then_hit(cache_root: Path, clip: Clip, feature_config: FeatureConfig, face_model: Path,
                             extract: Extract) -> None:
    media = clip(CACHE_CLIP)
    cache = FeatureCache(cache_root, feature_config, face_model)
    first, cached = cache.get(media)
    assert cached is False
    entries = list((cache_root / "features").rglob("*.npz"))
    assert len(entries) == 1
    second, cached = cache.get(media)
    assert cached is True
    assert_tracks_equal(first, second)
    assert second.media_sha256 == first.media_sha256 != ""
    assert second.extractor_version == cache.version
    # The cache returns what a direct extraction gives (extraction is deterministic).
    np.testing.assert_array_equal(first.expression, extract(media).expression)
    np.testing.assert_array_equal(first.mel, extract(media).mel)


def test_cache_key_follows_the_config(cache_root: Path, clip: Clip, feature_config: FeatureConfig,
                                     face_model: Path) -> None:
    media = clip(CACHE_CLIP)
    base = FeatureCache(cache_root, feature_config, face_model)
    digest = "00" * 32
    variants = [
        feature_config.model_copy(update={"max_side": 320}),
        feature_config.model_copy(update={"num_faces": 1}),
        feature_config.model_copy(update={"min_face_confidence": 0.6}),
    ]
    paths = {base.entry_path(digest)} | {
        FeatureCache(cache_root, cfg, face_model).entry_path(digest) for cfg in variants}
    assert len(paths) == 4
    # Same config -> same key (the key is stable across instances).
    assert FeatureCache(cache_root, feature_config, face_model).entry_path(digest) == \
        base.entry_path(digest)
    assert "side320" in extractor_version(variants[0], face_model)
    # And a changed config really misses: max_side 128 < 160 changes the pictures.
    small = FeatureCache(cache_root, feature_config.model_copy(update={"max_side": 128}),
                         face_model)
    base.get(media)  # warm (a hit if test_cache_miss_then_hit ran first)
    track, cached = small.get(media)
    assert cached is False
    assert not np.array_equal(track.expression, base.get(media)[0].expression)


def test_cache_key_follows_the_model_file(tmp_path: Path, feature_config: FeatureConfig, face_model: Path) -> None:
    other = tmp_path / FACE_MODEL_NAME
    data = face_model.read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one byte differs
    a = FeatureCache(tmp_path, feature_config, face_model).entry_path("00" * 32)
    b = FeatureCache(tmp_path, feature_config, other).entry_path("00" * 32)
    assert a != b


def test_refresh_reextracts(cache_root: Path, clip: Clip, feature_config: FeatureConfig, face_model: Path) -> None:
    media = clip(CACHE_CLIP)
    cache = FeatureCache(cache_root, feature_config, face_model)
    cache.get(media)
    entry = cache.entry_path(cache.get(media)[0].media_sha256)
    entry.write_bytes(b"")  # would be a damaged entry if it were read
    track, cached = cache.get(media, refresh=True)
    assert cached is False
    assert FeatureTrack.load(entry).extractor_version == cache.version  # rewritten
    assert cache.get(media)[1] is True


def test_damaged_entry_is_replaced(cache_root: Path, clip: Clip, feature_config: FeatureConfig, face_model: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    media = clip(CACHE_CLIP)
    cache = FeatureCache(cache_root, feature_config, face_model)
    track, _ = cache.get(media)
    entry = cache.entry_path(track.media_sha256)
    entry.write_bytes(b"garbage")
    again, cached = cache.get(media)
    assert cached is False
    assert "damaged cache entry" in caplog.text
    assert_tracks_equal(again, FeatureTrack.load(entry))


def test_same_bytes_under_another_name(cache_root: Path, tmp_path: Path, clip: Clip, feature_config: FeatureConfig,
                                      face_model: Path) -> None:
    media = clip(CACHE_CLIP)
    link = tmp_path / "renamed.mp4"
    link.symlink_to(media)
    cache = FeatureCache(cache_root, feature_config, face_model)
    cache.get(media)
    track, cached = cache.get(link)
    assert cached is True
    assert track.source == str(link)


def test_cached_silent_track_does_not_satisfy_require_audio(tmp_path: Path, clip: Clip, feature_config: FeatureConfig,
                                                            face_model: Path) -> None:
    silent = mf.video_only_remux(clip(CACHE_CLIP), tmp_path / "silent.mp4", seconds=1.0)
    cache = FeatureCache(tmp_path / "cache", feature_config, face_model)
    assert cache.get(silent, require_audio=False)[1] is False
    track, cached = cache.get(silent, require_audio=False)
    assert cached is True and not track.has_audio
    with pytest.raises(MediaError, match="no audio stream"):
        cache.get(silent, require_audio=True)


# --- audio features -----------------------------------------------------------------------

def _htk_mel(f: float) -> float:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_bin_position(freq: float, fmin: float = 20.0, fmax: float = 7600.0) -> float:
    """Fractional index of the mel band whose centre is at ``freq`` (80 bands, HTK scale)."""
    lo, hi = _htk_mel(fmin), _htk_mel(fmax)
    return (_htk_mel(freq) - lo) / ((hi - lo) / (N_MELS + 1)) - 1


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_shape_and_floor() -> None:
    mel = log_mel(_tone(440.0, seconds=1.0), 50)  # 1 s of audio, 2 s of video
    assert mel.shape == (50, MELS_PER_FRAME, N_MELS) and mel.dtype == np.float32
    assert np.isfinite(mel).all()
    assert np.allclose(mel[26:], FLOOR, atol=1e-3)  # after the audio ends: no energy
    assert (mel[1:24].max(axis=-1) > FLOOR + 20).all()
    assert log_mel(np.zeros(0, np.float32), 0).shape == (0, MELS_PER_FRAME, N_MELS)


def test_log_mel_1khz_peaks_in_the_1khz_band() -> None:
    mel = log_mel(_tone(1000.0), 25)
    peak = mel[2:-2].mean(axis=(0, 1)).argmax()
    expected = _mel_bin_position(1000.0)  # 27.47: between bands 27 and 28
    assert abs(peak - expected) < 1.0, (peak, expected)


@pytest.mark.parametrize("band", [10, 40, 70])
def test_log_mel_tone_at_a_band_centre_peaks_in_that_band(band: int) -> None:
    lo, hi = _htk_mel(20.0), _htk_mel(7600.0)
    mel_centre = lo + (band + 1) * (hi - lo) / (N_MELS + 1)
    freq = 700.0 * (10 ** (mel_centre / 2595.0) - 1.0)
    mel = log_mel(_tone(freq), 25)
    assert mel[2:-2].mean(axis=(0, 1)).argmax() == band
    # louder tone -> higher log-mel in the same place, by the power ratio (20 dB = ln 100)
    louder = log_mel(_tone(freq, amp=0.05), 25)[2:-2].mean(axis=(0, 1))[band]
    assert mel[2:-2].mean(axis=(0, 1))[band] - louder == pytest.approx(np.log(100), abs=0.05)


@pytest.mark.parametrize("t", [0.2537, 0.512, 1.003, 1.232, 1.973])
def test_click_lands_in_its_video_frame(t: float) -> None:
    """Frame k owns mel frames centred at k/25 + (-15, -5, 5, 15) ms: a click at time t
    is loudest in frame round(t * 25), in the sub-frame whose centre is nearest t."""
    n = 60
    samples = np.zeros(int(2.4 * SR), np.float32)
    samples[int(round(t * SR))] = 1.0
    mel = log_mel(samples, n)
    energy = np.exp(mel).sum(axis=-1)  # (N, 4)
    assert int(energy.sum(axis=1).argmax()) == round(t * 25)
    centres = (np.arange(n)[:, None] / 25 + np.array([-15, -5, 5, 15])[None, :] / 1000).ravel()
    assert int(energy.ravel().argmax()) == int(np.abs(centres - t).argmin())
    # windows are 25 ms long: nothing 2 frames (80 ms) away hears the click
    k = round(t * 25)
    quiet = np.r_[0 : max(0, k - 1), k + 2 : n]
    assert np.allclose(mel[quiet], FLOOR, atol=1e-3)


def test_mel_framing_constants() -> None:
    assert (WIN, HOP, SR) == (400, 160, 16_000)
    assert MELS_PER_FRAME * HOP == SR // 25  # 4 hops per 40 ms video frame


def test_speech_activity_is_zero_for_silence_and_low_noise() -> None:
    n = 50
    assert not speech_activity(np.zeros(2 * SR, np.float32), n).any()
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(2 * SR) * 10 ** (-65 / 20)).astype(np.float32)  # -65 dBFS
    act = speech_activity(noise, n)
    assert act.shape == (n,) and act.dtype == np.float32
    assert act.max() == 0.0
    # Above the level gate the VAD itself decides: steady noise is not speech.
    # Observed mean 0.035 at -30..-45 dBFS. (It does call -20 dBFS white noise and
    # steady 440 Hz / 1 kHz tones speech: 0.99; a limitation of the WebRTC VAD.)
    noise = (rng.standard_normal(2 * SR) * 10 ** (-40 / 20)).astype(np.float32)
    assert speech_activity(noise, n).mean() < 0.1
    assert speech_activity(np.zeros(0, np.float32), 0).shape == (0,)


def test_speech_activity_is_per_frame_fraction() -> None:
    """Values are fractions of 4 sub-frames, and audio shorter than the timeline is silent
    at the end."""
    rng = np.random.default_rng(1)
    act = speech_activity((rng.standard_normal(SR) * 0.3).astype(np.float32), 50)
    assert set(np.unique(act)) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert not act[26:].any()


# --- face model resolution ----------------------------------------------------------------

def test_configured_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configured = tmp_path / "configured.task"
    configured.write_bytes(b"configured copy")  # resolution checks presence, not content
    env_model = tmp_path / "env.task"
    env_model.write_bytes(b"env copy")
    monkeypatch.setenv(ENV_VAR, str(env_model))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / FACE_MODEL_NAME).write_bytes(b"cached copy")
    assert resolve_face_model(configured, tmp_path, allow_download=False) == configured


def test_env_beats_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_model = tmp_path / "env.task"
    env_model.write_bytes(b"env copy")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / FACE_MODEL_NAME).write_bytes(b"cached copy")
    monkeypatch.setenv(ENV_VAR, str(env_model))
    assert resolve_face_model(None, tmp_path, allow_download=False) == env_model


def test_cache_dir_is_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    cached = tmp_path / "models" / FACE_MODEL_NAME
    cached.parent.mkdir()
    cached.write_bytes(b"cached copy")
    assert resolve_face_model(None, tmp_path, allow_download=False) == cached


def test_missing_configured_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_model = tmp_path / "env.task"
    env_model.write_bytes(b"env copy")
    monkeypatch.setenv(ENV_VAR, str(env_model))  # a valid fallback must not hide the error
    missing = tmp_path / "typo" / "face.task"
    with pytest.raises(AssetError) as info:
        resolve_face_model(missing, tmp_path, allow_download=False)
    assert str(missing) in str(info.value) and "features.face_model" in str(info.value)


def test_missing_env_path_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.task"))
    with pytest.raises(AssetError) as info:
        resolve_face_model(None, tmp_path, allow_download=False)
    assert "nope.task" in str(info.value) and ENV_VAR in str(info.value)


def test_nothing_available_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(AssetError) as info:
        resolve_face_model(None, tmp_path, allow_download=False)
    msg = str(info.value)
    assert ENV_VAR in msg and "features.face_model" in msg
    assert str(tmp_path / "models" / FACE_MODEL_NAME) in msg and "\n" not in msg


# --- config -------------------------------------------------------------------------------

def test_config_defaults_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPOSE_CACHE", str(tmp_path / "c"))
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.cache_dir == tmp_path / "c"
    assert cfg.features == FeatureConfig()
    toml = tmp_path / "expose.toml"
    toml.write_text('[features]\nmax_side = 320\nface_model = "/m/face.task"\n')
    cfg = load_config(toml)
    assert cfg.features.max_side == 320 and cfg.features.face_model == Path("/m/face.task")


@pytest.mark.parametrize("text, phrase", [
    ("[features]\nmax_side = 10\n", "features.max_side"),
    ("[features]\nmax_sides = 320\n", "features.max_sides"),  # typo: extra keys forbidden
    ("[features\n", "not valid TOML"),
])
def test_config_errors(tmp_path: Path, text: str, phrase: str) -> None:
    toml = tmp_path / "expose.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.")):
        load_config(toml)
