"""Scorer throughput per backend (torch, onnxruntime) and batch size: windows/s, JSON out.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scorer_backends.py [--model PATH] [--threads 1]
        [--batches 1 8 32 64] [--backends torch onnxruntime] [--seconds 4] [--device cpu] [--out FILE]

The scorer is the whole one-pass scoring (``Scorer.score``: 36 reconstructions per window, the
motion terms, decision none), only the network call differs between backends. Windows are
synthetic (random expressions and audio, a face and speech on every frame): the cost does not
depend on what the windows show. Each batch size is timed on every backend in turn (repeated
calls, interleaved, so a change of load on the machine hits all backends alike); windows/s is
the batch over the median call time. ``bench_scorers`` is importable (``expose bench``).
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from expose.monitor.config import STARTER_MODEL
from expose.monitor.features.windows import AUDIO_DIM, Window
from expose.monitor.model.backends import make_scorer
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer, requests_for


def synthetic_windows(n: int, frames: int, expr_dim: int, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        expr = (rng.normal(size=(frames, expr_dim)) * 0.1).astype(np.float32)
        audio = rng.normal(size=(frames, AUDIO_DIM)).astype(np.float32)
        out.append(Window("bench", float(i), float(i) + frames / 25, expr, audio, np.ones(frames, dtype=bool),
                          np.ones(frames, dtype=np.float32)))
    return out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def bench_scorers(model: Path = STARTER_MODEL, backends: Sequence[str] = ("torch", "onnxruntime"),
                  batches: Sequence[int] = (1, 8, 32, 64), threads: int = 1, seconds: float = 4.0,
                  device: str = "cpu", min_calls: int = 3) -> dict[str, object]:
    """Windows/s of ``Scorer.score`` per backend and batch size (see the module's docstring).
    ``threads``: torch's intra-op threads and onnxruntime's (set here for the whole process)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    base = load_model(model)
    tokens = base.model.id_tokens[0].detach().clone()
    scorers: dict[str, Scorer] = {}
    setup_s: dict[str, float] = {}
    for name in backends:
        t0 = time.perf_counter()
        scorers[name] = make_scorer(base, name, dev, threads=threads)
        setup_s[name] = round(time.perf_counter() - t0, 2)
    cfg = base.model.cfg
    windows = synthetic_windows(max(batches), cfg.window, cfg.expr_dim)
    rates: dict[str, dict[str, float]] = {name: {} for name in backends}
    calls: dict[str, dict[str, int]] = {name: {} for name in backends}
    for b in batches:
        reqs = requests_for(windows[:b], tokens, "bench")
        for scorer in scorers.values():
            scorer.score(reqs)  # warm-up: allocations, kernel choice
        times: dict[str, list[float]] = {name: [] for name in backends}
        start = time.perf_counter()
        while time.perf_counter() - start < seconds * len(backends) or min(map(len, times.values())) < min_calls:
            for name, scorer in scorers.items():
                t0 = time.perf_counter()
                scorer.score(reqs)
                times[name].append(time.perf_counter() - t0)
        for name in backends:
            rates[name][str(b)] = round(b / statistics.median(times[name]), 2)
            calls[name][str(b)] = len(times[name])
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"machine": cpu_name(), "cores": os.cpu_count(),
            "threads": threads, "device": device, "torch": torch.__version__,
            "onnxruntime": _ort_version(), "model": str(model), "model_sha256": base.sha256,
            "reconstructions_per_window": len(base.weights.settings().times) * base.weights.settings().draws * 3,
            "setup_s": setup_s, "windows_per_s": rates, "calls": calls, "loadavg_after": load}


def _ort_version() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return str(ort.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=STARTER_MODEL)
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=4.0, help="timing per batch size and backend")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    result = bench_scorers(args.model, args.backends, args.batches, args.threads, args.seconds, args.device)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
