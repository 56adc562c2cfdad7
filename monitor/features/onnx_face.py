"""MediaPipe's face landmarker networks on onnxruntime, batched across streams.

The face_landmarker.task bundle holds three TFLite networks and the face-geometry metadata:

========================== ============================== ====================================
network                    input                          outputs
========================== ============================== ====================================
face_detector              (N, 128, 128, 3) RGB in [-1,1]  regressors (N, 896, 16): SSD box +
                                                          6 keypoints per anchor;
                                                          classificators (N, 896, 1) logits
face_landmarks_detector    (N, 256, 256, 3) RGB in [0, 1]  Identity (N, 1, 1, 1434): 478 x, y, z
                           (the rotated face crop)         in crop pixels; Identity_1 (N, 1, 1, 1)
                                                          face-presence logit; Identity_2 (N, 1)
                                                          a second sigmoid head, ~0 on corpus
                                                          faces, not used here
face_blendshapes           (N, 146, 2) x, y in image       (N, 52) blendshape scores (sigmoid)
                           pixels of 146 landmarks
geometry_pipeline_...pb    canonical face mesh (468        the facial transformation matrix
                           vertices) + 33 Procrustes       (pose), solved here in numpy
                           weights
========================== ============================== ====================================

``face_model_files`` converts the networks (``tflite_onnx``) once per bundle, cached under
``<cache_dir>/models/face-onnx/<bundle sha256[:16]>-c<converter revision>/``.
``BatchedFaceModel`` runs each stage once per call over all streams' frames: the detector
(128x128 letterbox, SSD anchors, weighted NMS), the crop of each face (the detection's box,
or the previous frame's landmarks' box, rotated by the eye line, squared on its long side,
x1.5; an affine warp to 256x256), the landmark network on all crops, the primary face of
each stream (ExpressionExtractor's rule), the blendshape network on the primary faces, and
the pose from their landmarks by MediaPipe's geometry pipeline (perspective camera,
weighted Procrustes onto the canonical face). Two crop modes:

- "detect": the detector on every frame, as MediaPipe's VIDEO mode does while it tracks
  fewer faces than num_faces (3 in the product: its detector's rects take priority over
  the tracked ones); it reproduces MediaPipe.
- "track": the previous frame's landmarks as the crop, the detector only for a stream
  without a face or whose face presence drops under the threshold (tracking lost).

Measured (bench/face_parity.py, 3 real clips, 150-250 frames each): the converted networks
match LiteRT's within 2e-5 of each output's range; given MediaPipe's own landmarks, the
blendshapes and the transformation matrix are MediaPipe's (1e-6). Against the product's
MediaPipe (ExpressionExtractor, num_faces 3), crop "detect": blendshape MAE 0.0003-0.0004,
landmarks 0.016-0.019 % of the inter-ocular distance, yaw / pitch / roll under 0.02 degree on
average; crop "track": blendshape MAE 0.014-0.020, landmarks 0.7-1.5 %, yaw / pitch / roll
0.2-0.7 degree on average, as far as MediaPipe with num_faces=1 is from itself with 3
(0.018-0.022, 1.1-1.7 %).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import AssetError
from expose.monitor.features.expressions import (
    ExpressionExtractor,
    FaceObservation,
    pose_from_matrix,
)

log = logging.getLogger(__name__)

NETWORKS = ("face_detector", "face_landmarks_detector", "face_blendshapes")
GEOMETRY_FILE = "geometry_pipeline_metadata_landmarks.binarypb"
CONVERTER_REVISION = 2  # bump when tflite_onnx changes what it writes
CROP = 256
ROI_SCALE = 1.5
EYE_CORNERS = (33, 263)  # rotation vector of the crop (MediaPipe's face landmarker graph)
# kLandmarksSubsetIdxs of MediaPipe's face_blendshapes_graph.cc: the blendshape network's input
BLENDSHAPE_LANDMARKS = np.array([
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136,
    144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168,
    172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276,
    282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318,
    321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380,
    381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466,
    468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
])
# the perspective camera of MediaPipe's face geometry (face landmarker graph's environment)
FOV_Y_DEG, NEAR = 63.0, 1.0


def available() -> bool:
    """Whether the converter's packages and onnxruntime are installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    from expose.monitor.features import tflite_onnx

    return tflite_onnx.available()


