#!/usr/bin/env python3
"""Live-monitor capacity on this machine: simultaneous real-time streams, latency, memory.

    .venv/bin/python bench/bench_live.py                          # defaults: at most ~6 minutes
    .venv/bin/python bench/bench_live.py --max-streams 4 --level-seconds 20 --memory-seconds 90 --json
    .venv/bin/python bench/bench_live.py --no-identity             # without face / voice embeddings
    .venv/bin/python bench/bench_live.py --decision D --appearance W  # with DiffFake's appearance term
    nice .venv/bin/python bench/bench_live.py --max-streams 0 --memory-seconds 1800 --memory-streams 3  # soak
    .venv/bin/python bench/bench_live.py --max-streams 0 --memory-seconds 180 --memory-streams 2 --tracemalloc 8

One process, the real pipeline of `expose serve` without its HTTP front: the LiveMonitor
(PullSource -> StreamRunner with MediaPipe and the audio features -> the shared
ScoringLoop and Scorer -> AlertPolicy -> SQLite events -> sinks), built by
``expose.monitor.api.serve.build_monitor`` from a config, with corpus clips played as live file
streams (paced at their own frame rate, as a camera would deliver them).

1. Capacity: 1, 2, 3, ... streams at once (fresh streams per level, each claiming one
   profile). After a warm-up, each level measures per stream the frames the pipeline
   took from its source per second against the source's frame rate, and the end-to-end
   latency of every window: from the moment the source delivered the window's last video
   frame to the moment its Score reached the monitor's sinks (what a websocket console
   sees). A level falls behind when any stream takes less than --min-realtime of its
   source's frames (the bounded queue drops the rest), the source itself delivers less
   than that (decoding starved), the p95 latency exceeds --max-latency, or the scoring
   queue drops windows. Stepping stops at the first level that falls behind.
2. Memory: --memory-streams looping streams for --memory-seconds; the process RSS is
   sampled every 2 s: steady-state growth per stream and the drift over the run (a leak
   shows as a steady slope). RSS per capacity level gives the marginal cost of a stream too.
   ``--max-streams 0`` runs only this (a soak); ``--tracemalloc FRAMES`` also snapshots the
   Python heap at 1/3 and at the end and prints the allocation sites that grew, next to the
   RSS growth (what the heap does not explain is native memory).

Instrumentation only: ``expose.monitor.live.monitor.PullSource`` is replaced by a subclass that notes
when each video frame is delivered and taken (the same calls, timed), as
bench_features.py times the landmarker.

Model and profile: --model (default: the configured model, else an untrained model of
the default ModelConfig size, which costs the same to run as a trained one); the
profile is made here with random tokens and thresholds below any distance, so every
stream goes into alert and the alert path (SQLite writes, per-window updates) is part of
what is measured; speed does not depend on what the tokens say.

Identity: with a decision for the model (the shipped one for the starter model), the
monitor computes face descriptors and voice embeddings on every stream's feature thread
and scores the face and voice terms, as `expose serve` does; the bench profile then gets
random enrolled face and voice references. ``--no-identity`` turns the embeddings off
(``features.face_id_every = voice_every = 0``; the decision and its motion cohort stay), to
measure what they cost.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
PROFILE = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=SHARED / "corpus", help="corpus root (clips are relative to it)")
    p.add_argument("--clip", default="real/acosta/cnn_01.mp4",
                   help="clip of the capacity levels; longer than --level-seconds (default: 71 s, 512x512, 25 fps)")
    p.add_argument("--memory-clip", default="real/trump/speech_01.mp4",
                   help="clip looped in the memory run (default: 10 s, 512x512, 25 fps)")
    p.add_argument("--face-model", type=Path, default=None,
                   help="face_landmarker.task (default: env EXPOSE_FACE_MODEL, else ../shared/models)")
    p.add_argument("--model", type=Path, default=None,
                   help="EXAM checkpoint (default: model.path of the default config if that file exists, else an "
                   "untrained model of the default size, which costs the same to run)")
    p.add_argument("--max-streams", type=int, default=8, help="highest level tried (0: only the memory run)")
    p.add_argument("--level-seconds", type=float, default=25.0, help="duration of each level, warm-up included")
    p.add_argument("--warmup-seconds", type=float, default=8.0,
                   help="not measured: landmarker start-up and the first window (2.56 s of media)")
    p.add_argument("--min-realtime", type=float, default=0.9, help="frames taken / source frames, per stream")
    p.add_argument("--max-latency", type=float, default=5.0, help="p95 end-to-end latency limit, seconds")
    p.add_argument("--memory-seconds", type=float, default=120.0, help="memory run (0: skip)")
    p.add_argument("--memory-streams", type=int, default=None,
                   help="streams in the memory run (default: the highest level sustained, 1-4)")
    p.add_argument("--decision", default="auto",
                   help="model.decision: auto (the shipped one for the starter model), none, or a decision file")
    p.add_argument("--native-threads", type=int, default=None,
                   help="live.native_threads: torch and BLAS threads (default: the config's, 1; 0: the "
                        "libraries' defaults, one per core)")
    p.add_argument("--workers", type=int, default=0,
                   help="live.workers: streams featured in N worker processes (0: in the monitor's process). With "
                        "workers the frames taken come from the streams' health counters and the latency from "
                        "each score's frame_latency_s (the frame recorder cannot reach into the workers)")
    p.add_argument("--no-heap-limits", action="store_true", help="live.heap_limits = false (glibc's defaults)")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="cluster mode on this machine: a redis-server, N `expose node ingest` processes and one "
                        "`expose node score` process, the monitor as the console (frames and latency as with "
                        "--workers)")
    p.add_argument("--face-crop", choices=["detect", "track"], default="detect",
                   help="features.face_crop (with --face-backend onnx)")
    p.add_argument("--face-backend", choices=["mediapipe", "onnx"], default="mediapipe",
                   help="features.face_backend: onnx = one face model per process, batched across its streams")
    p.add_argument("--appearance", type=Path, default=None,
                   help="features.appearance_model: DiffFake appearance embeddings of the sampled faces (with a "
                        "--decision that has the appearance term, made with these weights; the profile gets "
                        "random appearance references of the right size)")
    p.add_argument("--no-identity", action="store_true",
                   help="no face descriptors / voice embeddings (they are on when the model has a decision)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the memory run's own process
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="memory run: trace Python allocations (FRAMES frames per traceback), snapshot at 1/3 and at "
                        "the end, print the top growing sites and the Python-heap vs RSS growth to stderr "
                        "(slows the run; native memory does not show)")
    args = p.parse_args(argv)
    if args.warmup_seconds + 5 > args.level_seconds:
        p.error("--level-seconds must leave at least 5 s after --warmup-seconds")
    if args.max_streams < 0 or (args.max_streams == 0 and args.memory_seconds <= 0):
        p.error("--max-streams must be at least 1 (0: only the memory run, which needs --memory-seconds)")
    return args


# ---- instrumentation ---------------------------------------------------------------------

class Recorder:
    """Delivery and take times of video frames, per source URL (one URL per stream)."""

    def __init__(self) -> None:
        self.enabled = True
        self.delivered: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)  # (media t, mono)
        self.taken: dict[str, list[float]] = collections.defaultdict(list)

    def clear(self) -> None:
        self.delivered.clear()
        self.taken.clear()


REC = Recorder()


def install_timed_source() -> None:
    import expose.monitor.live.runner as live
    from expose.monitor.media.reader import VideoFrame
    from expose.monitor.media.sources import PullSource

    class TimedPullSource(PullSource):
        def _deliver(self, item: Any, error: Exception | None = None) -> None:  # decode thread
            if REC.enabled and isinstance(item, VideoFrame):
                REC.delivered[self.url].append((item.time, time.monotonic()))
            super()._deliver(item, error)

        async def recv(self) -> Any:
            item = await super().recv()
            if REC.enabled and isinstance(item, VideoFrame):
                REC.taken[self.url].append(time.monotonic())
            return item

    live.PullSource = TimedPullSource  # type: ignore[misc]


class ScoreSink:
    """An AlertSink that notes when each score event reaches the sinks."""

    name = "bench"

    def __init__(self) -> None:
        # (mono, stream, t1, status, scoring s, frame latency s or None)
        self.scores: list[tuple[float, str, float, str, float, float | None]] = []
        self.record = True  # False: only count (the memory run: a list of every score would grow)
        self.count = 0

    async def send(self, event: Any) -> None:
        if event.type == "score":
            self.count += 1
            if self.record:
                d = event.data
                self.scores.append((time.monotonic(), event.stream, d["t1"], d["status"], d["latency_s"],
                                    d.get("frame_latency_s")))

    async def close(self) -> None:
        pass


# ---- machine and process -----------------------------------------------------------------

def rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


CLUSTER_PIDS: list[int] = []  # --cluster: redis-server and the node processes


def workers_rss_mb(monitor: Any) -> float:
    """RSS of the monitor's worker processes (live.workers) or cluster processes, 0 without."""
    pool = monitor.workers
    own = sum(rss_mb(pid) for pid in pool.pids() if pid is not None) if pool is not None else 0.0
    return own + sum(rss_mb(pid) for pid in CLUSTER_PIDS)


