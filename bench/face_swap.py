"""A landmark face swap for the dev evaluation's "swap" family (bench/make_attacks.py): another
person's face (the donor's frames, cycled) warped onto every frame of the target video,
triangle by triangle along MediaPipe's landmarks so that it follows the target's head pose and
mouth, colour-matched to the target's face in Lab, and pasted with Poisson blending
(``cv2.seamlessClone``). The target's audio is kept.

Deliberately another method than the self-blended pseudo-fakes the appearance embedding is
trained on (monitor/training/sbi.py: the same face, alpha-blended through a blurred mask): a
different person's pixels, a gradient-domain blend, no colour or sharpness jitter. An attack
the embedding saw in training would measure nothing.

Frames are decoded at most 640 pixels a side (the feature extractor's size), so a swap of a
larger video is smaller than its source; frames without a face (target or donor) are copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.media.reader import MediaReader, VideoFrame

# MediaPipe face-mesh face oval, in order around the face
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
POINTS = sorted(set(FACE_OVAL) | set(range(0, 468, 3)))  # the warp's vertices: the outline and a third of the mesh


def _faces(path: Path, face_model: Path, max_side: int) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], float]:
    """Every decoded frame with its primary face's landmarks (None without a face), and the fps."""
    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate or Fraction(25)
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    with MediaReader(str(path), require_video=True, require_audio=False) as reader, \
            ExpressionExtractor(face_model) as extractor:
        for item in reader.read(max_side=max_side):
            if isinstance(item, VideoFrame):
                seen = extractor.observe(item.image, item.time)
                out.append((item.image, None if seen is None else seen.landmarks.astype(np.float32)))
    return out, float(rate)


def _triangles(points: np.ndarray) -> np.ndarray:
    """(T, 3) vertex indices of a Delaunay triangulation of ``points`` (N, 2)."""
    lo, hi = points.min(axis=0) - 10, points.max(axis=0) + 10
    sub = cv2.Subdiv2D((int(lo[0]), int(lo[1]), int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1))
    for p in points:
        sub.insert((float(p[0]), float(p[1])))
    index = {(round(float(p[0]), 2), round(float(p[1]), 2)): i for i, p in enumerate(points)}
    tris = []
    for t in np.asarray(sub.getTriangleList()).reshape(-1, 3, 2):
        ids = [index.get((round(float(x), 2), round(float(y), 2))) for x, y in t]
        if None not in ids:
            tris.append(ids)
    return np.array(tris, dtype=np.int64)


def _warp(donor: np.ndarray, src: np.ndarray, dst: np.ndarray, tris: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The donor image warped triangle by triangle from ``src`` to ``dst`` points, on a canvas of ``shape``."""
    canvas = np.zeros((*shape, 3), dtype=np.float32)
    h, w = shape
    for t in tris:
        s, d = src[t].astype(np.float32), dst[t].astype(np.float32)
        x, y, bw, bh = cv2.boundingRect(d)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + bw, w), min(y + bh, h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = cv2.getAffineTransform(s, d - np.array([x0, y0], dtype=np.float32))
        patch = cv2.warpAffine(donor, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        cv2.fillConvexPoly(mask, np.round(d - [x0, y0]).astype(np.int32), 1)
        region = canvas[y0:y1, x0:x1]
        region[mask > 0] = patch[mask > 0]
    return canvas


def swap_frame(target: np.ndarray, t_marks: np.ndarray, donor: np.ndarray, d_marks: np.ndarray,
               tris: np.ndarray) -> np.ndarray:
    """The target frame with the donor's face in place of its own."""
    h, w = target.shape[:2]
    src, dst = d_marks[POINTS], t_marks[POINTS]
    warped = np.clip(_warp(donor, src, dst, tris, (h, w)), 0, 255).astype(np.uint8)
    hull = cv2.convexHull(np.round(t_marks[FACE_OVAL]).astype(np.int32))
    mask: np.ndarray = np.zeros((h, w), dtype=np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    size = float(np.sqrt(np.ptp(t_marks[:, 0]) * np.ptp(t_marks[:, 1])))
    k = max(3, int(0.06 * size) // 2 * 2 + 1)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    inside = mask > 0
    if inside.sum() < 100:
        return target
    # colour: the donor's face moved to the target face's mean and spread in Lab
    lab_w = cv2.cvtColor(warped, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab_t = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    mu_w, sd_w = lab_w[inside].mean(0), lab_w[inside].std(0) + 1e-3
    mu_t, sd_t = lab_t[inside].mean(0), lab_t[inside].std(0)
    lab_w = (lab_w - mu_w) / sd_w * sd_t + mu_t
    warped = cv2.cvtColor(np.clip(lab_w, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    x, y, bw, bh = cv2.boundingRect(mask)
    centre = (x + bw // 2, y + bh // 2)
    return cv2.seamlessClone(warped, target, mask, centre, cv2.NORMAL_CLONE)


def write_h264(out: Path, images: Iterable[np.ndarray], fps: float, shape: tuple[int, int]) -> None:
    """RGB frames of ``shape`` (h, w) to ``out``: H.264 crf 18, no audio (cropped to even sides)."""
    h, w = shape
    with av.open(str(out), "w") as c:
        stream = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w - w % 2, h - h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: stream.height, : stream.width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


def swap_video(target: Path, donor: Path, out: Path, face_model: Path, max_side: int = 640) -> int:
    """Write ``out`` (H.264 crf 18, no audio): the target video with the donor's face. Returns the
    number of frames swapped."""
    frames, fps = _faces(target, face_model, max_side)
    donors = [(im, lm) for im, lm in _faces(donor, face_model, max_side)[0] if lm is not None]
    if not donors:
        raise SystemExit(f"no face in the donor video {donor}")
    first = next((lm for _, lm in frames if lm is not None), None)
    if first is None:
        raise SystemExit(f"no face in the target video {target}")
    tris = _triangles(first[POINTS])
    swapped = 0

    def images() -> Iterator[np.ndarray]:
        nonlocal swapped
        for k, (image, marks) in enumerate(frames):
            if marks is not None:
                d_img, d_marks = donors[k % len(donors)]
                image = swap_frame(image, marks, d_img, d_marks, tris)
                swapped += 1
            yield image

    write_h264(out, images(), fps, frames[0][0].shape[:2])
    return swapped
