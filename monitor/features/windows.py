"""Window: a fixed-length slice of a FeatureTrack, the unit the Scorer works on.

Session normalisation happens here, identically offline and live: each window's
expression channels are centred on their own median over face-present frames. That
removes what depends on the camera and the session (head-pose offsets, distance to the
camera, gaze towards a screen, lighting bias of some blendshapes) and keeps the motion,
which is what carries the person's way of speaking. The per-channel scale is global and
lives in the model (learned from the training corpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from expose.monitor.features.audio import FPS, MELS_PER_FRAME, N_MELS
from expose.monitor.features.phones import N_PHONES
from expose.monitor.features.track import SPEECH_THRESHOLD, FeatureTrack

AUDIO_DIM = MELS_PER_FRAME * N_MELS + N_PHONES + 1  # mel, phone fractions, speech activity


def audio_rows(track: FeatureTrack) -> np.ndarray:
    """(N, AUDIO_DIM) float32 per-frame audio features of a track."""
    n = len(track)
    return np.concatenate(
        [track.mel.reshape(n, -1), track.phones, track.speech[:, None]], axis=1
    ).astype(np.float32)


def center_expression(expr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Subtract the per-channel median over face-present rows; zero rows without a face."""
    out = np.zeros_like(expr, dtype=np.float32)
    if mask.any():
        med = np.median(expr[mask], axis=0)
        out[mask] = expr[mask] - med
    return out


@dataclass(frozen=True)
class Window:
    """Frames [start, start + T) of one stream, t0/t1 in seconds of that stream."""

    stream: str
    t0: float
    t1: float
    expression: np.ndarray = field(repr=False)  # (T, 58) raw expression rows
    audio: np.ndarray = field(repr=False)  # (T, AUDIO_DIM)
    face_mask: np.ndarray = field(repr=False)  # (T,) bool: a face (landmarked or interpolated)
    speech: np.ndarray = field(repr=False)  # (T,) float32 speech activity
    # (T,) bool: rows landmarked on a real frame; the reconstruction errors count only these,
    # so a source's frame rate (how many ticks are interpolated) does not move the scores.
    # None -> face_mask
    observed: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        t = len(self.face_mask)
        if self.observed is None:
            object.__setattr__(self, "observed", self.face_mask)
        if (self.expression.shape[0] != t or self.audio.shape != (t, AUDIO_DIM) or self.speech.shape != (t,)
                or self.observed.shape != (t,)):
            raise ValueError("Window arrays must share their first dimension T")
        if not self.t1 > self.t0:
            raise ValueError("Window needs t1 > t0")

    @property
    def length(self) -> int:
        return len(self.face_mask)

    @property
    def face_ratio(self) -> float:
        return float(self.face_mask.mean())

    @property
    def speech_ratio(self) -> float:
        return float((self.speech >= SPEECH_THRESHOLD).mean())

    def centered_expression(self) -> np.ndarray:
        return center_expression(self.expression, self.face_mask)


def slice_window(stream: str, expression: np.ndarray, audio: np.ndarray, face_mask: np.ndarray,
                 speech: np.ndarray, observed: np.ndarray, start: int, length: int) -> Window:
    """Rows [start, start + length) of aligned per-frame arrays as a Window."""
    end = start + length
    return Window(stream=stream, t0=start / FPS, t1=end / FPS, expression=expression[start:end],
                  audio=audio[start:end], face_mask=face_mask[start:end], speech=speech[start:end],
                  observed=observed[start:end])


def windows_of(track: FeatureTrack, length: int, hop: int, stream: str = "") -> list[Window]:
    """All windows of ``length`` frames every ``hop`` frames (the tail that does not fill
    a whole window is covered by one last window ending at the track's end)."""
    if len(track) < length:
        return []
    audio = audio_rows(track)
    starts = list(range(0, len(track) - length + 1, hop))
    if starts[-1] != len(track) - length:
        starts.append(len(track) - length)
    name = stream or track.source
    return [slice_window(name, track.expression, audio, track.face_mask, track.speech, track.observed, s, length)
            for s in starts]
