"""Parity of the ONNX face path (monitor.features.onnx_face) with MediaPipe's landmarker.

For each clip, every decoded frame (at the extraction's max_side) goes through the
product's ExpressionExtractor (MediaPipe, VIDEO mode) and through BatchedFaceModel (one
stream). Per frame where both find a face: blendshape mean absolute error (52 scores),
landmark error as the mean distance over the 478 landmarks in % of the inter-ocular
distance (outer eye corners 33-263, from MediaPipe's landmarks), and the pose differences
(yaw, pitch, roll in degrees; tx, ty, tz in MediaPipe's units). With ``yardstick`` the same
figures are computed between MediaPipe with num_faces=3 (the product setting) and MediaPipe
with num_faces=1 (which changes its crop and turns on its landmark smoothing): the spread
MediaPipe itself shows under a setting change.

    .venv/bin/python bench/face_parity.py CLIP... [--frames 250] [--yardstick] [--json out.json]
    .venv/bin/python bench/face_parity.py CLIP --exam REFERENCE_CLIP [--json out.json]

``--exam``: the EXAM scores of CLIP through the product's scorer with both feature paths
(``exam_shift``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from expose.monitor.features.expressions import N_BLENDSHAPES, ExpressionExtractor, FaceObservation
from expose.monitor.features.onnx_face import BatchedFaceModel
from expose.monitor.media.reader import MediaReader, VideoFrame

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _frames(clip: Path, max_frames: int, max_side: int = 640) -> Iterator[tuple[np.ndarray, float]]:
    with MediaReader(clip, require_video=True, require_audio=False) as reader:
        n = 0
        for item in reader.read(max_side=max_side):
            if isinstance(item, VideoFrame):
                yield item.image, item.time
                n += 1
                if n >= max_frames:
                    return


def compare(ref: FaceObservation, other: FaceObservation) -> dict[str, float]:
    iod = float(np.linalg.norm(ref.landmarks[33] - ref.landmarks[263]))
    d = np.abs(ref.expression - other.expression)
    pose = d[N_BLENDSHAPES:]
    return {
        "blendshape_mae": float(d[:N_BLENDSHAPES].mean()),
        "blendshape_max": float(d[:N_BLENDSHAPES].max()),
        "landmark_err_iod_pct": 100.0 * float(np.linalg.norm(ref.landmarks - other.landmarks, axis=1).mean()) / iod,
        "yaw_deg": float(np.degrees(pose[0])), "pitch_deg": float(np.degrees(pose[1])),
        "roll_deg": float(np.degrees(pose[2])),
        "tx": float(pose[3]), "ty": float(pose[4]), "tz": float(pose[5]),
    }


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        v = np.array([r[k] for r in rows])
        out[k] = {"mean": float(v.mean()), "p95": float(np.percentile(v, 95)), "max": float(v.max())}
    return out


def clip_parity(clip: Path, face_model: Path, cache_dir: Path, max_frames: int = 250,
                yardstick: bool = False, crop: str = "detect") -> dict:
    """The figures of one clip (see the module doc)."""
    onnx_rows, mp_rows = [], []
    face_ref = face_onnx = face_both = 0
    extra = ExpressionExtractor(face_model, num_faces=1) if yardstick else None
    with ExpressionExtractor(face_model) as ref, BatchedFaceModel(face_model, cache_dir, crop=crop) as model:
        for image, t in _frames(clip, max_frames):
            a = ref.observe(image, t)
            b = model.observe([("s", image, t)])[0]
            c = extra.observe(image, t) if extra is not None else None
            face_ref += a is not None
            face_onnx += b is not None
            if a is not None and b is not None:
                face_both += 1
                onnx_rows.append(compare(a, b))
            if a is not None and c is not None:
                mp_rows.append(compare(a, c))
        stats = dict(model.stats)
    if extra is not None:
        extra.close()
    result = {
        "clip": str(clip), "crop": crop,
        "frames_with_face": {"mediapipe": face_ref, "onnx": face_onnx, "both": face_both},
        "onnx_path": stats, "onnx_vs_mediapipe": summarise(onnx_rows),
    }
    if yardstick:
        result["mediapipe_nf1_vs_nf3"] = summarise(mp_rows)
    return result


def face_parity(clips: list[Path], face_model: Path, cache_dir: Path | None = None, max_frames: int = 250,
                yardstick: bool = False, crops: tuple[str, ...] = ("detect", "track")) -> list[dict]:
    cache = cache_dir or Path(tempfile.mkdtemp(prefix="face-onnx-"))
    return [clip_parity(c, face_model, cache, max_frames, yardstick and i == 0, crop)
            for c in clips for i, crop in enumerate(crops)]


def exam_shift(clip: Path, reference: Path, face_model: Path, steps: int = 15) -> dict:
    """How much the EXAM scores of ``clip`` move when its features come from the ONNX path.

    Tracks of ``clip`` are extracted with face_backend mediapipe, onnx, and (yardstick)
    mediapipe with num_faces=1; identity embeddings are off (they do not depend on the
    backend's expression vectors). A profile is enrolled from ``reference`` (mediapipe
    features, the starter model, ``steps`` steps), and every window of ``clip`` is scored
    against it with the product's score_track: per-window distances and the clip score
    (mean normalised distance) for each feature path.
    """
    from expose.monitor.config import STARTER_MODEL, FeatureConfig
    from expose.monitor.evaluation.clips import score_track
    from expose.monitor.features.extract import extract_track
    from expose.monitor.model.exam import load_model
    from expose.monitor.model.scorer import Scorer
    from expose.profiles.enroll import EnrollConfig, enroll
    from expose.profiles.store import Reference

    base_cfg = FeatureConfig(face_model=face_model, face_id_every=0, voice_every=0)
    cfgs = {"mediapipe": base_cfg, "onnx": base_cfg.model_copy(update={"face_backend": "onnx"}),
            "mediapipe_nf1": base_cfg.model_copy(update={"num_faces": 1})}
    tracks = {k: extract_track(clip, c, face_model) for k, c in cfgs.items()}
    ref = extract_track(reference, base_cfg, face_model)
    loaded = load_model(STARTER_MODEL)
    profile = enroll("subject", loaded, [(ref, Reference(str(reference), ref.media_sha256, round(ref.duration, 3), 0))],
                     EnrollConfig(steps=steps, batch=8))
    scorer = Scorer.of(loaded)
    results = {k: score_track(t, profile, scorer) for k, t in tracks.items()}
    dist = {k: np.array([s.distance if s.distance is not None else np.nan for s in r.scores])
            for k, r in results.items()}
    out: dict = {"clip": str(clip), "reference": str(reference), "windows": int(len(dist["mediapipe"])),
                 "clip_score": {k: r.clip_score for k, r in results.items()},
                 "verdict": {k: r.verdict for k, r in results.items()},
                 "window_distance_mean": {k: float(np.nanmean(d)) for k, d in dist.items()},
                 "expression_face_ticks": {k: int(t.face_mask.sum()) for k, t in tracks.items()}}
    for k in ("onnx", "mediapipe_nf1"):
        diff = np.abs(dist[k] - dist["mediapipe"])
        rel = diff / np.maximum(np.abs(dist["mediapipe"]), 1e-9)
        out[f"{k}_vs_mediapipe"] = {"window_abs_diff_mean": float(np.nanmean(diff)),
                                    "window_abs_diff_max": float(np.nanmax(diff)),
                                    "window_rel_diff_mean": float(np.nanmean(rel)),
                                    "window_corr": float(np.corrcoef(dist[k], dist["mediapipe"])[0, 1]),
                                    "profile_std": float(profile.calibration.std)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--face-model", type=Path, default=Path(os.environ.get(
        "EXPOSE_FACE_MODEL", SHARED / "models" / "face_landmarker.task")))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--yardstick", action="store_true", help="also MediaPipe num_faces=1 vs 3")
    ap.add_argument("--crop", nargs="+", default=["detect", "track"], help="BatchedFaceModel crop modes")
    ap.add_argument("--exam", type=Path, default=None, metavar="REFERENCE",
                    help="instead: EXAM score shift of the first clip, profile enrolled from REFERENCE")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: object
    if args.exam is not None:
        out = exam_shift(args.clips[0], args.exam, args.face_model)
    else:
        out = face_parity(args.clips, args.face_model, args.cache_dir, args.frames, args.yardstick, tuple(args.crop))
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