@contextlib.contextmanager
def cluster_nodes(cfg: Any, model_path: Path, n_ingest: int, tmp: Path) -> Any:
    """redis-server plus the node processes of --cluster, on this machine; yields the config with
    cluster.redis_url set (the monitor built from it is the console)."""
    import shutil
    import socket

    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("--cluster needs redis-server (scripts/install-system-deps.sh)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    procs = [subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    f = cfg.features
    toml = (f'profiles_dir = "{cfg.profiles_dir}"\n[cluster]\nredis_url = "{url}"\n'
            f'[features]\nface_model = "{f.face_model}"\nface_backend = "{f.face_backend}"\n'
            f'face_crop = "{f.face_crop}"\n'
            f"face_id_every = {f.face_id_every}\nvoice_every = {f.voice_every}\n"
            f'appearance_model = "{f.appearance_model}"\n'
            f'[model]\ndecision = "{cfg.model.decision}"\n'
            f"[live]\nnative_threads = {cfg.live.native_threads}\n"
            f"heap_limits = {'true' if cfg.live.heap_limits else 'false'}\n")
    (tmp / "cluster.toml").write_text(toml)
    node = [sys.executable, "-m", "expose.monitor.cli", "node"]
    common = ["--config", str(tmp / "cluster.toml"), "--model", str(model_path)]
    try:
        time.sleep(0.5)
        for i in range(n_ingest):
            procs.append(subprocess.Popen([*node, "ingest", *common, "--id", f"ingest-{i}"],
                                          stdout=(tmp / f"ingest-{i}.log").open("wb"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([*node, "score", *common, "--id", "scorer-0"],
                                      stdout=(tmp / "scorer-0.log").open("wb"), stderr=subprocess.STDOUT))
        CLUSTER_PIDS[:] = [p.pid for p in procs]
        import redis

        r = redis.Redis.from_url(url)
        deadline = time.monotonic() + 180
        while True:  # every node up (models loaded): ingest heartbeats, the scorer reading its group
            nodes = len(list(r.scan_iter(match="expose:node:*")))
            groups = r.xinfo_groups("expose:windows") if r.exists("expose:windows") else []
            if nodes == n_ingest and groups:  # the scorer creates the group once its model is loaded
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                tails = "\n".join(f"{f.name}: {f.read_text()[-800:]}" for f in sorted(tmp.glob("*.log")))
                raise SystemExit(f"the cluster did not start (nodes {nodes}/{n_ingest}, groups {groups}, exits "
                                 f"{[p.poll() for p in procs]}):\n{tails}")
            time.sleep(0.5)
        r.close()
        yield cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"redis_url": url})})
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        CLUSTER_PIDS.clear()


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch
    from threadpoolctl import threadpool_info

    return {"cpu": cpu or platform.processor(), "nproc": affinity, "cpu_count": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in load], "torch_threads": torch.get_num_threads(),
            "blas_threads": sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}),
            "python": platform.python_version(), "platform": platform.platform()}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ---- set-up -------------------------------------------------------------------------------

