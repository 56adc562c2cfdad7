"""The GE2E voice embedder on real corpus speech: another recording of the same person is
closer than other people; too little speech is ``insufficient``; embeddings are
deterministic; missing or corrupt weights give one clear line. Preprocessing is pinned to
numbers resemblyzer 0.1.4 (with librosa 0.11) computes, so parity cannot drift silently.

Audio is decoded with the project's MediaReader and reduced to the speech ticks the
project's VAD marks (``speech_only``), as the voice term will see it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from expose.monitor.errors import AssetError
from expose.monitor.features.audio import speech_activity
from expose.monitor.features.embedding import Embedder, create_embedder
from expose.monitor.features.timeline import SAMPLES_PER_FRAME, SampleBuffer
from expose.monitor.features.voice_id import (
    ENV_VAR,
    InsufficientSpeech,
    VoiceEncoder,
    find_voice_weights,
    ge2e_mel,
    partial_slices,
    speech_only,
)
from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, MediaReader

Speech = Callable[[str], np.ndarray]


def _read_audio(path: Path) -> np.ndarray:
    buf = SampleBuffer()
    with MediaReader(path, require_video=False, require_audio=True) as reader:
        for item in reader.read(max_side=128):  # only the audio is used
            if isinstance(item, AudioChunk):
                buf.put(item)
    return buf.read(0, buf.end)


@pytest.fixture(scope="module")
def audio(clip: Callable[[str], Path]) -> Callable[[str], np.ndarray]:
    """``audio("real/...")`` -> the clip's 16 kHz mono samples, decoded once."""
    return cache(lambda rel: _read_audio(clip(rel)))


