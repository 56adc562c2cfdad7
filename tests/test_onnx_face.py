"""The face landmarker's networks on onnxruntime (monitor.features.onnx_face) against
MediaPipe, on real corpus frames.

The tolerances are the figures measured with bench/face_parity.py (three real clips,
150-250 frames each) with headroom: crop "detect" (MediaPipe's own behaviour with
num_faces 3) reproduces MediaPipe (blendshape MAE ~0.0004); crop "track" (the previous
frame's landmarks) is ~0.02 blendshape MAE and ~1 % of the inter-ocular distance away, as
far as MediaPipe with num_faces=1 is from num_faces=3. Skips when the converter's packages
(onnx, tflite) are missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("onnxruntime")

from expose.monitor.features.expressions import N_BLENDSHAPES, ExpressionExtractor  # noqa: E402
from expose.monitor.features.onnx_face import (  # noqa: E402
    BLENDSHAPE_LANDMARKS,
    BatchedFaceModel,
    FaceGeometry,
    _session,
    face_backend,
    face_model_files,
)
from expose.monitor.media.reader import MediaReader, VideoFrame  # noqa: E402

if TYPE_CHECKING:
    from expose.monitor.config import FeatureConfig
    from tests.conftest import Clip, Extract

CLIP = "real/trump/speech_01.mp4"
Frames = list[tuple[np.ndarray, float]]
FRAMES = 60


def _frames(path: Path, n: int) -> Frames:
    out = []
    with MediaReader(path, require_video=True, require_audio=False) as reader:
        for item in reader.read(max_side=640):
            if isinstance(item, VideoFrame):
                out.append((item.image, item.time))
                if len(out) >= n:
                    break
    return out


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("face-onnx")


@pytest.fixture(scope="module")
def frames(clip: Clip) -> Frames:
    return _frames(clip(CLIP), FRAMES)


def test_conversion_is_cached_by_bundle(face_model: Path, onnx_dir: Path) -> None:
    files = face_model_files(face_model, onnx_dir)
    assert set(files) == {"face_detector", "face_landmarks_detector", "face_blendshapes", "geometry"}
    stamps = {k: p.stat().st_mtime_ns for k, p in files.items()}
    again = face_model_files(face_model, onnx_dir)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamps  # not converted twice
    lm = _session(files["face_landmarks_detector"], ["CPUExecutionProvider"], 1)
    out = lm.run(None, {lm.get_inputs()[0].name: np.zeros((3, 256, 256, 3), np.float32)})
    assert [o.shape for o in out] == [(3, 1, 1, 1434), (3, 1, 1, 1), (3, 1)]  # a dynamic batch


def test_converted_networks_match_litert(face_model: Path) -> None:
    """Each network against the TFLite original on LiteRT (ai-edge-litert, when installed), on a
    batch of 3 random inputs run one by one there."""
    import zipfile

    import onnxruntime as ort

    from expose.monitor.features.tflite_onnx import convert_tflite

    litert = pytest.importorskip("ai_edge_litert.interpreter")
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(face_model) as z:
        for name in ("face_detector", "face_landmarks_detector", "face_blendshapes"):
            buf = z.read(f"{name}.tflite")
            ref = litert.Interpreter(model_content=buf)
            ref.allocate_tensors()
            inp = ref.get_input_details()[0]
            x = rng.random((3, *inp["shape"][1:]), dtype=np.float32) * (300 if name == "face_blendshapes" else 1)
            sess = ort.InferenceSession(convert_tflite(buf).SerializeToString(), providers=["CPUExecutionProvider"])
            outs = sess.run(None, {sess.get_inputs()[0].name: x})
            for b in range(3):
                ref.set_tensor(inp["index"], x[b:b + 1])
                ref.invoke()
                for detail, ours in zip(ref.get_output_details(), outs, strict=True):
                    theirs = ref.get_tensor(detail["index"]).reshape(-1)
                    err = np.abs(theirs - ours[b].reshape(-1)).max()
                    assert err <= 1e-4 * max(1.0, float(np.abs(theirs).max())), (name, detail["name"], err)


def test_blendshape_network_and_geometry_reproduce_mediapipe(
        face_model: Path, onnx_dir: Path, frames: Frames) -> None:
    """Fed MediaPipe's own landmarks, the converted blendshape network and the numpy geometry
    pipeline give MediaPipe's blendshapes and facial transformation matrix (the stages after
    the landmarks are exact; what differs on the full path is the crop)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    files = face_model_files(face_model, onnx_dir)
    bs = _session(files["face_blendshapes"], ["CPUExecutionProvider"], 1)
    geo = FaceGeometry(files["geometry"].read_bytes())
    opts = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(face_model)), running_mode=vision.RunningMode.IMAGE,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    with vision.FaceLandmarker.create_from_options(opts) as landmarker:
        checked = 0
        for image, _ in frames[::10]:
            r = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            if not r.face_landmarks:
                continue
            h, w = image.shape[:2]
            lm = np.array([(p.x, p.y, p.z) for p in r.face_landmarks[0]])
            pts = (lm[BLENDSHAPE_LANDMARKS, :2] * [w, h]).astype(np.float32)[None]
            ours = bs.run(None, {bs.get_inputs()[0].name: pts})[0][0]
            theirs = np.array([c.score for c in r.face_blendshapes[0]])
            assert np.abs(ours - theirs).max() < 1e-3
            np.testing.assert_allclose(geo.matrix(lm, w, h), np.asarray(r.facial_transformation_matrixes[0]),
                                       atol=1e-3)
            checked += 1
    assert checked >= 3