def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Any, Path, str]:
    """(config, model path, model description); writes the bench profile under tmp."""
    import numpy as np
    import torch

    from expose.monitor.config import Config
    from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM
    from expose.monitor.model.exam import Exam, ModelConfig, load_model, save_model
    from expose.monitor.model.verification import IdentityReferences
    from expose.profiles.store import Calibration, Profile, ProfileStore

    face = args.face_model or Path(os.environ.get("EXPOSE_FACE_MODEL") or SHARED / "models" / "face_landmarker.task")
    features: dict[str, Any] = {"face_model": str(face), "face_backend": args.face_backend,
                                "face_crop": args.face_crop}
    if args.no_identity:
        features |= {"face_id_every": 0, "voice_every": 0}
    if args.appearance is not None:
        features["appearance_model"] = str(args.appearance)
    live: dict[str, Any] = {} if args.native_threads is None else {"native_threads": args.native_threads}
    live["workers"] = args.workers
    live["heap_limits"] = not args.no_heap_limits
    cfg = Config.model_validate({"features": features, "model": {"decision": str(args.decision)}, "live": live,
                                 "profiles_dir": str(tmp / "profiles"),
                                 "server": {"db_path": str(tmp / "monitor.sqlite3")}})
    model_path = args.model or cfg.model.path
    if args.model is None and not Path(model_path).is_file():
        torch.manual_seed(0)
        model_path = tmp / "exam-default-untrained.safetensors"
        save_model(Exam(ModelConfig()), model_path, {"note": "untrained, for bench_live.py"})
        what = "untrained, default ModelConfig() size (no starter model found)"
    else:
        what = str(model_path)
    base = load_model(Path(model_path), cfg.model.decision, cfg.features)
    k, d = base.model.null_tokens.shape
    torch.manual_seed(1)
    rng = np.random.default_rng(1)  # enrolled face / voice of the right shapes: the terms cost the same
    app = base.decision.appearance if base.decision is not None else None
    refs = IdentityReferences(rng.normal(size=(16, FACE_ID_DIM)).astype(np.float32) * 0.05,
                              rng.normal(size=(32, VOICE_ID_DIM)).astype(np.float32),
                              rng.normal(size=(16, app.dim)).astype(np.float32) if app is not None
                              else np.zeros((0, 0), np.float32))
    ProfileStore(tmp / "profiles").save(Profile(
        name=PROFILE, base_model_sha256=base.sha256, created=datetime.now(UTC).isoformat(),
        references=[], calibration=Calibration(n_windows=0, mean=-1e9, std=1.0, threshold=-1e9, target_far=0.01),
        enroll={"note": "random tokens, bench_live.py"}, tokens=torch.randn(k, d) * 0.02, identity=refs,
        decision_sha256=base.decision.sha256 if base.decision is not None else None))
    c = base.model.cfg
    return cfg, Path(model_path), f"{what}; d_model={c.d_model} layers={c.n_layers} window={c.window}"