@pytest.fixture(scope="module")
def speech(audio: Callable[[str], np.ndarray]) -> Speech:
    """``speech("real/...")`` -> the samples of the clip's speech ticks."""

    @cache
    def _speech(rel: str) -> np.ndarray:
        samples = audio(rel)
        return speech_only(samples, speech_activity(samples, len(samples) // SAMPLES_PER_FRAME))

    return _speech


@pytest.fixture(scope="module")
def encoder() -> VoiceEncoder:
    return VoiceEncoder()


def _voice(encoder: VoiceEncoder, samples: np.ndarray) -> np.ndarray:
    emb = encoder.embed_speech(samples)
    assert emb is not None, "expected enough speech"
    return emb


@pytest.mark.parametrize(("reference", "same_person", "strangers"), [
    # Two recordings years apart (a podium speech, a TV clip); strangers include the
    # male voice nearest to him in the corpus.
    ("real/trump/speech_01.mp4", ["real/trump/clip_02.mp4"],
     ["real/niko_csgo/esl_interview.mp4", "real/vidtimit_fadg0/s1_si649.mp4"]),
    # VidTIMIT: sessions recorded about a week apart; strangers are other women.
    ("real/vidtimit_fadg0/s1_si649.mp4", ["real/vidtimit_fadg0/s2_sx199.mp4", "real/vidtimit_fadg0/s3_sx289.mp4"],
     ["real/ocasio_cortez/hdtf_000.mp4", "real/feifeili/feifeili_clip1.mp4"]),
], ids=["trump", "vidtimit_fadg0"])
def test_other_recording_of_the_person_is_closer_than_other_people(
        encoder: VoiceEncoder, speech: Speech, reference: str, same_person: list[str], strangers: list[str]) -> None:
    ref = _voice(encoder, speech(reference))
    same = [float(ref @ _voice(encoder, speech(rel))) for rel in same_person]
    other = [float(ref @ _voice(encoder, speech(rel))) for rel in strangers]
    assert min(same) > max(other) + 0.1, (same, other)


def test_too_little_speech_is_insufficient(encoder: VoiceEncoder, speech: Speech,
                                          audio: Callable[[str], np.ndarray]) -> None:
    short = speech("real/trump/speech_01.mp4")[: int(1.2 * AUDIO_RATE)]
    assert encoder.embed_speech(short) is None
    with pytest.raises(InsufficientSpeech, match="1.20 s of speech"):
        encoder.embed([short])
    # Silence: plenty of samples, no speech ticks, so nothing to embed.
    silence = np.zeros(5 * AUDIO_RATE, dtype=np.float32)
    assert encoder.embed_span(silence, speech_activity(silence, len(silence) // SAMPLES_PER_FRAME)) is None
    assert encoder.embed_speech(silence) is None
    # A real span with speech in it, but at most 1.5 s of it: below the minimum...
    samples = audio("real/trump/speech_01.mp4")[: int(1.5 * AUDIO_RATE)]
    activity = speech_activity(samples, len(samples) // SAMPLES_PER_FRAME)
    assert encoder.embed_span(samples, activity) is None
    # ...which is configurable.
    lenient = VoiceEncoder(min_speech_s=1.0)
    emb = lenient.embed_speech(short)
    assert emb is not None and emb.shape == (256,)


def test_embeddings_are_deterministic_unit_vectors(encoder: VoiceEncoder, speech: Speech) -> None:
    a, b = speech("real/vidtimit_fadg0/s2_sx199.mp4"), speech("real/trump/speech_01.mp4")
    threads = torch.get_num_threads()
    first = encoder.embed_speech(a)
    assert first is not None and first.dtype == np.float32 and first.shape == (encoder.dim,)
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    again = encoder.embed_speech(a)
    assert again is not None and np.array_equal(first, again)
    batch = encoder.embed([a, b])  # each input on its own: batching changes nothing
    assert batch.shape == (2, 256)
    assert np.array_equal(batch[0], first)
    assert np.array_equal(batch[1], _voice(encoder, b))
    assert torch.get_num_threads() == threads  # the one-thread setting is only for the call
    assert encoder.embed([]).shape == (0, 256)


def test_missing_or_corrupt_weights_give_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope" / "pretrained.pt"
    with pytest.raises(AssetError) as err:
        VoiceEncoder(weights=missing)
    assert "\n" not in str(err.value) and str(missing) in str(err.value)
    monkeypatch.setenv(ENV_VAR, str(missing))
    with pytest.raises(AssetError, match=rf"\${ENV_VAR}") as err:
        find_voice_weights()
    assert "\n" not in str(err.value)
    monkeypatch.delenv(ENV_VAR)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch checkpoint\n" * 10)
    with pytest.raises(AssetError, match="cannot load voice encoder weights") as err:
        VoiceEncoder(weights=corrupt)
    assert "\n" not in str(err.value)


def test_weights_are_found_in_the_wheel_without_importing_it() -> None:
    imported = "resemblyzer" in sys.modules
    path = find_voice_weights()
    assert path.name == "pretrained.pt" and path.parent.name == "resemblyzer"
    assert ("resemblyzer" in sys.modules) == imported  # located, never executed


def test_registered_as_the_voice_embedder() -> None:
    emb = create_embedder("voice", "ge2e")
    assert isinstance(emb, Embedder) and isinstance(emb, VoiceEncoder)
    assert emb.name == "ge2e" and emb.dim == 256


def test_preprocessing_matches_resemblyzer() -> None:
    # Values computed by resemblyzer 0.1.4 (librosa 0.11): compute_partial_slices(n, 1.3, 0.75)
    # and wav_to_mel_spectrogram on this signal.
    starts = {100: [0], 30000: [0], 32000: [0, 77], 48000: [0, 77, 154],
              112123: [0, 77, 154, 231, 308, 385, 462, 539]}
    for n, expected in starts.items():
        assert partial_slices(n) == [slice(s, s + 160) for s in expected], n
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t)
         + 0.05 * np.sin(2 * np.pi * 5000 * t * t)).astype(np.float32)
    mel = ge2e_mel(x)
    assert mel.shape == (101, 40) and mel.dtype == np.float32
    theirs = {(0, 5): 4.83448600769043, (50, 5): 14.78791618347168, (50, 35): 0.00018556097347754985,
              (100, 10): 0.007093418389558792}
    for (i, j), value in theirs.items():
        assert mel[i, j] == pytest.approx(value, rel=1e-5), (i, j)


def test_speech_only_keeps_the_40ms_around_each_speech_tick() -> None:
    samples = np.arange(6 * SAMPLES_PER_FRAME, dtype=np.float32)
    activity = np.array([1.0, 0.0, 0.5, 0.75, 0.25, 0.0], dtype=np.float32)
    kept = speech_only(samples, activity)
    half = SAMPLES_PER_FRAME // 2
    # tick 0 owns [-320, 320) (what exists: [0, 320)); ticks 2 and 3 are adjacent.
    expected = np.concatenate([samples[:half], samples[2 * SAMPLES_PER_FRAME - half: 3 * SAMPLES_PER_FRAME + half]])
    assert np.array_equal(kept, expected)
    assert speech_only(samples, np.zeros(6, dtype=np.float32)).size == 0
