"""Frames per second of the face model: MediaPipe (the product's ExpressionExtractor, one
stream, frame by frame) against the ONNX path (monitor.features.onnx_face.BatchedFaceModel)
at several batch sizes, where a batch of B is B streams' frames landmarked in one call,
with both crop modes (detect: the detector on every frame, MediaPipe's behaviour with
num_faces 3; track: the previous frame's landmarks).

The same decoded frames (one clip, at the extraction's max_side) are used throughout: B
streams are B copies of the clip, each with its own tracking state, so every ONNX call
after the first is the steady state (detector on B frames in "detect" mode, landmark
network on B crops, blendshape network on B faces, pose). The first frame of every
stream is not timed.
Timings include the crop warp and pose, not decoding.

    .venv/bin/python bench/face_model_speed.py [--clip C] [--frames 100] [--batches 1 4 16]
        [--threads 2] [--json out.json]

``bench_face_models(...) -> dict`` is importable. Threads: onnxruntime's intra-op pool is
set to ``threads``; MediaPipe's XNNPACK pool is its own (not configurable from Python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from expose.monitor.features.expressions import ExpressionExtractor
from expose.monitor.features.onnx_face import BatchedFaceModel
from expose.monitor.media.reader import MediaReader, VideoFrame

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_CLIP = SHARED / "corpus" / "real" / "trump" / "speech_01.mp4"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _decode(clip: Path, frames: int, max_side: int = 640) -> list[tuple[np.ndarray, float]]:
    out = []
    with MediaReader(clip, require_video=True, require_audio=False) as reader:
        for item in reader.read(max_side=max_side):
            if isinstance(item, VideoFrame):
                out.append((item.image, item.time))
                if len(out) >= frames:
                    break
    return out


def bench_face_models(clip: Path = DEFAULT_CLIP, face_model: Path | None = None, frames: int = 100,
                      batches: tuple[int, ...] = (1, 4, 16), threads: int | None = None,
                      cache_dir: Path | None = None, providers: list[str] | None = None,
                      crops: tuple[str, ...] = ("detect", "track")) -> dict:
    """{"machine": ..., "mediapipe" / "mediapipe_nf1": {"fps", "ms_per_frame", "cpu_ms_per_frame"},
    "onnx" (crop "detect") / "onnx_track": {"B": {"fps", "ms_per_call", "ms_per_frame",
    "cpu_ms_per_frame", "detector_runs", "crops"}}}.

    fps counts frames landmarked per second of wall time (all streams together);
    cpu_ms_per_frame is the process's CPU time (all threads) per frame, the figure that
    decides how many streams fit on a loaded machine."""
    face_model = face_model or Path(os.environ.get("EXPOSE_FACE_MODEL", SHARED / "models" / "face_landmarker.task"))
    cache = cache_dir or Path(tempfile.mkdtemp(prefix="face-onnx-"))
    data = _decode(clip, frames + 1)
    result: dict = {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "ort_intra_op_threads": threads},
        "clip": str(clip), "frames": len(data) - 1,
    }
    n = len(data) - 1
    for key, num_faces in (("mediapipe", 3), ("mediapipe_nf1", 1)):
        # num_faces 3 (the product's setting) runs MediaPipe's detector on every frame while it
        # tracks fewer faces; with 1 it runs only when tracking is lost (and smooths landmarks)
        with ExpressionExtractor(face_model, num_faces=num_faces) as ref:
            ref.process(*data[0])
            t0, c0 = time.perf_counter(), time.process_time()
            for image, t in data[1:]:
                ref.process(image, t)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
        result[key] = {"fps": n / dt, "ms_per_frame": 1000 * dt / n, "cpu_ms_per_frame": 1000 * dc / n,
                       "num_faces": num_faces}
    for crop in crops:
        key = "onnx" if crop == "detect" else f"onnx_{crop}"
        result[key] = _bench_onnx(face_model, cache, data, batches, threads, providers, crop)
        result["onnx_providers"] = result[key].pop("providers")
    return result


def _bench_onnx(face_model: Path, cache: Path, data: list[tuple[np.ndarray, float]], batches: tuple[int, ...],
                threads: int | None, providers: list[str] | None, crop: str) -> dict:
    result: dict = {}
    with BatchedFaceModel(face_model, cache, providers=providers, threads=threads, crop=crop) as model:
        result["providers"] = model.providers
        for b in batches:
            streams = [f"s{b}-{i}" for i in range(b)]
            model.observe([(s, *data[0]) for s in streams])  # the first frame: the detector on every stream
            before = dict(model.stats)
            t0, c0 = time.perf_counter(), time.process_time()
            for image, t in data[1:]:
                model.observe([(s, image, t) for s in streams])
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            n = b * (len(data) - 1)
            result[str(b)] = {
                "fps": n / dt, "ms_per_call": 1000 * dt / (len(data) - 1), "ms_per_frame": 1000 * dt / n,
                "cpu_ms_per_frame": 1000 * dc / n,
                "detector_runs": model.stats["detector"] - before["detector"],
                "crops": model.stats["crops"] - before["crops"],
            }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: ORT's)")
    ap.add_argument("--cuda", action="store_true", help="ask for CUDAExecutionProvider first")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.cuda else ["CPUExecutionProvider"]
    out = bench_face_models(args.clip, frames=args.frames, batches=tuple(args.batches), threads=args.threads,
                            providers=providers)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