def source_fps(path: Path, at_least_s: float) -> float:
    """The clip's frame rate; it must last the whole level (streams are not looped there)."""
    import av

    from expose.monitor.features.timeline import FPS

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        duration = float(v.duration * v.time_base) if v.duration and v.time_base else (c.duration or 0) / 1e6
        if duration < at_least_s:
            raise SystemExit(f"{path} lasts {duration:.1f} s, less than --level-seconds {at_least_s:g}")
        return float(v.average_rate) if v.average_rate else float(FPS)


# ---- the phases ---------------------------------------------------------------------------

async def add_streams(monitor: Any, clip: Path, prefix: str, n: int, tmp: Path, loop: bool) -> list[tuple[str, str]]:
    from expose.monitor.config import StreamConfig

    out = []
    for i in range(n):
        name = f"{prefix}s{i}"
        url = tmp / f"{name}{clip.suffix}"  # one URL per stream: the recorder keys on it
        if not url.exists():
            url.symlink_to(clip)
        monitor.add_stream(StreamConfig(name=name, url=str(url), profile=PROFILE, realtime=True, loop=loop),
                           persist=False)
        out.append((name, str(url)))
    return out


async def remove_all(monitor: Any) -> None:
    for name in monitor.stream_names():
        await monitor.remove_stream(name)


def _frame_counters(monitor: Any, name: str) -> tuple[int, int]:
    """(frames taken from the source, frames the source queue dropped) so far, all connections."""
    runner = monitor._streams[name].runner
    if runner is None:
        return 0, 0
    return runner.frames_received, runner.health().dropped_frames