def _parity(face_model: Path, onnx_dir: Path, frames: Frames, crop: str) -> tuple[dict[str, np.ndarray], dict]:
    bs_mae, lm_err, pose_deg = [], [], []
    with ExpressionExtractor(face_model) as ref, BatchedFaceModel(face_model, onnx_dir, crop=crop) as model:
        for image, t in frames:
            a = ref.observe(image, t)
            b = model.observe([("s", image, t)])[0]
            assert (a is None) == (b is None)
            if a is None or b is None:
                continue
            iod = np.linalg.norm(a.landmarks[33] - a.landmarks[263])
            bs_mae.append(np.abs(a.expression[:N_BLENDSHAPES] - b.expression[:N_BLENDSHAPES]).mean())
            lm_err.append(np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean() / iod)
            pose_deg.append(np.degrees(np.abs(a.expression[N_BLENDSHAPES:N_BLENDSHAPES + 3]
                                              - b.expression[N_BLENDSHAPES:N_BLENDSHAPES + 3])))
        stats = dict(model.stats)
    assert len(bs_mae) >= FRAMES - 2
    return {"bs": np.array(bs_mae), "lm": np.array(lm_err), "pose": np.array(pose_deg)}, stats


def test_detect_crop_reproduces_mediapipe(face_model: Path, onnx_dir: Path, frames: Frames) -> None:
    """crop="detect" does what MediaPipe's VIDEO mode does with num_faces 3 (the detector's crop
    on every frame): measured 0.0004 blendshape MAE, 0.02 % of the inter-ocular distance."""
    err, stats = _parity(face_model, onnx_dir, frames, "detect")
    assert stats["detector"] == len(frames)
    assert err["bs"].mean() < 0.002 and err["bs"].max() < 0.01
    assert err["lm"].mean() < 0.001 and err["lm"].max() < 0.003
    assert np.all(err["pose"].mean(axis=0) < 0.1)


def test_track_crop_is_within_tolerance_of_mediapipe(face_model: Path, onnx_dir: Path, frames: Frames) -> None:
    """crop="track" (the previous frame's landmarks, the detector only to find the face):
    measured 0.014-0.022 blendshape MAE and 0.7-1.5 % landmark error on three clips, the spread
    MediaPipe shows between num_faces 1 and 3."""
    err, stats = _parity(face_model, onnx_dir, frames, "track")
    assert stats["detector"] <= 2  # the first frame (and at most one re-detection)
    assert err["bs"].mean() < 0.03 and np.percentile(err["bs"], 95) < 0.05
    assert err["lm"].mean() < 0.015 and err["lm"].max() < 0.03
    assert np.all(err["pose"].mean(axis=0) < 1.5)


