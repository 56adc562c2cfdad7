#!/usr/bin/env python3
"""Face verification descriptor: milliseconds per face, and how well it separates people.

    .venv/bin/python bench/bench_face_id.py                       # speed on trump/speech_01
    .venv/bin/python bench/bench_face_id.py --pin 0 --json        # one core, machine-readable
    .venv/bin/python bench/bench_face_id.py --clip /path/to/any.mp4 --faces 32
    .venv/bin/python bench/bench_face_id.py --separation          # corpus distances (minutes)

Speed: faces come from every 5th frame of the clip through ``ExpressionExtractor.observe``
(the landmarker is not timed). Timed, per face: ``chips`` (dlib's 5-point predictor on the
landmark box + ``get_face_chip``), the ResNet descriptor on chips one call per face
(``net x1``) and in batches (``net xB``), and ``embed`` end to end (chips + one batch).
Median and best of ``--repeat`` rounds. ``cpu/wall`` > 1 would mean dlib used more than
one core (it does not: about 1.0); ``--pin`` measures what one core of a worker gets.

Separation: for every real corpus clip, up to ``--faces`` faces spread over the clip. Each
recording of an identity with several recordings (``--identities``; VidTIMIT's ``sN_``
files are session N) is enrolled in turn: ``select_face_references`` keeps 8 pose-spread
faces. Genuine: the person's other recordings; impostor: every clip of every other
identity. A clip's distance is the median over its faces (as a window's would be). Per
set distance: pooled clip AUC, frame-level EER, and the genuine and impostor clip
distance distributions; then, per enrolment, the largest genuine and the nearest
impostor distance.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from expose.monitor.features.face_id import FaceSample

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = (REPO / ".." / "shared" / "corpus").resolve()
DEFAULT_MODEL = (REPO / ".." / "shared" / "models" / "face_landmarker.task").resolve()
DEFAULT_CLIP = DEFAULT_CORPUS / "real" / "trump" / "speech_01.mp4"
# identities whose corpus clips come from different recordings (MANIFEST.csv sources)
MULTI_RECORDING = ["trump", "vidtimit_fadg0", "eknim_min", "niko_csgo", "ocasio_cortez", "vox_7414", "mead_m030"]


def _faces(path: Path, face_model: Path, n: int, stride: int) -> tuple[list[FaceSample], np.ndarray]:
    """Up to ``n`` faces from every ``stride``-th decoded frame: samples and (N, 2) yaw, pitch."""
    from expose.monitor.features.face_id import PITCH, YAW, sample_faces

    samples, expressions = sample_faces(path, face_model, n, stride)
    return samples, expressions[:, [YAW, PITCH]]


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Median and best wall seconds, and median CPU seconds (this process, all threads), of
    ``fn()``. The best round is what the code costs when no other process competes for the
    core; the median is what it got here."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def speed(args: argparse.Namespace) -> None:
    import numpy as np

    from expose.monitor.features.face_id import DlibFaceEmbedder

    samples, _ = _faces(args.clip, args.face_model, args.faces, stride=5)
    if not samples:
        raise SystemExit(f"no face found in {args.clip}")
    n = len(samples)
    t0 = time.perf_counter()
    embedder = DlibFaceEmbedder()
    load_s = time.perf_counter() - t0
    chips = embedder.chips(samples)
    embedder.embed_chips(chips[:1])  # warm-up: first-call allocations

    def per_face(fn: Callable[[], object]) -> dict[str, float]:
        wall, best, cpu = _timed(fn, args.repeat)
        return {"ms_per_face": 1000 * wall / n, "best_ms_per_face": 1000 * best / n,
                "cpu_per_wall": cpu / wall if wall > 0 else float("nan")}

    def net_batched(b: int) -> Callable[[], object]:
        return lambda: [embedder.embed_chips(chips[i:i + b]) for i in range(0, n, b)]

    rows: dict[str, dict[str, float]] = {
        "chips": per_face(lambda: embedder.chips(samples)),
        "net x1": per_face(net_batched(1)),
        **{f"net x{b}": per_face(net_batched(b)) for b in args.batch},
        "embed": per_face(lambda: embedder.embed(samples)),
    }
    meta: dict[str, Any] = {
        "clip": str(args.clip), "faces": n, "frame": list(samples[0].image.shape), "repeat": args.repeat,
        "pinned_core": args.pin, "cpus": len(os.sched_getaffinity(0)), "machine": platform.processor() or
        platform.machine(), "load_s": load_s, "numpy": np.__version__, "loadavg_1min": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps({"meta": meta, "timings": rows}, indent=2))
        return
    print(f"{n} faces from {args.clip.name} ({meta['frame'][1]}x{meta['frame'][0]}), "
          f"{meta['cpus']} core(s){' pinned' if args.pin is not None else ''}, model load {load_s * 1000:.0f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} (other processes competing for the cores inflate ms/face)")
    print(f"{'stage':<10}{'ms/face':>10}{'best':>8}{'cpu/wall':>10}")
    for name, r in rows.items():
        print(f"{name:<10}{r['ms_per_face']:>10.1f}{r['best_ms_per_face']:>8.1f}{r['cpu_per_wall']:>10.2f}")


def _recording(identity: str, path: str) -> str:
    """The recording a corpus clip belongs to: VidTIMIT's ``sN_*`` clips share session N,
    any other clip is its own recording."""
    name = Path(path).name
    m = re.match(r"(s\d+)_", name)
    return f"{identity}/{m.group(1) if m else name}"


def _auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(impostor distance > genuine distance), ties half."""
    g, i = genuine[:, None], impostor[None, :]
    return float((i > g).mean() + 0.5 * (i == g).mean())