async def run_level(monitor: Any, sink: ScoreSink, n: int, clip: Path, fps: float, args: argparse.Namespace,
                    tmp: Path) -> dict[str, Any]:
    REC.clear()
    sink.scores.clear()
    dropped0 = monitor.loop.dropped
    streams = await add_streams(monitor, clip, f"n{n}", n, tmp, loop=False)
    await asyncio.sleep(args.warmup_seconds)
    a = time.monotonic()
    counters_a = {name: _frame_counters(monitor, name) for name, _ in streams}
    rss: list[float] = []
    while time.monotonic() < a + args.level_seconds - args.warmup_seconds:
        await asyncio.sleep(1.0)
        rss.append(rss_mb() + workers_rss_mb(monitor))
    b = time.monotonic()
    span = b - a
    counters_b = {name: _frame_counters(monitor, name) for name, _ in streams}
    health = {name: monitor.view(name).health for name, _ in streams}
    per_stream: list[dict[str, Any]] = []
    # from the frame that completed each window to its score, in both modes (comparable across them)
    frame_lats = [fl for mono, _, _, _, _, fl in sink.scores if a <= mono < b and fl is not None]
    e2e_all: list[float] = []
    scoring_all: list[float] = []
    for name, url in streams:
        delivered = REC.delivered.get(url, [])
        taken = REC.taken.get(url, [])
        e2e, scoring = [], []
        if args.workers or args.cluster:  # the streams' own counters; latency from the frame that completed a window
            (took_a, lost_a), (took_b, lost_b) = counters_a[name], counters_b[name]
            t_fps = (took_b - took_a) / span
            d_fps = t_fps + (lost_b - lost_a) / span
            for mono, stream, _t1, _status, lat, frame_lat in sink.scores:
                if stream == name and a <= mono < b and frame_lat is not None:
                    e2e.append(frame_lat)
                    scoring.append(lat)
        else:
            d_fps = sum(1 for _, t in delivered if a <= t < b) / span
            t_fps = sum(1 for t in taken if a <= t < b) / span
            media_t = [m for m, _ in delivered]
            for mono, stream, t1, _status, lat, _frame_lat in sink.scores:
                if stream != name or not a <= mono < b:
                    continue
                i = bisect.bisect_right(media_t, t1 - 0.5 / fps) - 1  # the window's last frame (stream t = media t)
                if i >= 0:
                    e2e.append(mono - delivered[i][1])
                    scoring.append(lat)
        e2e_all += e2e
        scoring_all += scoring
        h = health[name]
        per_stream.append({"stream": name, "source_fps": round(d_fps, 2), "taken_fps": round(t_fps, 2),
                           "realtime": round(t_fps / fps, 3), "windows_per_s": round(len(e2e) / span, 2),
                           "e2e_p50_s": r3(pct(e2e, 50)), "e2e_p95_s": r3(pct(e2e, 95)),
                           "dropped_frames": h.dropped_frames if h else None,
                           "skipped_windows": h.skipped_windows if h else None, "phase": h.phase if h else None})
    await remove_all(monitor)
    worst = min(s["realtime"] for s in per_stream)
    worst_source = min(s["source_fps"] for s in per_stream) / fps
    p95 = pct(e2e_all, 95)
    reasons = []
    if worst < args.min_realtime:
        reasons.append(f"a stream took {100 * worst:.0f}% of its source's frames")
    if worst_source < args.min_realtime:
        reasons.append(f"a source delivered {100 * worst_source:.0f}% of its frame rate (decoding starved)")
    if p95 is None:
        reasons.append("no window was scored in the measured interval")
    elif p95 > args.max_latency:
        reasons.append(f"p95 latency {p95:.2f} s > {args.max_latency} s")
    if monitor.loop.dropped > dropped0:
        reasons.append(f"the scoring queue dropped {monitor.loop.dropped - dropped0} windows")
    return {"streams": n, "measured_s": round(span, 1), "min_realtime": worst,
            "e2e_p50_s": r3(pct(e2e_all, 50)), "e2e_p95_s": r3(p95), "e2e_max_s": r3(max(e2e_all, default=None)),
            "frame_latency_p50_s": r3(pct(frame_lats, 50)), "frame_latency_p95_s": r3(pct(frame_lats, 95)),
            "scoring_p50_s": r3(pct(scoring_all, 50)), "scoring_p95_s": r3(pct(scoring_all, 95)),
            "windows": len(e2e_all), "rss_mb": round(statistics.median(rss), 1) if rss else None,
            "sustained": not reasons, "behind_because": reasons, "per_stream": per_stream}


