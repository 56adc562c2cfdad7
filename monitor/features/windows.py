"""Window: a fixed-length slice of a FeatureTrack (``FeatureTrack.window``), the unit the
Scorer works on; ``windows_of`` covers a whole track with them.

Session normalisation happens here, identically offline and live: each window's
expression channels are centred on their own median over face-present frames. That
removes what depends on the camera and the session (head-pose offsets, distance to the
camera, gaze towards a screen, lighting bias of some blendshapes) and keeps the motion,
which is what carries the person's way of speaking. The per-channel scale is global and
lives in the model (learned from the training corpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from expose.monitor.features.audio import AUDIO_DIM, SPEECH_THRESHOLD

if TYPE_CHECKING:  # track.py builds Windows, so it imports this module
    from expose.monitor.features.track import FeatureTrack


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
    audio: np.ndarray = field(repr=False)  # (T, AUDIO_DIM): features.audio.audio_rows
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


def windows_of(track: FeatureTrack, length: int, hop: int, stream: str = "") -> list[Window]:
    """All windows of ``length`` frames every ``hop`` frames (the tail that does not fill
    a whole window is covered by one last window ending at the track's end)."""
    if len(track) < length:
        return []
    starts = list(range(0, len(track) - length + 1, hop))
    if starts[-1] != len(track) - length:
        starts.append(len(track) - length)
    return [track.window(s, length, stream) for s in starts]