def _bundle_digest(task: Path) -> str:
    h = hashlib.sha256()
    with open(task, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def face_model_files(task: Path, cache_dir: Path) -> dict[str, Path]:
    """The bundle's networks as ONNX files (converted on first use, cached by the bundle's
    sha256) and its geometry metadata; keys: NETWORKS and "geometry"."""
    task = Path(task)
    out_dir = Path(cache_dir) / "models" / "face-onnx" / f"{_bundle_digest(task)[:16]}-c{CONVERTER_REVISION}"
    paths = {name: out_dir / f"{name}.onnx" for name in NETWORKS}
    paths["geometry"] = out_dir / GEOMETRY_FILE
    if all(p.is_file() for p in paths.values()):
        return paths
    try:
        with zipfile.ZipFile(task) as z:
            members = {name: z.read(f"{name}.tflite") for name in NETWORKS}
            geometry = z.read(GEOMETRY_FILE)
    except (OSError, KeyError, zipfile.BadZipFile) as err:
        raise AssetError(f"cannot read the face model bundle {task}: {err}") from None
    from expose.monitor.features import tflite_onnx  # onnx and tflite: only to convert

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, buf in members.items():
        _write_atomic(paths[name], tflite_onnx.convert_tflite(buf).SerializeToString())
    _write_atomic(paths["geometry"], geometry)
    log.info("converted the face model's networks to ONNX in %s", out_dir)
    return paths


def _write_atomic(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)


# -- face geometry (MediaPipe's geometry pipeline, in numpy) ---------------------------------


def _pb_fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Top-level (field, wire type, value) of a protobuf message."""
    def varint(i: int) -> tuple[int, int]:
        r = s = 0
        while True:
            c = buf[i]
            i += 1
            r |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return r, i
    out: list[tuple[int, int, Any]] = []
    i = 0
    value: Any
    while i < len(buf):
        key, i = varint(i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


class FaceGeometry:
    """Landmarks -> MediaPipe's facial transformation matrix (canonical face -> camera space).

    Reads GeometryPipelineMetadata: canonical_mesh (1; its vertex_buffer (3) holds x, y, z,
    u, v per vertex) and procrustes_landmark_basis (2; landmark_id (1), weight (2)).
    """

    def __init__(self, metadata: bytes) -> None:
        fields = _pb_fields(metadata)
        mesh = next(v for f, _, v in fields if f == 1)
        floats: list[float] = []
        for f, wire, v in _pb_fields(mesh):
            if f == 3:
                floats.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
        verts = np.array(floats, dtype=np.float64).reshape(-1, 5)[:, :3]
        weights = np.zeros(len(verts))
        for f, _, v in fields:
            if f == 2:
                ref = dict((ff, vv) for ff, _, vv in _pb_fields(v))
                weights[int(ref.get(1, 0))] = struct.unpack("<f", ref[2])[0]
        self.canonical = verts.T  # (3, 468)
        self.sqrt_w = np.sqrt(weights)
        self.n = verts.shape[0]

    def _solve(self, target: np.ndarray) -> np.ndarray:
        """Weighted orthogonal Procrustes with scale (MediaPipe's procrustes_solver)."""
        sw = self.sqrt_w
        ws = self.canonical * sw
        wt = target * sw
        total = float((sw * sw).sum())
        centre = (ws * sw).sum(axis=1, keepdims=True) / total
        cws = ws - centre * sw
        u, _, vt = np.linalg.svd(wt @ cws.T)
        if np.linalg.det(u) * np.linalg.det(vt) < 0:
            u[:, 2] *= -1
        rot = u @ vt
        scale = float(((rot @ cws) * wt).sum() / (cws * ws).sum())
        rs = scale * rot
        trans = ((wt - rs @ ws) * sw).sum(axis=1) / total
        m = np.eye(4)
        m[:3, :3] = rs
        m[:3, 3] = trans
        return m

    def matrix(self, landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
        """(>=468, 3) normalised landmarks (x, y in [0, 1], z as MediaPipe's) -> (4, 4)."""
        h_near = 2.0 * NEAR * np.tan(0.5 * np.deg2rad(FOV_Y_DEG))
        w_near = width * h_near / height
        left, bottom = -0.5 * w_near, -0.5 * h_near
        s = np.asarray(landmarks[: self.n], dtype=np.float64).T.copy()  # (3, 468)
        s[1] = 1.0 - s[1]
        s *= np.array([[w_near], [h_near], [w_near]])
        s += np.array([[left], [bottom], [0.0]])
        depth_offset = s[2].mean()

        def rescale(pts: np.ndarray, scale: float) -> np.ndarray:
            p = pts.copy()
            p[2] = (p[2] - depth_offset + NEAR) / scale
            p[0] = p[0] * p[2] / NEAR
            p[1] = p[1] * p[2] / NEAR
            p[2] *= -1
            return p

        first = s.copy()
        first[2] *= -1
        scale1 = float(np.linalg.norm(self._solve(first)[:3, 0]))
        scale2 = float(np.linalg.norm(self._solve(rescale(s, scale1))[:3, 0]))
        return self._solve(rescale(s, scale1 * scale2))


# -- the batched model -------------------------------------------------------------------------


@dataclass
class _Track:
    landmarks: np.ndarray | None = None  # (478, 3) normalised, of the previous frame
    last_centre: np.ndarray | None = None


def _session(path: Path, providers: Sequence[str] | None, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc: ~2x on CPU
    opts.intra_op_num_threads = threads or 1
    opts.inter_op_num_threads = 1
    if (threads or 1) > 1:  # spinning workers fight the stream threads on a loaded machine
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    avail = ort.get_available_providers()
    chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in avail]
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen or ["CPUExecutionProvider"])


Roi = tuple[float, float, float, float, float]  # centre x, y, width, height (image pixels), rotation (radians)


def roi_from_landmarks(lm: np.ndarray, width: int, height: int) -> Roi:
    """(478, >=2) normalised landmarks -> the next crop (MediaPipe: the landmarks' box, the
    eye-line rotation, squared on its long side, x1.5)."""
    x, y = lm[:, 0] * width, lm[:, 1] * height
    cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    side = max(x.max() - x.min(), y.max() - y.min()) * ROI_SCALE
    a, b = EYE_CORNERS
    rot = -np.arctan2(-(y[b] - y[a]), x[b] - x[a])
    rot = (rot + np.pi) % (2 * np.pi) - np.pi
    return float(cx), float(cy), float(side), float(side), float(rot)


def _crop_matrix(roi: Roi) -> np.ndarray:
    """2x3 affine from crop pixels to image pixels."""
    cx, cy, width, height, rot = roi
    c, s = np.cos(rot), np.sin(rot)
    a = np.array([[c, -s], [s, c]]) @ np.diag([width / CROP, height / CROP])
    t = np.array([cx, cy]) - a @ np.array([CROP / 2, CROP / 2])
    return np.hstack([a, t[:, None]])


def _ssd_anchors() -> np.ndarray:
    """(896, 2) anchor centres of the short-range face detector (MediaPipe's SsdAnchors: 4
    layers, strides 8, 16, 16, 16, 2 anchors per layer and cell, fixed size 1)."""
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):  # stride 8; the three stride-16 layers merged
        for y in range(grid):
            for x in range(grid):
                out += [((x + 0.5) / grid, (y + 0.5) / grid)] * per_cell
    return np.array(out, dtype=np.float32)


_ANCHORS = _ssd_anchors()
DETECTOR_SIZE = 128
NMS_IOU = 0.3


def decode_detections(regressors: np.ndarray, logits: np.ndarray, min_score: float,
                      to_image: np.ndarray) -> list[tuple[float, Roi]]:
    """One image's detector outputs -> [(score, crop)] after MediaPipe's weighted NMS; the crop is
    the box x1.5 (not squared: MediaPipe squares only the landmarks' box) turned by the eye
    line (keypoints 0 and 1).
    ``to_image``: the 2x3 affine from detector-input pixels to image pixels (the letterbox)."""
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1).astype(np.float64), -100.0, 100.0)))
    idx = np.flatnonzero(scores >= min_score)
    if idx.size == 0:
        return []
    r = regressors[idx] / DETECTOR_SIZE
    a = _ANCHORS[idx]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    boxes = np.stack([cx - r[:, 2] / 2, cy - r[:, 3] / 2, cx + r[:, 2] / 2, cy + r[:, 3] / 2], axis=1)
    kps = r[:, 4:].reshape(-1, 6, 2) + a[:, None, :]
    sc = scores[idx]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    remaining = np.argsort(-sc)
    out: list[tuple[float, Roi]] = []
    while remaining.size:
        top = remaining[0]
        lo = np.maximum(boxes[top, :2], boxes[remaining, :2])
        hi = np.minimum(boxes[top, 2:], boxes[remaining, 2:])
        inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
        iou = inter / (area[top] + area[remaining] - inter + 1e-9)
        group = remaining[iou > NMS_IOU]
        if group.size == 0:
            group = remaining[:1]
        w = sc[group] / sc[group].sum()
        box = (boxes[group] * w[:, None]).sum(axis=0) * DETECTOR_SIZE
        kp = (kps[group] * w[:, None, None]).sum(axis=0) * DETECTOR_SIZE
        corners = np.array([[box[0], box[1]], [box[2], box[3]]]) @ to_image[:, :2].T + to_image[:, 2]
        eyes = kp[:2] @ to_image[:, :2].T + to_image[:, 2]
        (x0, y0), (x1, y1) = corners
        rot = -np.arctan2(-(eyes[1, 1] - eyes[0, 1]), eyes[1, 0] - eyes[0, 0])
        rot = (rot + np.pi) % (2 * np.pi) - np.pi
        out.append((float(sc[top]), ((x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ROI_SCALE, (y1 - y0) * ROI_SCALE,
                                     float(rot))))
        remaining = remaining[~np.isin(remaining, group)]
    return out


def _square_iou(a: Roi, b: Roi) -> float:
    """IoU of two crops as axis-aligned rectangles (how MediaPipe associates face rects)."""
    lo = np.maximum([a[0] - a[2] / 2, a[1] - a[3] / 2], [b[0] - b[2] / 2, b[1] - b[3] / 2])
    hi = np.minimum([a[0] + a[2] / 2, a[1] + a[3] / 2], [b[0] + b[2] / 2, b[1] + b[3] / 2])
    inter = float(np.prod(np.clip(hi - lo, 0.0, None)))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


@dataclass
class _Face:
    item: int
    presence: float
    landmarks: np.ndarray  # (478, 3) normalised x, y, z
    pixels: np.ndarray  # (478, 2) float32


class BatchedFaceModel:
    """The primary face of many streams per call; one network batch per stage.

    ``observe([(stream, image, time_s), ...])`` -> a FaceObservation (or None) per item, like
    ``ExpressionExtractor.observe`` for each stream. Each stream keeps its own tracking state
    (``reset(stream)`` drops it).

    ``crop``: where the landmark network looks.
    - "detect" (default): as MediaPipe's VIDEO mode with num_faces > 1, the product's setting:
      the detector runs on every frame and its faces (up to ``num_faces``) are cropped, plus
      the previous frame's face where no detection overlaps it; the primary face is chosen
      among their landmarks by ExpressionExtractor's rule. Matches MediaPipe to ~1e-3.
    - "track": the previous frame's landmarks only (MediaPipe with num_faces=1, without its
      smoothing); the detector only for a stream without a face or whose face presence drops.
      One crop per stream; ~0.02 blendshape MAE from MediaPipe.

    ``threads``: onnxruntime's intra-op threads, default 1 (streams run in parallel through
    the batch; more threads pay only on an idle machine). ``providers``: onnxruntime's,
    default CUDA when installed, else CPU. The landmark network runs on at most ``chunk``
    crops at a time (4 on the CPU).
    """

    def __init__(self, model_path: Path, cache_dir: Path, num_faces: int = 3, min_confidence: float = 0.5,
                 providers: Sequence[str] | None = None, threads: int | None = None, crop: str = "detect") -> None:
        if crop not in ("detect", "track"):
            raise ValueError(f"crop must be 'detect' or 'track', not {crop!r}")
        files = face_model_files(model_path, cache_dir)
        self._detector = _session(files["face_detector"], providers, threads)
        self._landmarks = _session(files["face_landmarks_detector"], providers, threads)
        self._blendshapes = _session(files["face_blendshapes"], providers, threads)
        self._geometry = FaceGeometry(files["geometry"].read_bytes())
        # the landmark network's batch: on the CPU, 16 crops in one run cost ~40 % more per
        # crop than 4 (its activations leave the cache; bench/face_model_speed.py)
        self.chunk = 4 if self.providers == ["CPUExecutionProvider"] else 64
        self.crop = crop
        self._num_faces = num_faces
        self._min_conf = min_confidence
        self._tracks: dict[Hashable, _Track] = {}
        self.stats = {"frames": 0, "detector": 0, "crops": 0, "faces": 0, "lost": 0}

    def close(self) -> None:
        self._tracks.clear()

    def __enter__(self) -> BatchedFaceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers the landmark network runs on."""
        return list(self._landmarks.get_providers())

    def reset(self, stream: Hashable) -> None:
        self._tracks.pop(stream, None)

    def observe(self, items: Sequence[tuple[Hashable, np.ndarray, float]]) -> list[FaceObservation | None]:
        """One (stream, RGB uint8 image, time_s) per stream at most -> one result per item."""
        if len({s for s, _, _ in items}) != len(items):
            raise ValueError("one frame per stream per call")
        self.stats["frames"] += len(items)
        tracks = [self._tracks.setdefault(s, _Track()) for s, _, _ in items]
        tracked: dict[int, Roi] = {}
        for k, ((_, image, _), tr) in enumerate(zip(items, tracks, strict=True)):
            if tr.landmarks is not None:
                tracked[k] = roi_from_landmarks(tr.landmarks, image.shape[1], image.shape[0])
        if self.crop == "detect":
            found = self._detect(items, list(range(len(items))))
            crops = [(k, roi) for k in found for roi in found[k]]
            for k, roi in tracked.items():  # a tracked face the detector missed this frame
                if all(_square_iou(roi, d) < self._min_conf for d in found[k]):
                    crops.append((k, roi))
            faces = self._landmark_pass(items, crops)
        else:
            faces = self._landmark_pass(items, list(tracked.items()))
            kept = {f.item for f in faces}
            self.stats["lost"] += len(set(tracked) - kept)
            todo = [k for k in range(len(items)) if k not in kept]
            if todo:
                found = self._detect(items, todo)
                faces += self._landmark_pass(items, [(k, roi) for k in todo for roi in found[k]])
        return self._finish(items, tracks, faces)

    def _detect(self, items: Sequence[tuple[Hashable, np.ndarray, float]], which: list[int]) -> dict[int, list[Roi]]:
        """The detector on items ``which`` (one batch) -> their crops, best ``num_faces``."""
        import cv2

        batch = np.empty((len(which), DETECTOR_SIZE, DETECTOR_SIZE, 3), dtype=np.float32)
        back = []
        for j, k in enumerate(which):
            image = items[k][1]
            h, w = image.shape[:2]
            scale = DETECTOR_SIZE / max(h, w)
            fwd = np.array([[scale, 0, (DETECTOR_SIZE - w * scale) / 2], [0, scale, (DETECTOR_SIZE - h * scale) / 2]])
            back.append(cv2.invertAffineTransform(fwd))
            letterbox = cv2.warpAffine(image, fwd, (DETECTOR_SIZE, DETECTOR_SIZE), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            np.multiply(letterbox, np.float32(1 / 127.5), out=batch[j], casting="unsafe")
            batch[j] -= 1.0
        self.stats["detector"] += len(which)
        reg, cls = self._detector.run(None, {self._detector.get_inputs()[0].name: batch})
        out = {}
        for j, k in enumerate(which):
            dets = decode_detections(reg[j], cls[j], self._min_conf, back[j])
            out[k] = [roi for _, roi in sorted(dets, key=lambda d: -d[0])[: self._num_faces]]
        return out

    def _landmark_pass(self, items: Sequence[tuple[Hashable, np.ndarray, float]],
                       crops: list[tuple[int, Roi]]) -> list[_Face]:
        """The landmark network on every (item, crop) -> the faces present, in image space."""
        import cv2

        if not crops:
            return []
        batch = np.empty((len(crops), CROP, CROP, 3), dtype=np.float32)
        mats = []
        for j, (k, roi) in enumerate(crops):
            mat = _crop_matrix(roi)
            mats.append(mat)
            crop = cv2.warpAffine(items[k][1], mat, (CROP, CROP), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
            np.multiply(crop, np.float32(1 / 255), out=batch[j], casting="unsafe")
        self.stats["crops"] += len(crops)
        name = self._landmarks.get_inputs()[0].name
        parts = [self._landmarks.run(["Identity", "Identity_1"], {name: batch[i:i + self.chunk]})
                 for i in range(0, len(crops), self.chunk)]
        raw = np.concatenate([p[0] for p in parts]).reshape(len(crops), -1, 3)
        presence = 1.0 / (1.0 + np.exp(-np.concatenate([p[1] for p in parts]).reshape(-1)))
        faces = []
        for j, (k, _) in enumerate(crops):
            if presence[j] < self._min_conf:
                continue
            h, w = items[k][1].shape[:2]
            mat = mats[j]
            xy = raw[j, :, :2] @ mat[:, :2].T + mat[:, 2]
            # z scales as the crop's x axis in normalised image coordinates (MediaPipe's landmark
            # projection: the norm of its projection matrix's first column, so a rotated crop
            # of a non-square image scales z by more than width / image width)
            _, _, width, _, rot = crops[j][1]
            z = raw[j, :, 2] / CROP * width * float(np.hypot(np.cos(rot) / w, np.sin(rot) / h))
            faces.append(_Face(k, float(presence[j]), np.column_stack([xy[:, 0] / w, xy[:, 1] / h, z]),
                               xy.astype(np.float32)))
        return faces

    def _finish(self, items: Sequence[tuple[Hashable, np.ndarray, float]], tracks: list[_Track],
                faces: list[_Face]) -> list[FaceObservation | None]:
        """The primary face of each item, its blendshapes (one batch) and pose."""
        primary: dict[int, _Face] = {}
        for k, tr in enumerate(tracks):
            mine = [f for f in faces if f.item == k]
            if not mine:
                tr.landmarks = tr.last_centre = None
                continue
            face = mine[_pick_primary(tr, [f.landmarks for f in mine])]
            primary[k] = face
            tr.landmarks = face.landmarks
        out: list[FaceObservation | None] = [None] * len(items)
        if not primary:
            return out
        order = sorted(primary)
        pts = np.stack([primary[k].pixels[BLENDSHAPE_LANDMARKS] for k in order]).astype(np.float32)
        scores = self._blendshapes.run(None, {self._blendshapes.get_inputs()[0].name: pts})[0]
        self.stats["faces"] += len(order)
        for j, k in enumerate(order):
            h, w = items[k][1].shape[:2]
            pose = pose_from_matrix(self._geometry.matrix(primary[k].landmarks, w, h))
            expr = np.concatenate([np.clip(scores[j], 0.0, 1.0), pose]).astype(np.float32)
            out[k] = FaceObservation(expr, primary[k].pixels)
        return out


def _pick_primary(track: _Track, faces: list[np.ndarray]) -> int:
    """ExpressionExtractor's rule on normalised landmarks: the face nearest the previous primary
    face, else the largest central one."""
    b = np.array([(f[:, 0].min(), f[:, 1].min(), f[:, 0].max(), f[:, 1].max()) for f in faces])
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    if track.last_centre is not None and len(faces) > 1:
        dist = np.linalg.norm(centres - track.last_centre, axis=1)
        if dist.min() < 0.15:
            i = int(dist.argmin())
            track.last_centre = centres[i]
            return i
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    off_centre = np.linalg.norm(centres - 0.5, axis=1) / np.sqrt(0.5)
    i = int(np.argmax(area * (1.0 - 0.5 * off_centre)))
    track.last_centre = centres[i]
    return i


class OnnxExpressionExtractor(ExpressionExtractor):
    """A drop-in ExpressionExtractor (process / observe, one stream) on a BatchedFaceModel,
    for the call sites that landmark one stream frame by frame. It holds no VIDEO-mode
    landmarker of its own (hence no call to the parent's constructor)."""

    def __init__(self, model_path: Path, cache_dir: Path, num_faces: int = 3, min_confidence: float = 0.5,
                 threads: int | None = None, crop: str = "detect") -> None:
        self._model = BatchedFaceModel(model_path, cache_dir, num_faces, min_confidence, threads=threads, crop=crop)

    def __enter__(self) -> OnnxExpressionExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._model.close()

    def observe(self, image: np.ndarray, time_s: float) -> FaceObservation | None:
        return self._model.observe([(0, image, time_s)])[0]

    def process(self, image: np.ndarray, time_s: float) -> np.ndarray | None:
        obs = self.observe(image, time_s)
        return None if obs is None else obs.expression


class SharedFaceModel:
    """One BatchedFaceModel for every stream of a process (the live path with
    ``features.face_backend = "onnx"``): each stream's featurizer thread calls ``observe`` and
    waits; one batcher thread runs what the streams submitted within ``linger_s`` as one batch
    per network. So N streams cost one detector / landmark / blendshape run per tick instead
    of N (on a GPU the difference between tens and hundreds of streams per node).

    ``extractor(key)`` gives a stream its ExpressionExtractor-like handle (observe, process,
    close); closing it drops the stream's tracking state. A stream whose frame is in a batch
    waits for that batch only: a frame submitted while a batch runs goes into the next one. The
    batcher waits (at most ``linger_s``) only for as many frames as there are open handles.
    """

    def __init__(self, model: BatchedFaceModel, linger_s: float = 0.003, max_batch: int = 32) -> None:
        self.model = model
        self.linger_s = linger_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Hashable, np.ndarray, float, _Pending] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._users = 0
        self.batches = 0
        self.largest = 0
        self._thread = threading.Thread(target=self._run, name="face-batcher", daemon=True)
        self._thread.start()

    def extractor(self, key: Hashable) -> SharedStreamExtractor:
        with self._lock:
            self._users += 1
        return SharedStreamExtractor(self, key)

    def observe(self, key: Hashable, image: np.ndarray, time_s: float) -> FaceObservation | None:
        pending = _Pending()
        self._queue.put((key, image, time_s, pending))
        return pending.wait()

    def _release(self, key: Hashable) -> None:
        with self._lock:
            self._users -= 1
        self._queue.put((key, np.zeros((0, 0, 3), np.uint8), -1.0, _Pending()))  # reset in the batcher thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            deadline = time.monotonic() + self.linger_s
            # wait for the other streams' frames only: one stream alone never lingers
            while len(items) < min(self.max_batch, self._users):
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            self._batch(items)

    def _batch(self, items: list[tuple[Hashable, np.ndarray, float, _Pending]]) -> None:
        work: list[tuple[Hashable, np.ndarray, float, _Pending]] = []
        later: list[tuple[Hashable, np.ndarray, float, _Pending]] = []
        seen: set[Hashable] = set()
        for it in items:
            if it[2] < 0:  # a closed stream: forget its track
                self.model.reset(it[0])
                it[3].set(None)
            elif it[0] in seen:  # one frame per stream per batch (a stream never has two waiting)
                later.append(it)
            else:
                seen.add(it[0])
                work.append(it)
        if work:
            try:
                results = self.model.observe([(k, img, t) for k, img, t, _ in work])
            except Exception as err:  # the stream threads see it, the batcher goes on
                for it in work:
                    it[3].fail(err)
            else:
                self.batches += 1
                self.largest = max(self.largest, len(work))
                for it, res in zip(work, results, strict=True):
                    it[3].set(res)
        if later:
            self._batch(later)


class _Pending:
    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: FaceObservation | None = None
        self._error: BaseException | None = None

    def set(self, value: FaceObservation | None) -> None:
        self._value = value
        self._done.set()

    def fail(self, err: BaseException) -> None:
        self._error = err
        self._done.set()

    def wait(self) -> FaceObservation | None:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class SharedStreamExtractor(ExpressionExtractor):
    """One stream's handle on a SharedFaceModel, usable where an ExpressionExtractor is."""

    def __init__(self, shared: SharedFaceModel, key: Hashable) -> None:
        self._shared, self._key, self._closed = shared, key, False

    def __enter__(self) -> SharedStreamExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared._release(self._key)

    def observe(self, image: np.ndarray, time_s: float) -> FaceObservation | None:
        return self._shared.observe(self._key, image, time_s)

    def process(self, image: np.ndarray, time_s: float) -> np.ndarray | None:
        obs = self.observe(image, time_s)
        return None if obs is None else obs.expression


_SHARED: dict[tuple[str, str, int, float, str], SharedFaceModel] = {}
_SHARED_LOCK = threading.Lock()


def live_extractor(cfg: FeatureConfig, model_path: Path, cache_dir: Path | None, key: Hashable) -> ExpressionExtractor:
    """A live stream's extractor: MediaPipe's own graph per stream, or with
    ``face_backend = "onnx"`` a handle on the process's one SharedFaceModel (batched across
    every stream of the process)."""
    if face_backend(cfg) != "onnx":
        return ExpressionExtractor(model_path, cfg.num_faces, cfg.min_face_confidence)
    cache = cache_dir or default_cache_dir()
    k = (str(model_path), str(cache), cfg.num_faces, cfg.min_face_confidence, cfg.face_crop)
    with _SHARED_LOCK:
        shared = _SHARED.get(k)
        if shared is None:
            shared = _SHARED[k] = SharedFaceModel(BatchedFaceModel(model_path, cache, cfg.num_faces,
                                                                   cfg.min_face_confidence, crop=cfg.face_crop))
    return shared.extractor(key)


def default_cache_dir() -> Path:
    """The configured cache_dir's default (env EXPOSE_CACHE, else the user cache), for call
    sites that hold only the FeatureConfig."""
    import platformdirs

    from expose.monitor.config import APP_NAME

    return Path(os.environ.get("EXPOSE_CACHE") or platformdirs.user_cache_dir(APP_NAME))


def face_backend(cfg: FeatureConfig) -> str:
    """``features.face_backend``: "mediapipe" (the default) or "onnx"."""
    return cfg.face_backend


def expression_extractor(cfg: FeatureConfig, model_path: Path,
                         cache_dir: Path | None = None) -> ExpressionExtractor:
    """The single-stream extractor that ``features.face_backend`` names."""
    if face_backend(cfg) == "onnx":
        return OnnxExpressionExtractor(model_path, cache_dir or default_cache_dir(), cfg.num_faces,
                                       cfg.min_face_confidence, crop=cfg.face_crop)
    return ExpressionExtractor(model_path, cfg.num_faces, cfg.min_face_confidence)