def trace_report(first: tuple[Any, float, float], last: tuple[Any, float, float], top: int = 25) -> None:
    """The Python-heap growth between two tracemalloc snapshots against the RSS growth (what the
    heap does not explain is native: MediaPipe, torch, BLAS arenas, malloc fragmentation), and
    the allocation sites that grew most, to stderr."""
    (s1, rss1, t1), (s2, rss2, t2) = first, last
    keep = [tracemalloc.Filter(False, "<frozen importlib._bootstrap>"), tracemalloc.Filter(False, "<unknown>"),
            tracemalloc.Filter(False, tracemalloc.__file__)]
    s1, s2 = s1.filter_traces(keep), s2.filter_traces(keep)
    heap1 = sum(st.size for st in s1.statistics("filename")) / 2**20
    heap2 = sum(st.size for st in s2.statistics("filename")) / 2**20
    minutes = max(1e-9, (t2 - t1) / 60)
    print(f"tracemalloc {t1:.0f}-{t2:.0f} s: Python heap {heap1:.1f} -> {heap2:.1f} MB "
          f"({(heap2 - heap1) / minutes:+.2f} MB/min); RSS {rss1:.1f} -> {rss2:.1f} MB "
          f"({(rss2 - rss1) / minutes:+.2f} MB/min)", file=sys.stderr)
    for st in s2.compare_to(s1, "traceback")[:top]:
        print(f"{st.size_diff / 1024:+10.1f} KiB {st.count_diff:+8d} blocks  (now {st.size / 1024:.1f} KiB)",
              file=sys.stderr)
        for line in st.traceback.format(limit=6, most_recent_first=True):
            print("    " + line, file=sys.stderr)
    sys.stderr.flush()


async def run_memory(monitor: Any, sink: ScoreSink, n: int, clip: Path, args: argparse.Namespace,
                     tmp: Path) -> dict[str, Any]:
    REC.enabled = False  # nothing of the bench's own grows during this run
    REC.clear()
    sink.scores.clear()
    sink.record, sink.count = False, 0
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    before = rss_mb()
    t0 = time.monotonic()
    streams = await add_streams(monitor, clip, "mem", n, tmp, loop=True)
    samples: list[tuple[float, float]] = []
    first: tuple[Any, float, float] | None = None  # (snapshot, rss, seconds) at 1/3 of the run
    while time.monotonic() < t0 + args.memory_seconds:
        await asyncio.sleep(2.0)
        samples.append((time.monotonic() - t0, rss_mb()))
        if args.tracemalloc and first is None and samples[-1][0] >= args.memory_seconds / 3:
            gc.collect()
            first = (tracemalloc.take_snapshot(), rss_mb(), samples[-1][0])
    if args.tracemalloc and first is not None:
        gc.collect()
        trace_report(first, (tracemalloc.take_snapshot(), rss_mb(), time.monotonic() - t0))
        tracemalloc.stop()
    health = [monitor.view(name).health for name, _ in streams]
    windows = sink.count
    db = sum(f.stat().st_size for f in tmp.glob("monitor.sqlite3*"))  # the events table and its WAL (disk)
    await remove_all(monitor)
    half = args.memory_seconds / 2
    second_half = [(t, r) for t, r in samples if t >= half]
    steady = statistics.median(r for _, r in second_half) if second_half else samples[-1][1]
    slope = None
    if len(second_half) >= 3:  # least squares, MB per minute
        mt = statistics.fmean(t for t, _ in second_half)
        mr = statistics.fmean(r for _, r in second_half)
        var = sum((t - mt) ** 2 for t, _ in second_half)
        slope = sum((t - mt) * (r - mr) for t, r in second_half) / var * 60 if var else None
    # Drift over the second half: RSS at its start against RSS at the end, each the median of
    # a minute of samples (at most a sixth of the run), so that the saw-tooth of a looping
    # stream's reconnects (a source's queue and buffers freed, then refilled) does not decide it.
    span = min(60.0, args.memory_seconds / 6)
    rss_half = statistics.median([r for t, r in second_half if t < half + span] or [second_half[0][1]]) \
        if second_half else samples[-1][1]
    rss_last = statistics.median([r for t, r in samples if t >= samples[-1][0] - span])
    return {"streams": n, "clip": str(clip), "seconds": args.memory_seconds, "rss_before_mb": round(before, 1),
            "rss_steady_mb": round(steady, 1), "rss_peak_mb": round(max(r for _, r in samples), 1),
            "rss_end_mb": round(samples[-1][1], 1), "per_stream_mb": round((steady - before) / n, 1),
            "drift_mb_per_min_second_half": r3(slope), "windows_scored": windows,
            "rss_second_half_start_mb": round(rss_half, 1), "rss_last_minute_mb": round(rss_last, 1),
            "drift_pct_second_half": round(100 * (rss_last - rss_half) / rss_half, 2),
            "database_mb": round(db / 2**20, 1),
            "phases": [h.phase if h else None for h in health],
            "dropped_frames": [h.dropped_frames if h else None for h in health],
            "rss_samples": [[round(t), round(r, 1)] for t, r in samples]}


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from expose.monitor.api.serve import build_monitor

    started = time.monotonic()
    clip = (args.corpus / args.clip).resolve() if not Path(args.clip).is_absolute() else Path(args.clip)
    mem_clip = (args.corpus / args.memory_clip).resolve() if not Path(args.memory_clip).is_absolute() \
        else Path(args.memory_clip)
    for c in (clip, mem_clip):
        if not c.is_file():
            raise SystemExit(f"clip not found: {c}")
    cfg, model_path, model_what = prepare(args, tmp)
    install_timed_source()
    sink = ScoreSink()
    with contextlib.ExitStack() as stack:
        if args.cluster:
            cfg = stack.enter_context(cluster_nodes(cfg, model_path, args.cluster, tmp))
        monitor = build_monitor(cfg, model_path=model_path, sinks=[sink])
        return await _bench(args, tmp, cfg, monitor, sink, clip, mem_clip, model_what, started)


