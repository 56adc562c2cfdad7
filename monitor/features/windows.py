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
from expose.monitor.features.identity import FACE_ID_DIM

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
    # Identity embeddings (features.identity.window_identity), the same offline and live.
    # (M, 128) float32 face descriptors of the rows face_id_rows (M,) int64 (landmarked rows
    # on the face sampling grid). None -> none.
    face_ids: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    face_id_rows: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # (256,) float32 voice embedding of the speech before row voice_id_row (<= T; the last voice
    # tick at or before the window's end, so it may start before the window); NaN: too little
    # speech; None: no voice embedding (disabled, or no voice tick yet)
    voice_id: np.ndarray | None = field(default=None, repr=False)
    voice_id_row: int | None = None
    # (M, Da) float32 DiffFake appearance embeddings of the same faces as face_ids; (M, 0): off.
    # None -> (M, 0)
    appearance: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # live only: wall clock (epoch s) when the video frame that completed the window arrived
    # (media.reader.VideoFrame.arrived); a score's frame_latency_s counts from it
    ready_at: float | None = None

    def __post_init__(self) -> None:
        t = len(self.face_mask)
        if self.observed is None:
            object.__setattr__(self, "observed", self.face_mask)
        if self.face_ids is None:
            object.__setattr__(self, "face_ids", np.zeros((0, FACE_ID_DIM), dtype=np.float32))
        if self.face_id_rows is None:
            object.__setattr__(self, "face_id_rows", np.zeros(0, dtype=np.int64))
        # zero-width means off: it follows the face rows (dataclasses.replace of face_ids alone)
        if self.appearance is None or (self.appearance.ndim == 2 and self.appearance.shape[1] == 0):
            object.__setattr__(self, "appearance", np.zeros((len(self.face_ids), 0), dtype=np.float32))
        if (self.expression.shape[0] != t or self.audio.shape != (t, AUDIO_DIM) or self.speech.shape != (t,)
                or self.observed.shape != (t,)):
            raise ValueError("Window arrays must share their first dimension T")
        if (self.face_ids.ndim != 2 or self.face_id_rows.shape != (len(self.face_ids),)
                or ((self.face_id_rows < 0) | (self.face_id_rows >= t)).any()):
            raise ValueError("Window.face_ids must be (M, D) with M face_id_rows in [0, T)")
        if self.appearance.ndim != 2 or len(self.appearance) != len(self.face_ids):
            raise ValueError("Window.appearance must be (M, Da), one row per face descriptor")
        if (self.voice_id is None) != (self.voice_id_row is None) or (
                self.voice_id is not None and (self.voice_id.ndim != 1 or self.voice_id_row is None
                                               or self.voice_id_row > t)):
            raise ValueError("Window.voice_id must be (D,) with a voice_id_row <= T, or both None")
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

    @property
    def has_voice_id(self) -> bool:
        """A voice embedding of enough speech (not None, not NaN)."""
        return self.voice_id is not None and bool(np.isfinite(self.voice_id).all())

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