@pytest.mark.parametrize("crop", ["detect", "track"])
def test_a_batch_of_streams_equals_each_stream_alone(face_model: Path, onnx_dir: Path, frames: Frames,
                                                     crop: str) -> None:
    """Streams in one batch keep their own tracks, and batching does not change the values."""
    part = frames[:8]
    flipped = [(np.ascontiguousarray(im[:, ::-1]), t) for im, t in part]
    with BatchedFaceModel(face_model, onnx_dir, crop=crop) as alone_a, \
            BatchedFaceModel(face_model, onnx_dir, crop=crop) as alone_b, \
            BatchedFaceModel(face_model, onnx_dir, crop=crop) as together:
        together.chunk = 1  # the landmark network in two runs, as a batch over the chunk size is
        for (im, t), (fl, _) in zip(part, flipped, strict=True):
            a = alone_a.observe([("a", im, t)])[0]
            b = alone_b.observe([("b", fl, t)])[0]
            ab = together.observe([("a", im, t), ("b", fl, t)])
            for x, y in ((a, ab[0]), (b, ab[1])):
                assert x is not None and y is not None
                np.testing.assert_allclose(x.expression, y.expression, atol=1e-4)
                np.testing.assert_allclose(x.landmarks, y.landmarks, atol=1e-2)


def test_backend_is_a_config_value_and_keys_the_feature_cache(feature_config: FeatureConfig,
                                                              face_model: Path) -> None:
    from expose.monitor.features.extract import extractor_version

    onnx_cfg = feature_config.model_copy(update={"face_backend": "onnx"})
    assert face_backend(feature_config) == "mediapipe"
    assert extractor_version(onnx_cfg, face_model) != extractor_version(feature_config, face_model)
    tracked = onnx_cfg.model_copy(update={"face_crop": "track"})
    assert extractor_version(tracked, face_model) != extractor_version(onnx_cfg, face_model)
    # the crop is the ONNX path's: MediaPipe's features do not depend on it
    assert extractor_version(feature_config.model_copy(update={"face_crop": "track"}), face_model) == \
        extractor_version(feature_config, face_model)


def test_extract_track_with_the_onnx_backend(feature_config: FeatureConfig, face_model: Path, clip: Clip,
                                             extract: Extract) -> None:
    """features.face_backend = "onnx" at the extraction's call site (crop "detect"): the same
    ticks carry a face, with MediaPipe's expression rows."""
    from expose.monitor.features.extract import extract_track

    path = clip(CLIP)
    ref = extract(path)
    ours = extract_track(path, feature_config.model_copy(update={"face_backend": "onnx"}), face_model)
    assert ours.extractor_version.endswith("-onnxface")
    assert np.array_equal(ours.face_mask, ref.face_mask)
    rows = ref.face_mask
    assert np.abs(ours.expression[rows, :N_BLENDSHAPES] - ref.expression[rows, :N_BLENDSHAPES]).mean() < 0.002
    assert np.array_equal(ours.face_id_ticks, ref.face_id_ticks)


def test_shared_model_batches_the_streams_of_a_process(face_model: Path, onnx_dir: Path, frames: Frames) -> None:
    """The live path: two streams' threads observe through one SharedFaceModel; their frames
    run in shared batches, each stream keeps its own track, and the values are each stream's
    alone; a closed stream's track is dropped."""
    import threading

    from expose.monitor.features.onnx_face import SharedFaceModel

    part = frames[:8]
    flipped = [(np.ascontiguousarray(im[:, ::-1]), t) for im, t in part]
    with BatchedFaceModel(face_model, onnx_dir) as alone:
        expected = {"a": [alone.observe([("a", im, t)])[0] for im, t in part],
                    "b": [alone.observe([("b", im, t)])[0] for im, t in flipped]}
    model = BatchedFaceModel(face_model, onnx_dir)
    model.chunk = 1  # landmark runs of one crop: values as alone, whatever the batch
    shared = SharedFaceModel(model, linger_s=0.5)  # long enough for both threads to be in each batch
    got: dict[str, list] = {}

    def stream(key: str, seq: Frames) -> None:
        with shared.extractor(key) as ex:
            got[key] = [ex.observe(im, t) for im, t in seq]

    threads = [threading.Thread(target=stream, args=("a", part)), threading.Thread(target=stream, args=("b", flipped))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert set(got) == {"a", "b"}
    for key in ("a", "b"):
        for x, y in zip(expected[key], got[key], strict=True):
            assert x is not None and y is not None
            np.testing.assert_allclose(x.expression, y.expression, atol=1e-4)
    assert shared.largest == 2 and shared.batches < 2 * len(part)  # both streams in one batch, not one each
    deadline = time.monotonic() + 10
    while model._tracks and time.monotonic() < deadline:  # the closes reach the batcher
        time.sleep(0.05)
    assert not model._tracks
