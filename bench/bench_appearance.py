#!/usr/bin/env python3
"""DiffFake's appearance embedding: milliseconds per face on this machine.

Faces come from every 5th frame of a real clip (the landmarker is not timed). Timed, per face:
``crop`` (the landmark-box square, resized to the network's input), the network one face per
call (``net x1``: what the live featurizer does, one face per sampled tick) and in one batch
(``net xB``: offline), and ``embed`` end to end one face per call. Median and best of
``--repeat`` rounds, with torch on ``--threads`` threads (the live monitor runs 1).

    .venv/bin/python bench/bench_appearance.py [--weights monitor/assets/appearance-small.safetensors]
        [--clip ../shared/corpus/real/trump/speech_01.mp4] [--faces 32] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from bench_face_id import _timed  # this script's folder is on sys.path when it runs

from expose.monitor.features.appearance import AppearanceEmbedder
from expose.monitor.features.face_id import sample_faces
from expose.monitor.features.identity import STARTER_APPEARANCE

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def timed(fn: Callable[[], object], repeat: int, per: int) -> tuple[float, float]:
    """(median, best) milliseconds per item over ``repeat`` rounds of ``fn`` handling ``per``
    items, after one warm-up call (first-call allocations); the rounds are bench_face_id's."""
    fn()
    median, best, _ = _timed(fn, repeat)
    return median * 1000 / per, best * 1000 / per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=STARTER_APPEARANCE)
    ap.add_argument("--clip", type=Path, default=SHARED / "corpus/real/trump/speech_01.mp4")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--faces", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    emb = AppearanceEmbedder(args.weights)
    faces, _ = sample_faces(args.clip, args.face_model, args.faces, 5)
    if not faces:
        raise SystemExit(f"{args.clip}: no face found")
    crops = emb.crops(faces)
    n = len(faces)
    res = {
        "crop": timed(lambda: emb.crops(faces), args.repeat, n),
        "net x1": timed(lambda: [emb.embed_crops(crops[i:i + 1]) for i in range(n)], args.repeat, n),
        f"net x{n}": timed(lambda: emb.embed_crops(crops), args.repeat, n),
        "embed x1": timed(lambda: [emb.embed(faces[i:i + 1]) for i in range(n)], args.repeat, n),
    }
    out = {"weights": str(args.weights), "input": emb.cfg.size, "dim": emb.dim, "faces": n, "threads": args.threads,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "ms_per_face": {k: {"median": round(m, 2), "best": round(b, 2)} for k, (m, b) in res.items()}}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{n} faces of {args.clip.name}, {emb.cfg.size} px input, {emb.dim}-d, torch threads {args.threads}")
    for k, (m, b) in res.items():
        print(f"  {k:<10} {m:7.2f} ms/face (best {b:.2f})")


if __name__ == "__main__":
    main()
