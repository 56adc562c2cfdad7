"""Audio features on the 25 fps timeline: log-mel (80 bins, 25 ms window, 10 ms hop) and
a per-frame speech-activity signal; and, for a span of ticks, these two with ``phones``'
phone posteriors (``tick_audio``), laid out as the audio rows Windows carry (``audio_rows``).

Alignment: video frame k (time k/25 s) owns the 4 mel frames centred at
k/25 + (-15, -5, +5, +15) ms, so each frame's audio is centred on the frame's own
instant. Sample 0 of the input is time 0 of the timeline (``timeline`` says which
samples a span of ticks starts at).

Speech activity: the WebRTC VAD (``webrtcvad-wheels``, a real GMM voice detector) on
the same 10 ms sub-frames, gated by level so that noise bursts in near-silence do not
count; the value per video frame is the fraction of its 4 sub-frames that are speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

from expose.monitor.features.phones import N_PHONES, phone_posteriors
from expose.monitor.features.timeline import SUBFRAME, SUBFRAMES_PER_FRAME
from expose.monitor.media.reader import AUDIO_RATE

N_MELS = 80
WIN = 400  # 25 ms
HOP = SUBFRAME  # 10 ms
N_FFT = 512
MELS_PER_FRAME = SUBFRAMES_PER_FRAME  # 40 ms video frame / 10 ms hop
AUDIO_DIM = MELS_PER_FRAME * N_MELS + N_PHONES + 1  # a tick's audio row: mel, phone fractions, speech activity
SPEECH_THRESHOLD = 0.5  # a frame "has speech" when at least half its 10 ms sub-frames do
_FIRST_CENTRE = -240  # samples: frame 0's first mel centre is at -15 ms
_SILENCE_DBFS = -50.0
_VAD_MODE = 2  # 0 (permissive) .. 3 (aggressive)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = AUDIO_RATE,
                   fmin: float = 20.0, fmax: float = 7600.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) HTK-scale triangular filters, area-normalised."""
    freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (centre - lower)
    down = (upper - freqs[None, :]) / (upper - centre)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (upper - lower))  # equal area, so wide high bands do not dominate
    return fb.astype(np.float32)


_FILTERS = mel_filterbank()
_WINDOW = np.hanning(WIN + 1)[:-1].astype(np.float32)


def _frames(samples: np.ndarray, n_video_frames: int) -> np.ndarray:
    """(N*4, WIN) windows centred on the mel centres of N video frames."""
    n_mel = n_video_frames * MELS_PER_FRAME
    pad_front = -_FIRST_CENTRE + WIN // 2
    need = pad_front + n_mel * HOP + WIN
    buf = np.zeros(max(need, pad_front + len(samples)), dtype=np.float32)
    buf[pad_front : pad_front + len(samples)] = samples
    idx = np.arange(n_mel)[:, None] * HOP + np.arange(WIN)[None, :]
    return buf[idx]


def log_mel(samples: np.ndarray, n_video_frames: int) -> np.ndarray:
    """16 kHz mono float32 -> (N, 4, 80) float32 natural-log mel power."""
    if n_video_frames == 0:
        return np.zeros((0, MELS_PER_FRAME, N_MELS), dtype=np.float32)
    frames = _frames(samples, n_video_frames) * _WINDOW
    power = np.abs(np.fft.rfft(frames, n=N_FFT, axis=1)) ** 2  # (N*4, 257)
    mel = power.astype(np.float32) @ _FILTERS.T
    return np.log(np.maximum(mel, 1e-10)).reshape(n_video_frames, MELS_PER_FRAME, N_MELS)


def speech_activity(samples: np.ndarray, n_video_frames: int) -> np.ndarray:
    """(N,) float32 in [0, 1]: fraction of each video frame's 10 ms sub-frames with speech."""
    n_sub = n_video_frames * MELS_PER_FRAME
    if n_sub == 0:
        return np.zeros(0, dtype=np.float32)
    # Sub-frame j covers the 10 ms around mel centre j: [centre - 5 ms, centre + 5 ms).
    start = _FIRST_CENTRE - HOP // 2
    pad_front = -start
    buf = np.zeros(n_sub * HOP, dtype=np.float32)
    n = min(len(samples), len(buf) - pad_front)
    buf[pad_front : pad_front + n] = samples[:n]
    sub = buf.reshape(n_sub, HOP)
    rms = np.sqrt(np.mean(sub.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = 20.0 * np.log10(rms) > _SILENCE_DBFS
    pcm = (np.clip(sub, -1.0, 1.0) * 32767.0).astype("<i2")
    vad = webrtcvad.Vad(_VAD_MODE)
    voiced = np.fromiter(
        (bool(loud[j]) and vad.is_speech(pcm[j].tobytes(), AUDIO_RATE) for j in range(n_sub)),
        dtype=bool, count=n_sub,
    )
    return voiced.reshape(n_video_frames, MELS_PER_FRAME).mean(axis=1).astype(np.float32)


def audio_rows(mel: np.ndarray, phones: np.ndarray, speech: np.ndarray) -> np.ndarray:
    """(N, AUDIO_DIM) float32 audio rows of N ticks from their (N, 4, 80) log-mel,
    (N, 40) phone fractions and (N,) speech activity."""
    return np.concatenate([mel.reshape(len(mel), -1), phones, speech[:, None]], axis=1).astype(np.float32)


@dataclass(frozen=True)
class TickAudio:
    """Audio features of consecutive ticks."""

    mel: np.ndarray  # (N, 4, 80) float32 log-mel
    speech: np.ndarray  # (N,) float32 speech activity
    phones: np.ndarray  # (N, 40) float32 phone fractions

    def rows(self, rows: slice) -> np.ndarray:
        """(len(rows), AUDIO_DIM) float32 audio rows of the given ticks."""
        return audio_rows(self.mel[rows], self.phones[rows], self.speech[rows])


def tick_audio(samples: np.ndarray, n_ticks: int) -> TickAudio:
    """Audio features of ``n_ticks`` ticks from 16 kHz mono float32 whose sample 0 is the
    first tick's instant (the phone decoder also hears the samples past the last tick)."""
    return TickAudio(mel=log_mel(samples, n_ticks), speech=speech_activity(samples, n_ticks),
                     phones=phone_posteriors(samples, n_ticks))