async def _bench(args: argparse.Namespace, tmp: Path, cfg: Any, monitor: Any, sink: Any, clip: Path, mem_clip: Path,
                 model_what: str, started: float) -> dict[str, Any]:
    from expose.monitor.features.timeline import FPS

    fps = source_fps(clip, 0.0 if args.memory_only else args.level_seconds)
    result: dict[str, Any] = {
        "machine": machine(), "model": model_what, "device": str(monitor.scorer.device),
        "decision": str(monitor.scorer.decision.path) if monitor.scorer.decision is not None else None,
        "identity_embeddings": monitor.identity and not args.no_identity,
        "appearance": str(args.appearance) if args.appearance is not None else None,
        "clip": {"path": str(clip), "fps": fps}, "hop_s": cfg.live.hop_s,
        "window_s": monitor.features.window / FPS, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in vars(args).items()},
    }
    await monitor.start()
    try:
        await asyncio.sleep(1)
        gc.collect()
        result["rss_idle_mb"] = round(rss_mb(), 1)
        if args.memory_only:
            result["memory"] = await run_memory(monitor, sink, args.memory_streams or 1, mem_clip, args, tmp)
            return result
        levels = []
        for n in range(1, args.max_streams + 1):
            level = await run_level(monitor, sink, n, clip, fps, args, tmp)
            levels.append(level)
            if not args.json:
                print(_level_line(level), file=sys.stderr, flush=True)
            if not level["sustained"]:
                break
        result["levels"] = levels
        sustained = [lv["streams"] for lv in levels if lv["sustained"]]
        result["sustained_streams"] = max(sustained, default=0)
        if len(levels) >= 2 and all(lv["rss_mb"] is not None for lv in levels):
            xs = [lv["streams"] for lv in levels]
            ys = [lv["rss_mb"] for lv in levels]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            result["rss_per_stream_mb_from_levels"] = round(
                sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs), 1)
    finally:
        await monitor.stop()
        monitor.store.close()
    result["total_s"] = round(time.monotonic() - started, 1)
    return result