def _eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    import numpy as np

    thresholds = np.unique(np.concatenate([genuine, impostor]))
    frr = (genuine[None, :] > thresholds[:, None]).mean(axis=1)
    far = (impostor[None, :] <= thresholds[:, None]).mean(axis=1)
    i = int(np.argmin(np.abs(frr - far)))
    return float(frr[i] + far[i]) / 2


def separation(args: argparse.Namespace) -> None:
    import numpy as np

    from expose.monitor.features.embedding import SetDistance, reference_distances
    from expose.monitor.features.face_id import DlibFaceEmbedder, select_face_references

    embedder = DlibFaceEmbedder()
    with open(args.corpus / "MANIFEST.csv", newline="") as f:
        real = [r for r in csv.DictReader(f) if r["label"] == "real"]
    clips, idents, recs, descs, poses = [], [], [], [], []
    for row in real:
        frames = float(row["seconds"]) * float(Fraction(row["fps"]))
        samples, pose = _faces(args.corpus / row["path"], args.face_model, args.faces,
                               stride=max(5, int(frames // args.faces)))
        if not samples:
            print(f"no face: {row['path']}")
            continue
        descs.append(embedder.embed(samples))
        poses.append(pose)
        clips += [row["path"]] * len(samples)
        idents += [row["identity"]] * len(samples)
        recs += [_recording(row["identity"], row["path"])] * len(samples)
    desc, pose = np.concatenate(descs), np.concatenate(poses)
    clip, ident, rec = np.array(clips), np.array(idents), np.array(recs)
    print(f"{len(desc)} faces from {len(set(clips))} clips of {len(set(idents))} identities")
    methods: list[tuple[str, SetDistance, int]] = [("centroid", "centroid", 0), ("nearest", "knn", 1),
                                                   ("knn3", "knn", 3)]
    worst: list[tuple[str, float, str, float]] = []
    for label, method, k in methods:
        gen_clip, imp_clip, gen_frame, imp_frame = [], [], [], []
        for who in args.identities:
            for r in sorted(set(rec[ident == who])):
                enrol = np.where(rec == r)[0]
                refs = desc[enrol[select_face_references(pose[enrol], k=8)]]
                d = reference_distances(desc, refs, method, k)
                genuine, impostor = (ident == who) & (rec != r), ident != who
                g = [float(np.median(d[clip == c])) for c in sorted(set(clip[genuine]))]
                names = sorted(set(clip[impostor]))
                i = [float(np.median(d[clip == c])) for c in names]
                gen_clip += g
                imp_clip += i
                gen_frame.append(d[genuine])
                imp_frame.append(d[impostor])
                if label == "centroid":
                    worst.append((r, max(g), names[int(np.argmin(i))], min(i)))
        g_c, i_c = np.array(gen_clip), np.array(imp_clip)
        g_f, i_f = np.concatenate(gen_frame), np.concatenate(imp_frame)
        print(f"{label:<9} clip AUC {_auc(g_c, i_c):.4f}  frame AUC {_auc(g_f, i_f):.4f}  "
              f"frame EER {100 * _eer(g_f, i_f):.2f} %  | genuine clips ({len(g_c)}) mean {g_c.mean():.3f} "
              f"p95 {np.percentile(g_c, 95):.3f} max {g_c.max():.3f}  | impostor clips ({len(i_c)}) "
              f"min {i_c.min():.3f} p1 {np.percentile(i_c, 1):.3f} p5 {np.percentile(i_c, 5):.3f} "
              f"mean {i_c.mean():.3f}")
    print("per enrolment (centroid): largest genuine clip distance, nearest impostor clip")
    for r, g_max, name, i_min in worst:
        print(f"  {r:<40} {g_max:.3f}   {i_min:.3f} {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--face-model", type=Path, default=Path(os.environ.get("EXPOSE_FACE_MODEL", DEFAULT_MODEL)))
    ap.add_argument("--faces", type=int, default=16, help="faces per round (speed) or per clip (separation)")
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 16], help="batch sizes for the net")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pin", type=int, default=None, help="pin to this core before anything starts")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--separation", action="store_true", help="corpus distance distributions instead of speed")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--identities", nargs="+", default=MULTI_RECORDING)
    args = ap.parse_args()
    if args.pin is not None:
        # before the imports in speed/separation, so that any thread pool sees one core
        os.sched_setaffinity(0, {args.pin})
    if args.separation:
        separation(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
