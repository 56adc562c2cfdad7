#!/usr/bin/env python3
"""The appearance embedding (``expose train-appearance``) on the dev identities' media: does a
network trained only on self-blended pseudo-fakes of other people see real manipulations?

For every clip of the attack manifest (bench/make_attacks.py) in the families genuine, swap
(another dev identity's face swapped in), reenact (its own face made to follow another dev
identity's motion), lipsync (the corpus lip-sync fakes) and, as
controls the face is untouched in, dub and tts: up to --faces faces (every --stride-th decoded
frame). Per clip, the mean over its faces of
  head     the network's real-vs-pseudo-fake logit (> 0: looks blended);
  emb      the distance of the face's appearance embedding to the mean embedding of the
           claimed identity's enrollment faces (DiffFake's pair idea without its mixture model);
  pair     DiffFake's score: the pair model's negative log-likelihood of (reference, face) pairs,
           averaged over the claimed identity's enrollment faces (its references);
  face     the dlib face descriptor's distance to the claimed identity's enrollment mean
           (the face verification term, raw).
Clip AUC per family against the genuine clips of the same quality. Dev identities were kept out
of the embedding's training (``--exclude`` of the training run) and of every choice.

    .venv/bin/python bench/appearance_eval.py --weights appearance.safetensors [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from expose.monitor.features.appearance import AppearanceEmbedder, load_score_tensors, to_input
from expose.monitor.features.face_id import DlibFaceEmbedder, FaceSample, sample_faces
from expose.monitor.metrics import roc_auc
from expose.monitor.model.difffake import PairModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FAMILIES = ["swap", "reenact", "lipsync", "dub", "tts"]


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_attacks import DEV_SPLIT

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--attacks", type=Path, default=Path.home() / ".cache/expose/attacks")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--faces", type=int, default=24)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    app, dlib_net = AppearanceEmbedder(args.weights), DlibFaceEmbedder()
    pair = PairModel.from_tensors(load_score_tensors(args.weights))

    def measure(path: Path) -> tuple[list[FaceSample], np.ndarray, np.ndarray, np.ndarray]:
        faces, _ = sample_faces(path, args.face_model, args.faces, args.stride)
        crops = app.crops(faces)
        with torch.no_grad():
            emb, logit = app.net(to_input(crops))
        return faces, emb.numpy(), logit.numpy(), dlib_net.embed(faces)

    refs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, (enrol, _) in DEV_SPLIT.items():
        parts = [measure(SHARED / "corpus" / rel) for rel in enrol]
        emb_all = np.concatenate([p[1] for p in parts])
        spread = emb_all[:: max(1, len(emb_all) // 8)]  # about 8 references for the pair score
        refs[name] = (emb_all.mean(0), np.concatenate([p[3] for p in parts]).mean(0), spread)
    manifest = json.loads((args.attacks / "manifest.json").read_text())
    rows = []
    for e in manifest:
        if e["family"] not in ("genuine", *FAMILIES):
            continue
        faces, emb, logit, desc = measure(Path(e["path"]))
        if not faces:
            continue
        r_emb, r_face, r_pairs = refs[e["claimed"]]
        rows.append({**e, "n": len(faces), "head": float(logit.mean()),
                     "emb": float(np.linalg.norm(emb - r_emb, axis=1).mean()),
                     "pair": float(pair.distance(r_pairs, emb).mean()),
                     "face": float(np.linalg.norm(desc - r_face, axis=1).mean())})
        print(f"{e['quality']:<11} {e['family']:<8} {Path(e['path']).name:<28} head {rows[-1]['head']:+.2f} "
              f"emb {rows[-1]['emb']:.3f} pair {rows[-1]['pair']:.1f} face {rows[-1]['face']:.3f}", flush=True)
    table = {}
    for q in sorted({r["quality"] for r in rows}):
        gen = [r for r in rows if r["quality"] == q and r["family"] == "genuine"]
        print(f"\n== {q} ==  clip AUC against {len(gen)} genuine clips")
        print(f"{'family':<10}{'n':>4}{'head':>8}{'emb':>8}{'pair':>8}{'face':>8}")
        for fam in FAMILIES:
            att = [r for r in rows if r["quality"] == q and r["family"] == fam]
            if not att or not gen:
                continue
            aucs = {k: roc_auc(np.r_[np.zeros(len(gen)), np.ones(len(att))],
                               np.array([r[k] for r in gen + att])) for k in ("head", "emb", "pair", "face")}
            table[f"{q}/{fam}"] = {"n": len(att), **aucs}
            print(f"{fam:<10}{len(att):>4}" + "".join(f"{aucs[k]:>8.3f}" for k in ("head", "emb", "pair", "face")))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
