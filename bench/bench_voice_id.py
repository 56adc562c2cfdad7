#!/usr/bin/env python3
"""Voice embedding (GE2E) speed and how well it tells people apart on the corpus.

    .venv/bin/python bench/bench_voice_id.py                    # speed, then similarities
    .venv/bin/python bench/bench_voice_id.py --skip-similarity  # speed only
    .venv/bin/python bench/bench_voice_id.py --json             # one JSON object

Speed: ms of CPU wall time per second of speech for ``VoiceEncoder.embed`` (mel + network),
median over ``--repeat`` runs, at 1 thread (the default), 2 threads and the process default;
the model load time is printed apart.

Similarity: every real corpus clip with audio is decoded (MediaReader), reduced to its
speech ticks (the project's VAD, ``speech_only``) and embedded; clips with less speech
than the encoder's minimum are counted as insufficient. For identities with several
recordings, "same" is the cosine between clips from different recordings of one person
(VidTIMIT: different sessions, s1_/s2_/s3_ prefixes), "other" the cosine to every clip
of every other identity. Also printed: the AUC of same-vs-other and, per person, whether
their closest other recording is nearer than their nearest stranger.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from expose.monitor.features.audio import speech_activity
from expose.monitor.features.timeline import SAMPLES_PER_FRAME, SampleBuffer
from expose.monitor.features.voice_id import VoiceEncoder, speech_only
from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, MediaReader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = (REPO / ".." / "shared" / "corpus").resolve()
SPEED_CLIP = "real/trump/clip_02.mp4"  # 13.7 s, about 12 s of speech


def read_audio(path: Path) -> np.ndarray:
    """All of a file's audio as 16 kHz mono float32 (sample 0 = the media origin)."""
    buf = SampleBuffer()
    with MediaReader(path, require_video=False, require_audio=True) as reader:
        for item in reader.read(max_side=128):  # small frames: only the audio is wanted
            if isinstance(item, AudioChunk):
                buf.put(item)
    return buf.read(0, buf.end)


def read_speech(path: Path) -> np.ndarray:
    """The speech ticks of a file, as the VAD marks them."""
    samples = read_audio(path)
    n_ticks = len(samples) // SAMPLES_PER_FRAME
    return speech_only(samples, speech_activity(samples, n_ticks))


def recording_of(identity: str, path: str) -> str:
    """Which recording a clip belongs to: the file, except VidTIMIT's session prefix."""
    name = Path(path).stem
    if identity.startswith("vidtimit_") and name[:3] in ("s1_", "s2_", "s3_"):
        return name[:2]
    return name


def speed(corpus: Path, repeat: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    encoder = VoiceEncoder()
    load_s = time.perf_counter() - t0
    speech = read_speech(corpus / SPEED_CLIP)
    seconds = len(speech) / AUDIO_RATE
    out: dict[str, Any] = {"clip": SPEED_CLIP, "speech_s": round(seconds, 2), "load_ms": round(1000 * load_s, 1)}
    for label, threads in (("1 thread", 1), ("2 threads", 2), ("process default", None)):
        encoder.threads = threads
        encoder.embed_speech(speech)  # warm-up: first call allocates the LSTM workspace
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            encoder.embed_speech(speech)
            times.append(time.perf_counter() - t)
        out[f"ms_per_speech_s ({label})"] = round(1000 * statistics.median(times) / seconds, 2)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two unit vectors (GE2E embeddings are L2-normalised)."""
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def _auc(pos: list[float], neg: list[float]) -> float:
    """P(a same-person pair scores above a stranger pair), ties count half."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def similarity(corpus: Path) -> dict[str, Any]:
    encoder = VoiceEncoder()
    with open(corpus / "MANIFEST.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] == "real" and r["audio"] == "1"]
    clips: list[tuple[str, str, np.ndarray]] = []  # (identity, recording, embedding)
    insufficient = []
    for r in rows:
        emb = encoder.embed_speech(read_speech(corpus / r["path"]))
        if emb is None:
            insufficient.append(r["path"])
        else:
            clips.append((r["identity"], recording_of(r["identity"], r["path"]), emb))
    recordings: dict[str, set[str]] = defaultdict(set)
    for ident, rec, _ in clips:
        recordings[ident].add(rec)
    multi = sorted(i for i, recs in recordings.items() if len(recs) > 1)
    same: list[float] = []
    other: list[float] = []
    per_person: dict[str, dict[str, float]] = {}
    for ident in multi:
        mine = [(rec, e) for i, rec, e in clips if i == ident]
        s = [cosine(a, b) for k, (ra, a) in enumerate(mine) for rb, b in mine[k + 1:] if ra != rb]
        o = [cosine(a, e) for _, a in mine for i, _, e in clips if i != ident]
        same += s
        other += o
        per_person[ident] = {"clips": len(mine), "same_min": round(min(s), 3), "same_mean": round(float(np.mean(s)), 3),
                             "other_max": round(max(o), 3), "other_mean": round(float(np.mean(o)), 3),
                             "auc": round(_auc(s, o), 3)}
    return {
        "clips_embedded": len(clips), "insufficient": insufficient, "identities": len(recordings),
        "multi_recording_identities": multi, "per_person": per_person,
        "same": {"n": len(same), "min": round(min(same), 3), "mean": round(float(np.mean(same)), 3),
                 "p10": round(float(np.percentile(same, 10)), 3)},
        "other": {"n": len(other), "mean": round(float(np.mean(other)), 3),
                  "p90": round(float(np.percentile(other, 90)), 3), "max": round(max(other), 3)},
        "auc_same_vs_other": round(_auc(same, other), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-similarity", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (args.corpus / "MANIFEST.csv").is_file():
        print(f"corpus not found at {args.corpus}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"speed": speed(args.corpus, args.repeat)}
    if not args.json:
        print(json.dumps(result["speed"], indent=1))
    if not args.skip_similarity:
        result["similarity"] = similarity(args.corpus)
        if not args.json:
            print(json.dumps(result["similarity"], indent=1))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
