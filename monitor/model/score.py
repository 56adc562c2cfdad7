"""Score: what the scorer says about one window (the pipeline's fourth value type).

Kept apart from the scorer so that the alert policy, the store and the exporters can use it
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["scored", "insufficient"]


@dataclass(frozen=True)
class ScoreSettings:
    times: tuple[float, ...] = (0.3, 0.5, 0.7)
    draws: int = 4
    seed: int = 1234
    audio_shift_s: float = 1.0  # the "out of sync" branch hears the audio this much later
    min_face: float = 0.6
    min_speech: float = 0.2
    w_identity: float = 1.0
    w_sync: float = 1.0
    w_fit: float = 0.0


@dataclass(frozen=True)
class Score:
    stream: str
    profile: str
    t0: float
    t1: float
    status: Status
    face_ratio: float
    speech_ratio: float
    distance: float | None = None
    identity: float | None = None
    sync: float | None = None
    fit: float | None = None
    identity_mouth: float | None = None  # the identity term on mouth/jaw channels only (diagnostic)
    err_subject: float | None = None
    err_null: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status == "scored" and self.distance is None:
            raise ValueError("a scored window needs a distance")
        if self.status == "insufficient" and self.distance is not None:
            raise ValueError("an insufficient window must not carry a distance")
