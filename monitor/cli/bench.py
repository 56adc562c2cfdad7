"""`expose bench`: the throughput figures of this machine in one JSON object.

It runs the benchmark scripts of the source checkout's ``bench/`` folder, each in a process of
its own (so that thread settings and memory of one do not colour the next), one after the other:

- ``face_model``: frames/s of the face model, MediaPipe vs the batched ONNX path, per batch size
  (bench/face_model_speed.py);
- ``scorer``: windows/s of the scorer per backend (torch, onnxruntime) and batch size
  (bench/scorer_backends.py);
- ``live``: real-time streams sustained by one node, in one process and with ``--workers``
  processes, each with MediaPipe (the default) and with the ONNX face model batched across the
  process's streams (``features.face_backend = "onnx"``, crop "track"), and as a cluster on
  this machine (redis-server, ``--workers`` ingest nodes, a scorer node, the console; needs
  redis-server), with p50/p95 latency from the frame that completed each window and RSS per
  stream (bench/bench_live.py), and each run's ratio to the default (one process, MediaPipe).

``expose bench`` needs the source checkout (the README's set-up installs it editable); an
installed wheel has no ``bench/`` and gets a one-line error. ``--quick`` shortens every part
(a smoke run: the figures are noisier).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from expose.monitor.cli.app import app, err_console
from expose.monitor.errors import ExposeError

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, args: list[str], json_file: Path | None, timeout: float) -> dict[str, Any]:
    """One benchmark script in its own process; its JSON (from ``json_file`` or stdout)."""
    cmd = [sys.executable, str(BENCH_DIR / script), *args]
    err_console.print(f"bench: {script} {' '.join(args)}", markup=False, highlight=False)
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"{script} did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{script} failed (exit {done.returncode}): {tail[0]}"}
    text = json_file.read_text() if json_file is not None and json_file.is_file() else done.stdout
    try:
        out: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError:
        return {"error": f"{script} printed no JSON"}
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b not in (None, 0) else None


@app.command()
def bench(
    workers: Annotated[int, typer.Option(help="Worker processes of the multi-process live run (default: one per "
                                              "core).")] = 0,
    max_streams: Annotated[int, typer.Option(help="Highest number of streams the live runs try.")] = 8,
    quick: Annotated[bool, typer.Option("--quick", help="Shorter runs (a smoke test; noisier figures).")] = False,
    skip: Annotated[list[str] | None, typer.Option(help="Leave out a part: face_model, scorer, live.")] = None,
    decision: Annotated[str, typer.Option(help="model.decision of the live runs: none (the default configuration), "
                                               "auto (the shipped decision, face and voice embeddings on) or a "
                                               "file.")] = "none",
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Measure this machine: face model frames/s, scorer windows/s per backend and batch size,
    and real-time streams sustained per node in one process and with worker processes (JSON)."""
    if not (BENCH_DIR / "bench_live.py").is_file():
        raise ExposeError(f"expose bench runs the scripts of the source checkout's bench/ folder; not found at "
                          f"{BENCH_DIR} (install from a checkout: see the README)")
    skip_set = set(skip or ())
    unknown = skip_set - {"face_model", "scorer", "live"}
    if unknown:
        raise ExposeError(f"--skip takes face_model, scorer or live, not {', '.join(sorted(unknown))}")
    n_workers = workers or os.cpu_count() or 1
    result: dict[str, Any] = {"machine": {"platform": platform.platform(), "cores": os.cpu_count(),
                                          "python": platform.python_version()},
                              "quick": quick}
    level_s, warmup = ("14", "6") if quick else ("25", "8")
    with tempfile.TemporaryDirectory(prefix="expose-bench-") as d:
        tmp = Path(d)
        if "face_model" not in skip_set:
            result["face_model"] = _run("face_model_speed.py", ["--frames", "40" if quick else "150", "--json",
                                                                str(tmp / "face.json")], tmp / "face.json", 1800)
        if "scorer" not in skip_set:
            result["scorer"] = _run("scorer_backends.py", ["--seconds", "1.5" if quick else "4", "--out",
                                                           str(tmp / "scorer.json")], tmp / "scorer.json", 1800)
        if "live" not in skip_set:
            common = ["--json", "--max-streams", str(max_streams), "--level-seconds", level_s, "--warmup-seconds",
                      warmup, "--memory-seconds", "0", "--decision", decision]
            onnx_face = ["--face-backend", "onnx", "--face-crop", "track"]
            runs = {"one_process": common, "workers": [*common, "--workers", str(n_workers)],
                    "onnx_face": [*common, *onnx_face],
                    "workers_onnx_face": [*common, *onnx_face, "--workers", str(n_workers)],
                    "cluster_onnx_face": [*common, *onnx_face, "--cluster", str(n_workers)]}
            live: dict[str, Any] = {name: _run("bench_live.py", args, None, 3600) for name, args in runs.items()}
            base = live["one_process"].get("sustained_streams")
            live["workers_n"] = n_workers
            live["streams_ratio"] = {name: _ratio(live[name].get("sustained_streams"), base) for name in runs}
            result["live"] = live
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    print(text)
