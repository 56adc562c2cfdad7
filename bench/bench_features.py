#!/usr/bin/env python3
"""Feature extraction speed on corpus clips of different resolutions.

    .venv/bin/python bench/bench_features.py                      # default clips, table
    .venv/bin/python bench/bench_features.py --repeat 3 --json    # machine-readable
    .venv/bin/python bench/bench_features.py --clips real/trump/speech_01.mp4 /path/to/any.mp4

Every measurement runs ``expose.monitor.features.extract.extract_track`` (no feature cache) in a fresh
subprocess, so that peak RSS is per clip and so that the single-core run is pinned
before any thread exists: MediaPipe's landmarker and PyAV's decoder start their own
thread pools, which use every core they are allowed. Two runs per clip: all cores, and
pinned to core 0 with ``os.sched_setaffinity`` (where the OS has it).

Columns: processing seconds are the median over ``--repeat`` runs (each run builds a
new landmarker, as a real extraction does); x RT = media seconds / processing seconds;
frames/s counts decoded source frames; "landmark s" is the time inside the
landmarker, the rest being decoding, scaling and the audio features.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = (REPO / ".." / "shared" / "corpus").resolve()
DEFAULT_MODEL = (REPO / ".." / "shared" / "models" / "face_landmarker.task").resolve()
DEFAULT_CLIPS = [
    "grid_s1/video/bbaf2n.mpg",  # 360x288 MPEG-1, 25 fps, 3 s
    "real/lrs2_00008/00008.mp4",  # 160x160, 25 fps, 3 s
    "real/bobmenendez/hdtf_000.mp4",  # 512x512 HDTF, 25 fps, 8 s
    "real/conan_obrien/conan_obrien.mp4",  # 1920x1080, 29.97 fps, 5 s
]


def _worker(args: argparse.Namespace) -> None:
    """Measure one clip in this process and print one JSON object."""
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    import resource

    import av

    import expose.monitor.features.extract as features
    from expose.monitor.config import FeatureConfig

    path = Path(args.worker)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        width, height = v.codec_context.width, v.codec_context.height
        rate = float(v.average_rate) if v.average_rate else float("nan")

    decoded = 0
    landmark_s = 0.0
    original_process = features.ExpressionExtractor.process

    def timed_process(self: Any, image: Any, time_s: float) -> Any:  # instrumentation only: same call, timed
        nonlocal landmark_s
        t = time.perf_counter()
        try:
            return original_process(self, image, time_s)
        finally:
            landmark_s += time.perf_counter() - t

    def progress(_: float) -> None:  # called once per decoded video frame
        nonlocal decoded
        decoded += 1

    # instrumentation only: the same method, timed
    features.ExpressionExtractor.process = timed_process  # type: ignore[method-assign]
    cfg = FeatureConfig()
    runs, marks = [], []
    for _ in range(args.repeat):
        decoded, landmark_s = 0, 0.0
        t0 = time.perf_counter()
        track = features.extract_track(path, cfg, Path(args.model), progress=progress)
        runs.append(time.perf_counter() - t0)
        marks.append(landmark_s)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        "clip": args.label or str(path),
        "width": width, "height": height, "source_fps": round(rate, 3),
        "media_s": round(track.duration, 3),
        "source_frames": decoded, "frames_25fps": len(track),
        "face_ratio": round(track.face_ratio, 3),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "processing_s": [round(r, 3) for r in runs],
        "landmark_s": [round(m, 3) for m in marks],
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }))


def _measure(path: Path, label: str, repeat: int, model: Path, pin: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(path), "--label", label,
           "--repeat", str(repeat), "--model", str(model)]
    if pin is not None:
        cmd += ["--pin", str(pin)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {label} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _environment() -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "-"

    cpu = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "mediapipe": version("mediapipe"),
        "av": version("av"),
        "numpy": version("numpy"),
    }


def _summarise(all_cores: dict, one_core: dict | None) -> dict:
    proc = statistics.median(all_cores["processing_s"])
    row = {k: all_cores[k] for k in ("clip", "width", "height", "source_fps", "media_s",
                                     "source_frames", "frames_25fps", "face_ratio")}
    row |= {
        "cores": all_cores["cores"],
        "processing_s": round(proc, 3),
        "landmark_s": round(statistics.median(all_cores["landmark_s"]), 3),
        "x_realtime": round(all_cores["media_s"] / proc, 2),
        "frames_per_s_per_core": round(all_cores["source_frames"] / proc / all_cores["cores"], 1),
        "peak_rss_mb": all_cores["peak_rss_mb"],
    }
    if one_core is not None:
        p1 = statistics.median(one_core["processing_s"])
        row |= {
            "pinned_processing_s": round(p1, 3),
            "pinned_x_realtime": round(one_core["media_s"] / p1, 2),
            "pinned_frames_per_s": round(one_core["source_frames"] / p1, 1),
            "pinned_peak_rss_mb": one_core["peak_rss_mb"],
        }
    return row


def _table(rows: list[dict], env: dict) -> str:
    head = ["clip", "WxH", "src fps", "media s", "frames src/25", "proc s", "landmark s",
            "x RT", "fr/s/core", "1-core s", "1-core x RT", "1-core fr/s", "peak RSS MB"]
    body = []
    for r in rows:
        body.append([
            r["clip"], f"{r['width']}x{r['height']}", f"{r['source_fps']:g}", f"{r['media_s']:.2f}",
            f"{r['source_frames']}/{r['frames_25fps']}", f"{r['processing_s']:.2f}",
            f"{r['landmark_s']:.2f}", f"{r['x_realtime']:.2f}", f"{r['frames_per_s_per_core']:.1f}",
            f"{r.get('pinned_processing_s', float('nan')):.2f}",
            f"{r.get('pinned_x_realtime', float('nan')):.2f}",
            f"{r.get('pinned_frames_per_s', float('nan')):.1f}",
            f"{r['peak_rss_mb']:.0f}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    header = (f"# {env['cpu']}, nproc={env['nproc']}; python {env['python']}, "
              f"mediapipe {env['mediapipe']}, av {env['av']}, numpy {env['numpy']}")
    return "\n".join([header, fmt(head), *map(fmt, body)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", nargs="+", default=DEFAULT_CLIPS,
                    help="media files, absolute or relative to --corpus")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--model", type=Path,
                    default=Path(os.environ.get("EXPOSE_FACE_MODEL", DEFAULT_MODEL)))
    ap.add_argument("--repeat", type=int, default=1, help="runs per clip and mode (median)")
    ap.add_argument("--no-pinned", action="store_true", help="skip the single-core runs")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--label", help=argparse.SUPPRESS)
    ap.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not args.model.is_file():
        ap.error(f"face model not found: {args.model} (give --model or set EXPOSE_FACE_MODEL)")
    can_pin = hasattr(os, "sched_setaffinity") and not args.no_pinned
    pin_core = min(os.sched_getaffinity(0)) if can_pin else None
    rows = []
    for clip in args.clips:
        path = Path(clip) if Path(clip).is_absolute() else args.corpus / clip
        if not path.is_file():
            ap.error(f"clip not found: {path}")
        print(f"bench: {clip} ...", file=sys.stderr, flush=True)
        full = _measure(path, clip, args.repeat, args.model, None)
        pinned = _measure(path, clip, args.repeat, args.model, pin_core) if can_pin else None
        rows.append(_summarise(full, pinned))
    env = _environment()
    if args.json:
        print(json.dumps({"environment": env, "results": rows}, indent=2))
    else:
        print(_table(rows, env))


if __name__ == "__main__":
    main()
