"""Self-blended pseudo-fakes (monitor/training/sbi.py) on real corpus frames: the mask covers
the face hull and stays near it, the blend changes pixels only where the mask is non-zero,
the same seed gives the same pseudo-fake, and bad input is refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from expose.monitor.features.face_id import FaceSample, sample_faces
from expose.monitor.training.sbi import (
    MASK_SHAPES,
    SBIConfig,
    face_crop,
    face_size,
    hull_mask,
    rng,
    self_blend,
)

if TYPE_CHECKING:
    from tests.conftest import Clip

SQRT2 = float(np.sqrt(2))
CLIPS = ["real/trump/speech_01.mp4", "real/ocasio_cortez/hdtf_000.mp4", "real/mead_m030/M030_sad_3_001.mp4"]


@pytest.fixture(scope="module")
def faces(clip: Clip, face_model: Path) -> list[FaceSample]:
    out: list[FaceSample] = []
    for rel in CLIPS:  # 512x512, 512x512, 1920x1080
        samples, _ = sample_faces(clip(rel), face_model, 2, stride=20)
        assert samples, rel
        out += samples
    return out


def _dilated(mask: np.ndarray, px: float) -> np.ndarray:
    r = int(np.ceil(px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def test_the_whole_face_mask_covers_the_hull_and_ends_within_its_blur(faces: list[FaceSample]) -> None:
    cfg = SBIConfig(shapes=("face",), blend_ratios=(1.0,), morph=0.0)
    for i, face in enumerate(faces):
        fake = self_blend(face.image, face.landmarks, rng(i), cfg)
        hull = hull_mask(face.image.shape[:2], face.landmarks)
        assert np.array_equal(fake.hull, hull) and hull.sum() > 1000
        # the warped, blurred mask still holds most of the face at full weight...
        assert (fake.mask[hull] > 0.5).mean() > 0.9, (fake.mask[hull] > 0.5).mean()
        assert fake.mask.max() == pytest.approx(1.0, abs=1e-3)
        # ...and is exactly zero beyond the warp plus the blur kernel (a square of half-side three
        # sigmas: up to sqrt(2) times that along a diagonal; the warp likewise, per axis)
        size = face_size(face.landmarks)
        reach = SQRT2 * (cfg.elastic_alpha + 3 * cfg.blur[1]) * size + 3
        assert not fake.mask[~_dilated(hull, reach)].any()


def test_every_mask_shape_stays_near_the_face(faces: list[FaceSample]) -> None:
    cfg = SBIConfig()
    seen = set()
    for seed in range(24):
        face = faces[seed % len(faces)]
        fake = self_blend(face.image, face.landmarks, rng(seed), cfg)
        seen.add(fake.params["shape"])
        size = face_size(face.landmarks)
        reach = (SQRT2 * (cfg.elastic_alpha + 3 * cfg.blur[1]) + cfg.morph) * size + 3
        assert fake.mask.dtype == np.float32 and fake.mask.min() >= 0.0 and fake.mask.max() <= 1.0
        assert fake.mask.max() >= 0.2  # the smallest blend ratio, 0.25, at the mask's core
        assert not fake.mask[~_dilated(fake.hull, reach)].any()
    assert seen == set(MASK_SHAPES)


def test_the_blend_changes_pixels_only_inside_the_mask(faces: list[FaceSample]) -> None:
    for seed, face in enumerate(faces):
        fake = self_blend(face.image, face.landmarks, rng(100 + seed))
        outside = fake.mask == 0
        assert outside.mean() > 0.3  # most of the frame is not face
        assert np.array_equal(fake.image[outside], face.image[outside])
        changed = (fake.image != face.image).any(axis=2)
        assert changed.sum() > 0.2 * fake.hull.sum()  # a visible change, not a no-op
        assert not (changed & outside).any()


def test_the_same_seed_gives_the_same_pseudo_fake(faces: list[FaceSample]) -> None:
    face = faces[0]
    a = self_blend(face.image, face.landmarks, rng(7))
    b = self_blend(face.image, face.landmarks, rng(7))
    c = self_blend(face.image, face.landmarks, rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.params == b.params
    assert not np.array_equal(a.image, c.image) and a.params != c.params


def test_face_crop_frames_the_face_and_bad_input_is_refused(faces: list[FaceSample]) -> None:
    face = faces[-1]  # a 1920x1080 frame
    crop = face_crop(face.image, face.landmarks, 224)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # the crop of a pseudo-fake differs from the real crop, the real crop is the same every time
    fake = self_blend(face.image, face.landmarks, rng(3))
    assert np.array_equal(face_crop(face.image, face.landmarks, 224), crop)
    assert not np.array_equal(face_crop(fake.image, face.landmarks, 224), crop)
    with pytest.raises(ValueError, match="uint8"):
        self_blend(face.image.astype(np.float32), face.landmarks, rng(0))
    with pytest.raises(ValueError, match="landmarks"):
        self_blend(face.image, face.landmarks[:2], rng(0))
