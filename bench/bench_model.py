"""Model speed on this machine: enrollment time for 60 s of reference, and scorer
throughput (windows/s and x real time at a 1 s hop) for several batch sizes, plus how
much the audio matters on held-out windows (error ratio with shifted / true audio).

    .venv/bin/python bench/bench_model.py [--model PATH] [--reference CLIP] [--json]

Features come from the feature cache (extracted once; extraction speed is measured by
bench/bench_features.py). Times are wall-clock on whatever else the machine is doing:
report the machine and its load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from expose.monitor.config import STARTER_MODEL, FeatureConfig
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.timeline import FPS
from expose.monitor.features.windows import windows_of
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer
from expose.profiles.enroll import EnrollConfig, enroll
from expose.profiles.store import Reference

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=STARTER_MODEL)
    ap.add_argument("--reference", type=Path, default=SHARED / "corpus/real/tedlieu/speech_01.mp4",
                    help="a clip of at least 60 s (the first 60 s are used)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("EXPOSE_CACHE", Path.home() / ".cache/expose")))
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--steps", type=int, default=300, help="enrollment steps (the CLI default)")
    ap.add_argument("--decision", default="auto", help="decision file, auto (the shipped one) or none")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    base = load_model(args.model, args.decision)
    # extracted with five faces a second, thinned to the configured rate (FeatureTrack.thin_face_ids)
    cache = FeatureCache(args.cache, FeatureConfig(face_id_every=5), args.face_model)
    track = cache.get(args.reference)[0].thin_face_ids(FeatureConfig().face_id_every)
    track = track.segment(0, min(len(track), 60 * FPS))
    ref = [(track, Reference(str(args.reference), track.media_sha256, track.duration, 0))]
    t0 = time.perf_counter()
    profile = enroll("bench", base, ref, EnrollConfig(steps=args.steps))
    enroll_s = time.perf_counter() - t0

    # with the decision (cohort branches, face and voice terms) and the motion terms alone
    scorers = {"decision": Scorer.of(base), "motion only": Scorer(base.model, base.weights.settings())}
    windows = [w for w in windows_of(track, base.model.cfg.window, FPS)
               if not scorers["decision"].insufficiency(w)]
    throughput: dict[str, dict[int, dict[str, float]]] = {}
    for label, scorer in scorers.items():
        throughput[label] = {}
        for batch in (1, 8, 32):
            ws = (windows * ((batch // len(windows)) + 1))[:batch]
            reqs = profile.requests(ws, scorer)
            scorer.score(reqs)  # warm-up
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 5.0:
                scorer.score(reqs)
                n += len(ws)
            rate = n / (time.perf_counter() - t0)
            throughput[label][batch] = {"windows_per_s": round(rate, 2), "x_realtime_at_1s_hop": round(rate, 2)}

    meta_val = base.meta.get("val", {})
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                   f"{torch.get_num_threads()}",
        "model": str(args.model), "parameters": sum(p.numel() for p in base.model.parameters()),
        "forward_passes_per_window": len(base.weights.settings().times) * base.weights.settings().draws * 3,
        "decision": str(base.decision.path) if base.decision else None,
        "cohort_reconstructions_per_window": (len(base.weights.settings().times) * base.weights.settings().cohort_draws
                                              * base.decision.spec.motion_cohort) if base.decision else 0,
        "enroll_60s_reference_s": round(enroll_s, 1), "enroll_steps": args.steps,
        "scorer": throughput,
        "heldout_mouth_error_ratio_shifted_vs_true_audio": {
            "seen_identities": meta_val.get("seen_mouth_audio_shift_ratio"),
            "unseen_identities": meta_val.get("unseen_mouth_audio_shift_ratio")},
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"machine: {out['machine']}; model {out['parameters']} parameters, "
          f"{out['forward_passes_per_window']} sequences per window in one batched pass")
    print(f"enrollment, 60 s reference, {args.steps} steps: {enroll_s:.1f} s")
    for label, rows in throughput.items():
        for b, r in rows.items():
            print(f"scorer ({label}) batch {b:>2}: {r['windows_per_s']:>7.2f} windows/s = "
                  f"{r['x_realtime_at_1s_hop']:.2f} streams in real time at one window per second")
    print(f"held-out mouth error, shifted / true audio: {out['heldout_mouth_error_ratio_shifted_vs_true_audio']}")


if __name__ == "__main__":
    main()
