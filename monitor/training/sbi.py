"""Self-blended images (SBI; Shiohara and Yamasaki, CVPR 2022): pseudo-fakes for training the
appearance embedding (DiffFake's real-vs-pseudo-fake classifier) from real frames only.

A face is blended onto an altered copy of itself: the copy (the "source") gets colour and
sharpness jitter, a resolution drop and a small shift and scale; a mask made from the face's
landmark hull (MediaPipe's 478 points, as the extractor already computes them) with varied
shape, elastic deformation, erosion or dilation and blur decides where the source replaces
the original (the "target"). What is left are the traces every face swap leaves: a boundary
where colour, sharpness and alignment change, and a region whose statistics differ from the
rest of the frame, without the identity or expression changing. The classifier cannot learn
one generator's fingerprint because there is none.

Everything random comes from the ``numpy.random.Generator`` the caller passes: the same seed
gives the same image, mask and parameters, bit for bit (``self_blend(..., rng(seed))``).

Blend: ``out = target + mask * (source - target)`` in float32, rounded. Where the mask is 0
the output *is* the target (no rounding error), so a pseudo-fake differs from its real frame
only inside the blurred mask.

``face_crop`` (features/appearance.py, re-exported here) cuts the square the network sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from expose.monitor.features.appearance import face_crop

__all__ = ["MASK_SHAPES", "SBIConfig", "SelfBlend", "blend_mask", "face_crop", "face_size", "hull_mask", "rng",
           "self_blend", "shape_points"]

MaskShape = Literal["face", "below_brows", "inner"]
MASK_SHAPES: tuple[MaskShape, ...] = ("face", "below_brows", "inner")
# MediaPipe face-mesh indices of the two eyebrows' upper edges (left and right)
BROW_POINTS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)


@dataclass(frozen=True)
class SBIConfig:
    """The ranges the random parameters are drawn from (uniformly unless said); fractions of
    the face size (the geometric mean of the landmark box's sides) where geometric."""

    hue: float = 10.0  # hue shift, OpenCV units (180 = a full turn)
    saturation: float = 0.25  # relative
    value: float = 0.2  # relative brightness
    contrast: float = 0.2  # relative, about the mean
    rgb_shift: float = 20.0  # per channel, in 0..255
    sharpen_or_blur: float = 0.6  # probability of one of them (then 50/50)
    downscale: tuple[float, float] = (0.4, 1.0)  # source resampled at this size and back; 1 = none
    downscale_p: float = 0.5
    translate: float = 0.03
    scale: float = 0.05
    elastic_alpha: float = 0.05  # displacement amplitude of the mask warp
    elastic_sigma: float = 0.08  # its smoothness (Gaussian sigma)
    morph: float = 0.06  # largest erosion / dilation of the mask
    blur: tuple[float, float] = (0.02, 0.08)  # Gaussian sigma of the mask's edge
    blend_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
    shapes: tuple[MaskShape, ...] = MASK_SHAPES


@dataclass(frozen=True)
class SelfBlend:
    """One pseudo-fake: the blended frame, the blend weight of the source per pixel, the face
    hull it was made from and the parameters drawn."""

    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    mask: np.ndarray = field(repr=False)  # (H, W) float32 in [0, 1]
    hull: np.ndarray = field(repr=False)  # (H, W) bool, the landmarks' convex hull
    params: dict[str, object] = field(default_factory=dict)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def face_size(landmarks: np.ndarray) -> float:
    """Geometric mean of the landmark box's width and height, in pixels."""
    w, h = np.ptp(landmarks[:, 0]), np.ptp(landmarks[:, 1])
    return float(np.sqrt(max(w, 1.0) * max(h, 1.0)))


def hull_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """(H, W) bool: the convex hull of ``points`` (N, 2) x, y pixels, filled."""
    out = np.zeros(shape, dtype=np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(out, hull, 1)
    return out.astype(bool)


def shape_points(landmarks: np.ndarray, shape: MaskShape) -> np.ndarray:
    """The landmarks whose hull is the mask: the whole face, the face below the brows' upper
    edge (a swap that keeps the forehead), or the inner face (eyes, nose, mouth)."""
    if shape == "face":
        return landmarks
    if shape == "below_brows":
        brow_y = float(landmarks[list(BROW_POINTS), 1].min())
        return landmarks[landmarks[:, 1] >= brow_y]
    centre = landmarks.mean(axis=0)
    d = np.linalg.norm(landmarks - centre, axis=1)
    return landmarks[d <= np.quantile(d, 0.7)]


def _odd(x: float) -> int:
    return max(1, int(round(x)) // 2 * 2 + 1)


def _elastic(mask: np.ndarray, rng: np.random.Generator, alpha: float, sigma: float) -> np.ndarray:
    """Warp ``mask`` (float32) by a smooth random displacement field (alpha, sigma in pixels)."""
    h, w = mask.shape
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    # the blurred noise is small: rescale so the largest displacement is alpha
    peak = max(float(np.abs(dx).max()), float(np.abs(dy).max()), 1e-6)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, xs + dx * (alpha / peak), ys + dy * (alpha / peak), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def blend_mask(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator, cfg: SBIConfig,
               params: dict[str, object]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a varied, deformed, blurred face mask times a blend ratio."""
    size = face_size(landmarks)
    kind = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
    mask: np.ndarray = hull_mask(shape, shape_points(landmarks, kind)).astype(np.float32)
    mask = _elastic(mask, rng, cfg.elastic_alpha * size, cfg.elastic_sigma * size)
    mask = (mask > 0.5).astype(np.float32)
    morph = int(round(rng.uniform(-cfg.morph, cfg.morph) * size))
    if morph:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(morph) + 1, 2 * abs(morph) + 1))
        mask = (cv2.dilate if morph > 0 else cv2.erode)(mask, kernel)
    # a square kernel of half-side 3 sigma: the mask reaches up to 3 sqrt(2) sigma past its edge
    sigma = float(rng.uniform(*cfg.blur)) * size
    mask = cv2.GaussianBlur(mask, (_odd(6 * sigma), _odd(6 * sigma)), sigma)
    ratio = float(cfg.blend_ratios[int(rng.integers(len(cfg.blend_ratios)))])
    params.update(shape=kind, morph_px=morph, blur_sigma_px=round(sigma, 2), blend_ratio=ratio)
    return np.clip(mask * ratio, 0.0, 1.0).astype(np.float32)


def _colour(image: np.ndarray, rng: np.random.Generator, cfg: SBIConfig, params: dict[str, object]) -> np.ndarray:
    """Hue, saturation, value, contrast and per-channel shifts: the colour mismatch of a swap."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    dh, ds, dv = rng.uniform(-cfg.hue, cfg.hue), rng.uniform(-cfg.saturation, cfg.saturation), \
        rng.uniform(-cfg.value, cfg.value)
    hsv[..., 0] = (hsv[..., 0] + dh) % 180
    hsv[..., 1] *= 1 + ds
    hsv[..., 2] *= 1 + dv
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    c = rng.uniform(-cfg.contrast, cfg.contrast)
    shift = rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, 3)
    out = (out - out.mean()) * (1 + c) + out.mean() + shift
    params.update(hue=round(float(dh), 2), saturation=round(float(ds), 3), value=round(float(dv), 3),
                  contrast=round(float(c), 3), rgb_shift=[round(float(x), 1) for x in shift])
    return out


def _texture(image: np.ndarray, rng: np.random.Generator, cfg: SBIConfig, size: float,
             params: dict[str, object]) -> np.ndarray:
    """Sharpen or blur, then possibly a resolution drop: the sharpness mismatch of a swap."""
    out = image
    if rng.random() < cfg.sharpen_or_blur:
        sigma = float(rng.uniform(0.005, 0.02)) * size
        soft = cv2.GaussianBlur(out, (0, 0), max(sigma, 0.5))
        if rng.random() < 0.5:
            out, what = soft, "blur"
        else:
            out, what = out + (out - soft) * float(rng.uniform(0.5, 1.5)), "sharpen"
        params["texture"] = what
    if rng.random() < cfg.downscale_p:
        f = float(rng.uniform(*cfg.downscale))
        h, w = out.shape[:2]
        small = cv2.resize(out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        params["downscale"] = round(f, 3)
    return out


def _shift(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, cfg: SBIConfig,
           params: dict[str, object]) -> np.ndarray:
    """A small translation and scale about the face centre: the misalignment of a swap."""
    size = face_size(landmarks)
    cx, cy = landmarks.mean(axis=0)
    s = 1 + float(rng.uniform(-cfg.scale, cfg.scale))
    tx, ty = (rng.uniform(-cfg.translate, cfg.translate, 2) * size).tolist()
    m = np.array([[s, 0, (1 - s) * cx + tx], [0, s, (1 - s) * cy + ty]], dtype=np.float32)
    h, w = image.shape[:2]
    params.update(scale=round(s, 4), translate_px=[round(tx, 2), round(ty, 2)])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def self_blend(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
               cfg: SBIConfig | None = None) -> SelfBlend:
    """A pseudo-fake of ``image`` (H, W, 3 uint8 RGB) whose face has ``landmarks`` (N, 2) pixels."""
    cfg = cfg or SBIConfig()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"self_blend needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if landmarks.ndim != 2 or landmarks.shape[1] != 2 or len(landmarks) < 3:
        raise ValueError(f"self_blend needs (N, 2) landmarks with N >= 3, got {landmarks.shape}")
    params: dict[str, object] = {}
    size = face_size(landmarks)
    source = _shift(image, landmarks, rng, cfg, params)
    source = _texture(_colour(source, rng, cfg, params), rng, cfg, size, params)
    mask = blend_mask(image.shape[:2], landmarks, rng, cfg, params)
    target = image.astype(np.float32)
    out = target + mask[..., None] * (np.clip(source, 0, 255) - target)
    return SelfBlend(np.clip(np.rint(out), 0, 255).astype(np.uint8), mask,
                     hull_mask(image.shape[:2], landmarks), params)
