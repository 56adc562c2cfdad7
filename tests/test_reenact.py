"""The reenactment attack generator (bench/reenact.py) on real corpus frames: the output changes
only inside the driven face's outline, the reenacted mouth opens and closes with the driver's,
not with the target's own, a frame without a face is copied bit for bit, and the output is
deterministic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from expose.monitor.features.expressions import ExpressionExtractor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from face_swap import FACE_OVAL, _faces  # noqa: E402
from reenact import (  # noqa: E402
    Frame,
    drive_points,
    driver_offsets,
    face_triangles,
    mouth_opening,
    neutral_index,
    reenact_frame,
    reenact_frames,
    similarity,
)

if TYPE_CHECKING:
    from tests.conftest import Clip

TARGET = "real/feifeili/feifeili_clip3.mp4"  # 256x256, 7 s, talking
DRIVER = "real/ocasio_cortez/clip_02.mp4"  # 512x512, 4.6 s, talking


class Pair:
    def __init__(self, target: list[Frame], fps: float, driver: list[Frame], driver_fps: float) -> None:
        self.target, self.fps, self.driver, self.driver_fps = target, fps, driver, driver_fps
        s = target[neutral_index(target, fps)]
        assert s[1] is not None
        self.source, self.source_marks = s[0], s[1]
        neutral = driver[neutral_index(driver, driver_fps)][1]
        assert neutral is not None
        self.neutral = neutral
        self.offsets = driver_offsets([m for _, m in driver], neutral)
        self.tris = face_triangles(self.source_marks)

    def frame(self, k: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Target frame k driven by driver frame j: (output image, the driven landmarks)."""
        marks = self.target[k][1]
        assert marks is not None
        points = drive_points(self.source_marks, marks, self.neutral, self.offsets[j])
        return reenact_frame(self.target[k][0], self.source, self.source_marks, points, self.tris), points


@pytest.fixture(scope="module")
def pair(clip: Clip, face_model: Path) -> Pair:
    target, fps = _faces(clip(TARGET), face_model, 640)
    driver, driver_fps = _faces(clip(DRIVER), face_model, 640)
    assert sum(m is not None for _, m in target) > 150 and sum(m is not None for _, m in driver) > 100
    return Pair(target, fps, driver, driver_fps)


def test_similarity_recovers_a_known_scale_rotation_and_shift() -> None:
    pts = np.random.default_rng(0).normal(size=(30, 2)) * 50
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    got_a, got_b = similarity(pts, pts @ a.T + shift)
    assert np.allclose(got_a, a, atol=1e-9) and np.allclose(got_b, shift, atol=1e-7)


def test_only_the_driven_face_changes(pair: Pair) -> None:
    faces = [k for k, (_, m) in enumerate(pair.target) if m is not None]
    for k in faces[:: len(faces) // 6][:6]:
        out, points = pair.frame(k, k % len(pair.driver))
        image = pair.target[k][0]
        hull = np.zeros(image.shape[:2], dtype=np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(points[FACE_OVAL]).astype(np.int32)), 1)
        near = cv2.dilate(hull, np.ones((5, 5), np.uint8)).astype(bool)  # 2 px for the outline's rounding
        changed = (out != image).any(axis=2)
        assert not changed[~near].any(), f"frame {k}: {changed[~near].sum()} pixels changed outside the face"
        # ...and inside it the face is replaced (the source frame's, moved), not left as it was
        assert changed[hull > 0].mean() > 0.5, changed[hull > 0].mean()


def test_the_mouth_follows_the_driver_not_the_target(pair: Pair, face_model: Path) -> None:
    # driver frames from closed to wide open, each put on a target frame whose own mouth goes the
    # other way: an output that followed the target would correlate negatively
    d_open = [(mouth_opening(m), j) for j, (_, m) in enumerate(pair.driver) if m is not None]
    t_open = [(mouth_opening(m), k) for k, (_, m) in enumerate(pair.target) if m is not None]
    d_sel = [sorted(d_open)[int(q * (len(d_open) - 1))] for q in np.linspace(0, 1, 8)]
    t_sel = [sorted(t_open)[int(q * (len(t_open) - 1))] for q in np.linspace(1, 0, 8)]
    assert d_sel[-1][0] - d_sel[0][0] > 0.15 and t_sel[0][0] - t_sel[-1][0] > 0.1  # both clips talk
    measured = []
    with ExpressionExtractor(face_model) as extractor:
        for i, ((_, j), (_, k)) in enumerate(zip(d_sel, t_sel, strict=True)):
            out, _ = pair.frame(k, j)
            seen = extractor.observe(out, float(i))
            assert seen is not None, f"no face found in the reenacted frame {k}"
            measured.append(mouth_opening(seen.landmarks))
    driver = np.array([o for o, _ in d_sel])
    target = np.array([o for o, _ in t_sel])
    r_driver = np.corrcoef(measured, driver)[0, 1]
    assert r_driver > 0.8, (r_driver, measured, driver.tolist(), target.tolist())
    assert np.ptp(measured) > 0.1, measured  # it opens, not just a tremble


def test_a_frame_without_a_face_is_copied_and_the_output_is_deterministic(pair: Pair, face_model: Path) -> None:
    frames = list(pair.target[:30])
    blurred = cv2.GaussianBlur(frames[12][0], (0, 0), 30)
    with ExpressionExtractor(face_model) as extractor:
        assert extractor.observe(blurred, 0.0) is None  # the landmarker sees no face in it
    frames[12] = (blurred, None)
    first = list(reenact_frames(frames, pair.fps, pair.driver, pair.driver_fps))
    again = list(reenact_frames(frames, pair.fps, pair.driver, pair.driver_fps))
    assert len(first) == len(frames)
    assert np.array_equal(first[12], blurred)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert sum(not np.array_equal(o, f[0]) for o, f in zip(first, frames, strict=True)) >= 28