def memory_run(args: argparse.Namespace, streams: int, whole: bool = False) -> dict[str, Any]:
    """The memory run in a process of its own, so that its baseline is a monitor that never had a
    stream (memory that earlier streams freed stays with the process and would hide the growth).
    ``whole``: that process's whole result (machine, model, ...), else its idle RSS and memory run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-only", "--json", "--memory-streams", str(streams),
           "--memory-seconds", str(args.memory_seconds), "--corpus", str(args.corpus),
           "--memory-clip", str(args.memory_clip)]
    if args.face_model is not None:
        cmd += ["--face-model", str(args.face_model)]
    if args.model is not None:
        cmd += ["--model", str(args.model)]
    cmd += ["--decision", str(args.decision)] + (["--no-identity"] if args.no_identity else [])
    cmd += ["--appearance", str(args.appearance)] if args.appearance is not None else []
    cmd += ["--tracemalloc", str(args.tracemalloc)] if args.tracemalloc else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.memory_seconds + 300)
    if args.tracemalloc:
        print(proc.stderr, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"memory run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout)
    return r if whole else {"rss_idle_mb": r["rss_idle_mb"], **r["memory"]}  # type: ignore[no-any-return]


def _level_line(lv: dict[str, Any]) -> str:
    verdict = "ok" if lv["sustained"] else "BEHIND: " + "; ".join(lv["behind_because"])
    return (f"{lv['streams']:2d} stream(s): realtime >= {100 * lv['min_realtime']:.0f}%  e2e p50 {lv['e2e_p50_s']} s"
            f"  p95 {lv['e2e_p95_s']} s  (from the completing frame: p95 {lv['frame_latency_p95_s']} s; scoring p50 "
            f"{lv['scoring_p50_s']} s)  RSS {lv['rss_mb']} MB  {verdict}")


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, nproc {m['nproc']}, load average at start {m['loadavg_at_start']}, "
             f"torch threads {m['torch_threads']}, BLAS threads {m['blas_threads']}, {m['platform']}",
             f"model: {r['model']}  device: {r['device']}",
             f"decision: {r['decision']}  face / voice embeddings: {'on' if r['identity_embeddings'] else 'off'}"
             f"  appearance: {r.get('appearance') or 'off'}",
             f"clip: {r['clip']['path']} ({r['clip']['fps']:g} fps), window {r['window_s']} s, hop {r['hop_s']} s",
             f"idle RSS (model loaded, no stream): {r['rss_idle_mb']} MB"]
    if "levels" in r:  # not with --max-streams 0
        lines += ["", "streams  realtime(min)  e2e p50  e2e p95  scoring p50  windows  RSS MB  verdict"]
        for lv in r["levels"]:
            verdict = "sustained" if lv["sustained"] else "behind: " + "; ".join(lv["behind_because"])
            lines.append(f"{lv['streams']:7d}  {100 * lv['min_realtime']:12.0f}%  {lv['e2e_p50_s']!s:>7}  "
                         f"{lv['e2e_p95_s']!s:>7}  {lv['scoring_p50_s']!s:>11}  {lv['windows']:7d}  "
                         f"{lv['rss_mb']!s:>6}  {verdict}")
        lines.append(f"\nsustained real-time streams: {r['sustained_streams']}")
    if "rss_per_stream_mb_from_levels" in r:
        lines.append(f"RSS per stream (slope over the levels): {r['rss_per_stream_mb_from_levels']} MB")
    if mem := r.get("memory"):
        lines.append(f"memory run (own process): {mem['streams']} looping stream(s) of {mem['clip']}, "
                     f"{mem['seconds']:.0f} s: RSS "
                     f"{mem['rss_before_mb']} -> steady {mem['rss_steady_mb']} MB (peak {mem['rss_peak_mb']}, end "
                     f"{mem['rss_end_mb']}), {mem['per_stream_mb']} MB per stream, drift over the second half "
                     f"{mem['drift_mb_per_min_second_half']} MB/min (least squares); second half "
                     f"{mem['rss_second_half_start_mb']} -> {mem['rss_last_minute_mb']} MB (medians of its first "
                     f"and the last minute): drift {mem['drift_pct_second_half']:+.2f} %; "
                     f"{mem['windows_scored']} windows scored, phases {mem['phases']}, dropped frames "
                     f"{mem['dropped_frames']}, database + WAL {mem['database_mb']} MB")
    lines.append(f"total {r['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    t_main = time.monotonic()
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.max_streams == 0 and not args.memory_only:  # the memory run alone (a soak)
        result = memory_run(args, args.memory_streams or 1, whole=True)
        result["total_s"] = round(time.monotonic() - t_main, 1)
        print(json.dumps(result, indent=2) if args.json else report(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-live-") as d:
        result = asyncio.run(bench(args, Path(d)))
    if args.memory_seconds > 0 and not args.memory_only:
        m = args.memory_streams or min(4, max(1, result["sustained_streams"]))
        if not args.json:
            print(f"memory run: {m} looping stream(s) for {args.memory_seconds:.0f} s", file=sys.stderr, flush=True)
        result["memory"] = memory_run(args, m)
        result["total_s"] = round(time.monotonic() - t_main, 1)
    print(json.dumps(result, indent=2) if args.json else report(result))


if __name__ == "__main__":
    main()
