"""Per-frame expression vectors from MediaPipe Face Landmarker (Tasks API, VIDEO mode).

An expression vector is the 52 blendshape scores followed by the head pose: yaw,
pitch, roll (radians) and the translation x, y, z (MediaPipe's canonical-face units,
roughly cm) from the facial transformation matrix.

Primary face when several are present: the face nearest to the previous frame's
primary face (so a second person entering the picture does not steal the track),
otherwise the one with the largest landmark bounding box weighted by how central it is
(``area * (1 - 0.5 * distance_from_centre)``, distances in half-diagonals).

``ExpressionExtractor.observe`` also returns that face's landmarks in pixels (a
FaceObservation), for the frames whose face is cropped for verification.
"""

from __future__ import annotations

import os

# MediaPipe logs through glog to stderr at import and on every graph start.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import mediapipe as mp  # noqa: E402
import numpy as np  # noqa: E402
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

from expose.monitor.errors import AssetError  # noqa: E402

BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "tx", "ty", "tz")
EXPRESSION_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + POSE_NAMES
# the channels the audio should explain (weighted in the loss; the sync and fit terms)
MOUTH_CHANNELS: np.ndarray = np.array([n.startswith(("mouth", "jaw")) for n in EXPRESSION_NAMES])
EXPRESSION_DIM = len(EXPRESSION_NAMES)  # 58
N_BLENDSHAPES = len(BLENDSHAPE_NAMES)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ graph's start-up chatter (absl logs straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def pose_from_matrix(m: np.ndarray) -> np.ndarray:
    """(4, 4) facial transformation matrix -> (6,) yaw, pitch, roll, tx, ty, tz."""
    r = m[:3, :3]
    yaw = np.arcsin(np.clip(-r[2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[2, 1], r[2, 2])
    roll = np.arctan2(r[1, 0], r[0, 0])
    return np.array([yaw, pitch, roll, m[0, 3], m[1, 3], m[2, 3]], dtype=np.float32)


@dataclass(frozen=True)
class FaceObservation:
    """The primary face in one frame: its expression vector and where its landmarks are."""

    expression: np.ndarray = field(repr=False)  # (58,) float32, as ExpressionExtractor.process
    landmarks: np.ndarray = field(repr=False)  # (478, 2) float32 x, y in pixels of the frame

    def __post_init__(self) -> None:
        if self.expression.shape != (EXPRESSION_DIM,):
            raise ValueError(f"FaceObservation.expression must be ({EXPRESSION_DIM},), got {self.expression.shape}")
        if self.landmarks.ndim != 2 or self.landmarks.shape[1] != 2:
            raise ValueError(f"FaceObservation.landmarks must be (N, 2), got {self.landmarks.shape}")


class ExpressionExtractor:
    """One landmarker per media stream (VIDEO mode keeps tracking state between calls)."""

    def __init__(self, model_path: Path, num_faces: int = 3, min_confidence: float = 0.5) -> None:
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=num_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            with _quiet_stderr():
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError, OSError) as err:  # OSError: missing file
            raise AssetError(f"cannot load face model {model_path}: {str(err).splitlines()[0]}") from None
        self._last_ms = -1
        self._last_centre: np.ndarray | None = None

    def __enter__(self) -> ExpressionExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def process(self, image: np.ndarray, time_s: float) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB at ``time_s`` -> (58,) expression vector, or None if no face."""
        found = self._detect(image, time_s)
        return None if found is None else self._expression(*found)

    def observe(self, image: np.ndarray, time_s: float) -> FaceObservation | None:
        """Like ``process`` (same call, same tracking state, same expression vector), plus the
        primary face's landmarks in pixels, for the frames where a face crop is wanted.

        Call either ``process`` or ``observe`` for a frame, not both: each advances the
        landmarker's VIDEO-mode clock.
        """
        found = self._detect(image, time_s)
        if found is None:
            return None
        result, i = found
        h, w = image.shape[:2]
        # normalised [0, 1] image coordinates -> pixels of this image
        xy = np.array([(p.x * w, p.y * h) for p in result.face_landmarks[i]], dtype=np.float32)
        return FaceObservation(self._expression(result, i), xy)

    def _detect(self, image: np.ndarray, time_s: float) -> tuple[vision.FaceLandmarkerResult, int] | None:
        """Run the landmarker; (result, index of the primary face), or None if no face."""
        ms = max(int(round(time_s * 1000)), self._last_ms + 1)  # must strictly increase
        self._last_ms = ms
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
        result = self._landmarker.detect_for_video(mp_image, ms)
        if not result.face_landmarks or not result.face_blendshapes:
            self._last_centre = None
            return None
        return result, self._pick_primary(result.face_landmarks)

    @staticmethod
    def _expression(result: vision.FaceLandmarkerResult, i: int) -> np.ndarray:
        scores = np.array([c.score for c in result.face_blendshapes[i]], dtype=np.float32)
        if result.facial_transformation_matrixes:
            pose = pose_from_matrix(np.asarray(result.facial_transformation_matrixes[i]))
        else:
            pose = np.zeros(len(POSE_NAMES), dtype=np.float32)
        return np.concatenate([np.clip(scores, 0.0, 1.0), pose])

    def _pick_primary(self, faces: list) -> int:
        boxes = []
        for lms in faces:
            xs = np.fromiter((p.x for p in lms), dtype=np.float32)
            ys = np.fromiter((p.y for p in lms), dtype=np.float32)
            boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
        b = np.array(boxes)  # (F, 4) normalised coordinates
        centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
        if self._last_centre is not None and len(faces) > 1:
            dist = np.linalg.norm(centres - self._last_centre, axis=1)
            if dist.min() < 0.15:
                i = int(dist.argmin())
                self._last_centre = centres[i]
                return i
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        off_centre = np.linalg.norm(centres - 0.5, axis=1) / np.sqrt(0.5)
        i = int(np.argmax(area * (1.0 - 0.5 * off_centre)))
        self._last_centre = centres[i]
        return i
