"""A landmark reenactment for the dev evaluation's "reenact" family (bench/make_attacks.py): the
target keeps its own face, background and audio, but its face moves like another person's (the
driver's).

Method, per output frame ``k`` of the target's clip:
  1. one fixed source frame of the target: the most frontal, most closed-mouth frame of its first
     3 s (its landmarks ``S``);
  2. the driver's expression at the same time: the driver's landmarks at that frame, aligned onto
     the driver's own neutral frame (chosen as in 1) by a least-squares similarity on rigid
     points (eye corners, nose bridge, forehead, temples), minus that neutral: a per-landmark
     displacement with the driver's head motion taken out, averaged over 3 driver frames;
  3. that displacement carried onto the target (the linear part of the similarity from the
     driver's neutral to ``S``: inter-ocular scale and in-plane rotation) and added to ``S``,
     then moved to the target's own head position in frame ``k`` (the similarity from ``S`` to
     frame ``k``'s rigid points; in-plane only, a yaw of the target is not followed);
  4. the source frame warped triangle by triangle from ``S`` to those points (Delaunay over the
     mesh outline, a third of the mesh, the eyes and the lips; bench/face_swap.py's helpers), the
     triangles between the inner lips left out so that an opening mouth shows a dark interior
     instead of stretched lips, the colour's mean moved to frame ``k``'s face in Lab, and pasted
     with a feathered mask: the face outline eroded by 5 % of the face size and blurred by a
     third of that, so nothing outside the outline changes.
Frames without a target face are copied; a driver frame without a face repeats the last one seen.

Deliberately another method than the two others the evaluation and the training use:
  - monitor/training/sbi.py (the appearance embedding's pseudo-fakes) alpha-blends a colour-,
    sharpness- and shape-jittered copy of the *same* frame onto itself through a blurred,
    elastically deformed mask: no motion changes, the blend boundary is the artefact;
  - bench/face_swap.py puts *another person's* face onto the target (Poisson blend,
    ``cv2.seamlessClone``): the identity changes, the motion is the target's own.
Here the identity, the face's pixels and the voice are the target's; only the motion is someone
else's, and the paste is a plain feathered alpha (no gradient-domain blend, no jitter). It is the
hard case: only the motion (and the blend/warp artefacts) is wrong.

Frames are decoded at most 640 pixels a side (the feature extractor's size), as face_swap does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from face_swap import FACE_OVAL, POINTS, _faces, _triangles, _warp, write_h264  # noqa: E402

Frame = tuple[np.ndarray, "np.ndarray | None"]  # (H, W, 3) uint8 RGB, (478, 2) landmarks or None

# MediaPipe face-mesh contours, in order around each
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78]
LIPS_INNER = LIPS_INNER_UPPER + LIPS_INNER_LOWER[1:-1]
LIPS_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
EYES = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
        263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
# points that move with the skull, not with the expression: what the head-motion similarity is fitted on
RIGID = [33, 133, 362, 263, 6, 168, 197, 195, 10, 151, 9, 8, 127, 356, 234, 454, 162, 389, 21, 251, 54, 284]
MESH = sorted(set(POINTS) | set(LIPS_INNER) | set(LIPS_OUTER) | set(EYES))  # the warp's vertices
NEUTRAL_WINDOW_S = 3.0
SMOOTH = 3  # driver frames averaged (centred) per displacement


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) taking ``src`` (N, 2) onto ``dst`` (N, 2): (A (2, 2), b (2,))
    with ``dst ~ src @ A.T + b``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip)) / float((s**2).sum() / len(src))
    a = scale * rot
    return a, mu_d - mu_s @ a.T


def mouth_opening(marks: np.ndarray) -> float:
    """Inner-lip gap over the inter-ocular distance (0 closed, about 0.4 wide open)."""
    return float(np.linalg.norm(marks[13] - marks[14]) / np.linalg.norm(marks[33] - marks[263]))


def neutral_index(frames: Sequence[Frame], fps: float, window_s: float = NEUTRAL_WINDOW_S) -> int:
    """The frame of the first ``window_s`` seconds with a face that is most frontal (nose tip
    halfway between the face's sides) and has the most closed mouth; the whole clip if none."""
    def cost(m: np.ndarray) -> float:
        left, right = np.linalg.norm(m[1] - m[234]), np.linalg.norm(m[1] - m[454])
        return float(abs(left - right) / (left + right)) + mouth_opening(m)

    for limit in (int(window_s * fps) + 1, len(frames)):
        seen = [(cost(m), k) for k, (_, m) in enumerate(frames[:limit]) if m is not None]
        if seen:
            return min(seen)[1]
    raise ValueError("no face in any frame")


def driver_offsets(marks: Sequence[np.ndarray | None], neutral: np.ndarray) -> np.ndarray:
    """(F, 478, 2): each driver frame's landmarks with its head motion taken out (aligned onto
    ``neutral`` on RIGID points) minus ``neutral``; a frame without a face repeats the previous
    one (zero before the first); then a centred mean over SMOOTH frames."""
    out = np.zeros((len(marks), *neutral.shape), dtype=np.float32)
    last = np.zeros_like(neutral)
    for k, m in enumerate(marks):
        if m is not None:
            a, b = similarity(m[RIGID], neutral[RIGID])
            last = (m @ a.T + b - neutral).astype(np.float32)
        out[k] = last
    kernel = np.ones(SMOOTH, dtype=np.float32) / SMOOTH
    padded = np.concatenate([out[:1].repeat(SMOOTH // 2, 0), out, out[-1:].repeat(SMOOTH // 2, 0)])
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), 0, padded).astype(np.float32)


def drive_points(source: np.ndarray, target: np.ndarray, driver_neutral: np.ndarray,
                 offset: np.ndarray) -> np.ndarray:
    """(478, 2): the source frame's landmarks moved by the driver's ``offset`` (scaled and turned
    from the driver's neutral face to the source's), placed where the target frame's head is."""
    a, _ = similarity(driver_neutral[RIGID], source[RIGID])
    expressed = source + offset @ a.T
    a, b = similarity(source[RIGID], target[RIGID])
    return (expressed @ a.T + b).astype(np.float32)


def face_triangles(source: np.ndarray) -> np.ndarray:
    """(T, 3) indices into MESH: a Delaunay triangulation of the source's MESH points without the
    triangles that span the gap between the upper and the lower inner lip."""
    upper, lower = set(LIPS_INNER_UPPER[1:-1]), set(LIPS_INNER_LOWER[1:-1])
    inner = set(LIPS_INNER)
    keep = []
    for tri in _triangles(source[MESH]):
        ids = {MESH[i] for i in tri}
        if ids <= inner and (ids & upper or ids >= {78, 308}) and (ids & lower or ids >= {78, 308}):
            continue  # the mouth's inside
        keep.append(tri)
    return np.array(keep, dtype=np.int64)


def paste_alpha(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the face outline of ``points`` eroded by 5 % of the face size and
    blurred by a third of that; zero outside the outline."""
    mask: np.ndarray = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points[FACE_OVAL]).astype(np.int32)), 255)
    size = float(np.sqrt(np.ptp(points[:, 0]) * np.ptp(points[:, 1])))
    r = max(2, int(0.05 * size))
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    sigma = r / 3
    k = 2 * int(np.ceil(3 * sigma)) + 1  # reach 3 sigma <= r: the blur stays inside the outline
    return cv2.GaussianBlur(mask.astype(np.float32) / 255, (k, k), sigma)


def reenact_frame(target: np.ndarray, source: np.ndarray, source_marks: np.ndarray, points: np.ndarray,
                  tris: np.ndarray) -> np.ndarray:
    """``target`` with the source face warped onto ``points`` (drive_points) and pasted."""
    h, w = target.shape[:2]
    canvas = _warp(source, source_marks[MESH], points[MESH], tris, (h, w))
    alpha = paste_alpha(points, (h, w))
    inside = alpha > 0.5
    if inside.sum() < 100:
        return target
    # the mouth's inside: what the left-out triangles do not cover within the inner lips
    lips = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(lips, [np.round(points[LIPS_INNER]).astype(np.int32)], 1)
    hole = (lips > 0) & (canvas.sum(axis=2) == 0)
    if hole.any():
        outer = np.zeros((h, w), dtype=np.uint8)
        cv2.fillPoly(outer, [np.round(points[LIPS_OUTER]).astype(np.int32)], 1)
        lip_colour = canvas[(outer > 0) & ~hole].mean(0) if ((outer > 0) & ~hole).any() else np.full(3, 120.0)
        canvas[hole] = 0.3 * lip_colour
    warped = np.clip(canvas, 0, 255).astype(np.uint8)
    # colour: the warped face's Lab mean moved to this frame's face (lighting drift over the clip)
    lab_w = cv2.cvtColor(warped, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_t = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_w += lab_t[inside].mean(0) - lab_w[inside].mean(0)
    warped = cv2.cvtColor(np.clip(lab_w, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB).astype(np.float32)
    a = alpha[..., None]
    out = target.astype(np.float32) * (1 - a) + warped * a
    result = np.clip(np.round(out), 0, 255).astype(np.uint8)
    result[alpha == 0] = target[alpha == 0]  # bit-exact outside the mask
    return result


def reenact_frames(frames: Sequence[Frame], fps: float, driver: Sequence[Frame],
                   driver_fps: float) -> Iterator[np.ndarray]:
    """The target ``frames`` (image, landmarks or None) with the face following the ``driver``'s
    motion: the driver frame at the same time, the driver clip looped when shorter."""
    src_k = neutral_index(frames, fps)
    source, source_marks = frames[src_k][0], frames[src_k][1]
    assert source_marks is not None
    d_marks = [m for _, m in driver]
    neutral = d_marks[neutral_index(driver, driver_fps)]
    assert neutral is not None
    offsets = driver_offsets(d_marks, neutral)
    tris = face_triangles(source_marks)
    for k, (image, marks) in enumerate(frames):
        if marks is None:
            yield image
            continue
        j = int(k / fps * driver_fps) % len(driver)
        yield reenact_frame(image, source, source_marks, drive_points(source_marks, marks, neutral, offsets[j]), tris)


def reenact_video(target: Path, driver: Path, out: Path, face_model: Path, max_side: int = 640) -> int:
    """Write ``out`` (H.264 crf 18, no audio): the target video with its face following the
    driver's motion. Returns the number of frames reenacted."""
    frames, fps = _faces(target, face_model, max_side)
    if all(m is None for _, m in frames):
        raise SystemExit(f"no face in the target video {target}")
    drv, drv_fps = _faces(driver, face_model, max_side)
    if all(m is None for _, m in drv):
        raise SystemExit(f"no face in the driver video {driver}")
    drv = [(np.zeros((1, 1, 3), np.uint8), m) for _, m in drv]  # only the landmarks are used
    write_h264(out, reenact_frames(frames, fps, drv, drv_fps), fps, frames[0][0].shape[:2])
    return sum(m is not None for _, m in frames)
