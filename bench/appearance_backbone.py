#!/usr/bin/env python3
"""Frozen pretrained face networks + a linear classifier against the from-scratch appearance
CNN (``expose train-appearance``) on the CNN's own task: a real face crop against its
self-blended pseudo-fake, scored on identities neither saw in training.

Material: the trainer's face regions (``collect_faces`` over the manifest's real clips, the
``--exclude`` identities left out, through the trainer's cache), split into train / validation
identities by the trainer's ``split_identities`` (same fraction and seed, so the validation
identities are the training run's). Each face gives a real region and one pseudo-fake region
from ``self_blend`` seeded exactly as ``pair_batch`` seeds it (validation: seed 2**31-1, the j-th
face with (seed, j): the trainer's fixed validation pseudo-fakes, checked against ``pair_batch``
on the first faces; train faces: seed 0). Real and fake share the landmarks; every network gets
the same kind of input for both:

  mp_*      MediaPipe's face landmark network (face_landmarks_detector, ONNX on onnxruntime):
            ``face_crop(region, landmarks, 256, margin 0.25)`` (the landmark box x1.5, about
            MediaPipe's own crop, unrotated), RGB in [0, 1]. Intermediate tensors made graph
            outputs: the ends of the residual stages before each max-pool downsampling
            (add_286 32ch@64x64, add_440 64ch@32x32, add_594 128ch@16x16) and the trunk feeding
            the heads (add_1053 128ch@2x2); each global-average-pooled (``gap``), and the
            16x16 stage also average-pooled on a 4x4 grid (``grid4``, where the blend is).
  dlib      dlib's ResNet descriptor (128-d; ``DlibFaceEmbedder``: its 5-point alignment on
            the region with the face's landmarks), the real region and the fake region.
  cnn_*     the trained CNN (``--weights``, copied aside first: a run may be rewriting it):
            ``cnn_head`` its own real-vs-fake logit on ``pair_batch``'s 128-px crops (no fit:
            the reference); ``cnn_emb`` its 256-d embedding through the same linear probe.

Each feature set: standardised, ``LogisticRegressionCV`` (C from 5-fold CV grouped by identity,
train identities only, ROC AUC), fit on the train identities; the table is the ROC AUC on the
validation identities' pairs (real = 0, pseudo-fake = 1). Pairs are not degraded.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/appearance_backbone.py \\
        --json /tmp/backbone.json [--max-faces 1500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expose.monitor.features.appearance import AppearanceNet, face_crop, load_appearance, to_input
from expose.monitor.features.face_id import DlibFaceEmbedder, FaceSample
from expose.monitor.features.onnx_face import face_model_files
from expose.monitor.metrics import roc_auc
from expose.monitor.training.appearance import FaceRegion, collect_faces, pair_batch, split_identities
from expose.monitor.training.corpus import discover
from expose.monitor.training.sbi import SBIConfig, self_blend

DEV_IDS = "news_anchor_zh,ocasio_cortez,feifeili,trump,vox_7414,macron,kristinoem,tedlieu"
VAL_SEED = 2**31 - 1  # train_appearance's seed for its fixed validation pseudo-fakes
TRAIN_SEED = 0
MP_LAYERS = {"stage64": "add_286", "stage32": "add_440", "stage16": "add_594", "final": "add_1053"}
MP_SIZE = 256


class MediaPipeTrunk:
    """The landmark network with MP_LAYERS as extra outputs (NCHW float tensors)."""

    def __init__(self, onnx_path: Path) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(onnx_path))
        names = {o for n in model.graph.node for o in n.output}
        for layer in MP_LAYERS.values():
            if layer not in names:
                raise SystemExit(f"{onnx_path}: no tensor {layer} (the converter changed?)")
            model.graph.output.append(onnx.helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name

    def features(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """(N, 256, 256, 3) uint8 RGB -> {feature set: (N, D)}."""
        outs = self.sess.run(list(MP_LAYERS.values()), {self.input: crops.astype(np.float32) / 255.0})
        maps = dict(zip(MP_LAYERS, outs, strict=True))
        feats = {f"mp_{k}_gap": v.mean(axis=(2, 3)) for k, v in maps.items()}
        s16 = maps["stage16"]
        n, c, h, w = s16.shape
        feats["mp_stage16_grid4"] = s16.reshape(n, c, 4, h // 4, 4, w // 4).mean(axis=(3, 5)).reshape(n, -1)
        return feats


def pseudo_fakes(faces: list[FaceRegion], seed: int, sbi: SBIConfig) -> list[np.ndarray]:
    """The j-th face's fake region from a generator seeded (seed, j), as ``pair_batch`` draws it."""
    return [self_blend(f.image, f.landmarks, np.random.default_rng([seed, j]), sbi).image for j, f in enumerate(faces)]


def featurize(faces: list[FaceRegion], seed: int, sbi: SBIConfig, mp: MediaPipeTrunk, dlib_emb: DlibFaceEmbedder,
              net: torch.nn.Module | None, cnn_size: int, cnn_margin: float, chunk: int = 32,
              ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({feature set: (2N, D)}, labels (2N,), face index (2N,)); rows real, fake, real, fake..."""
    sets: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for a in range(0, len(faces), chunk):
        part = faces[a:a + chunk]
        # global j: the same draws as pair_batch(faces, arange(len(faces)), seed)
        fakes = [self_blend(f.image, f.landmarks, np.random.default_rng([seed, a + j]), sbi).image
                 for j, f in enumerate(part)]
        regions = [(im, f.landmarks) for f, fk in zip(part, fakes, strict=True) for im in (f.image, fk)]
        crops = np.stack([face_crop(im, lm, MP_SIZE, 0.25) for im, lm in regions])
        out = mp.features(crops)
        out["dlib"] = dlib_emb.embed([FaceSample(im, lm) for im, lm in regions])
        if net is not None:
            x = to_input(np.stack([face_crop(im, lm, cnn_size, cnn_margin) for im, lm in regions]))
            with torch.no_grad():
                emb, logit = net(x)
            out["cnn_emb"] = emb.numpy()
            out["cnn_head"] = logit.numpy()[:, None]
        for k, v in out.items():
            sets.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
        done = min(a + chunk, len(faces))
        print(f"  {done}/{len(faces)} faces, {time.perf_counter() - t0:.0f}s", flush=True)
    feats = {k: np.concatenate(v) for k, v in sets.items()}
    feats["mp_concat_gap"] = np.concatenate([feats[f"mp_{k}_gap"] for k in MP_LAYERS], axis=1)
    feats["mp_concat_gap+dlib"] = np.concatenate([feats["mp_concat_gap"], feats["dlib"]], axis=1)
    labels = np.tile([0.0, 1.0], len(faces))
    return feats, labels, np.repeat(np.arange(len(faces)), 2)


def probe_auc(xtr: np.ndarray, ytr: np.ndarray, gtr: np.ndarray, xva: np.ndarray, yva: np.ndarray,
              ) -> tuple[np.ndarray, float, float]:
    """(validation scores, chosen C, train-CV AUC) of standardise + LogisticRegressionCV."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn 1.8's LogisticRegressionCV notices

    scaler = StandardScaler().fit(xtr)
    folds = list(GroupKFold(n_splits=5).split(xtr, ytr, gtr))
    clf = LogisticRegressionCV(Cs=np.logspace(-4, 2, 7), cv=folds, scoring="roc_auc", max_iter=3000,
                               n_jobs=1).fit(scaler.transform(xtr), ytr)
    cv_auc = float(np.max(np.mean(clf.scores_[1.0], axis=0)))
    return clf.decision_function(scaler.transform(xva)), float(clf.C_[0]), cv_auc


def identity_bootstrap(y: np.ndarray, groups: np.ndarray, scores: dict[str, np.ndarray], ref: str | None,
                       n: int = 1000) -> dict[str, dict[str, float]]:
    """95 % intervals of each row's AUC (and of its difference to ``ref``'s), resampling the
    validation identities with replacement (faces of one person are not independent)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws: dict[str, list[float]] = {k: [] for k in scores}
    diffs: dict[str, list[float]] = {k: [] for k in scores}
    for _ in range(n):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        aucs = {k: float(roc_auc_score(y[idx], v[idx])) for k, v in scores.items()}
        for k, a in aucs.items():
            draws[k].append(a)
            if ref is not None:
                diffs[k].append(a - aucs[ref])
    out = {}
    for k in scores:
        lo, hi = np.percentile(draws[k], [2.5, 97.5])
        out[k] = {"auc_lo": float(lo), "auc_hi": float(hi)}
        if ref is not None and k != ref:
            dlo, dhi = np.percentile(diffs[k], [2.5, 97.5])
            out[k] |= {"diff_vs_cnn_head": float(np.mean(diffs[k])), "diff_lo": float(dlo), "diff_hi": float(dhi)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("../shared/corpus/MANIFEST.csv"))
    ap.add_argument("--exclude", default=DEV_IDS)
    ap.add_argument("--face-model", type=Path, default=Path("../shared/models/face_landmarker.task"))
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache/expose")
    ap.add_argument("--per-clip", type=int, default=24)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="split_identities' seed (the trainer's --seed)")
    ap.add_argument("--weights", type=Path, default=Path("monitor/assets/appearance-small.safetensors"))
    ap.add_argument("--max-faces", type=int, default=0, help="a seeded subset of the faces (0 = all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    drop = {x.strip() for x in args.exclude.split(",") if x.strip()}
    items = [i for i in discover([args.manifest]) if i.identity not in drop]
    faces = collect_faces(items, args.face_model, args.per_clip, args.stride, args.cache_dir)
    ids = sorted({f.identity for f in faces})
    train_ids, val_ids = split_identities(ids, 0.2, args.seed)
    all_faces = len(faces)
    if args.max_faces and len(faces) > args.max_faces:
        keep = np.sort(np.random.default_rng(0).choice(len(faces), args.max_faces, replace=False))
        faces = [faces[i] for i in keep]
    train_faces = [f for f in faces if f.identity in set(train_ids)]
    val_faces = [f for f in faces if f.identity in set(val_ids)]
    print(f"{all_faces} faces of {len(ids)} identities ({len(items)} clips); using {len(train_faces)} train "
          f"faces ({len(train_ids)} ids), {len(val_faces)} validation faces ({len(val_ids)} ids)", flush=True)

    sbi = SBIConfig()
    net: AppearanceNet | None = None
    meta: dict[str, Any] = {}
    cnn_size, cnn_margin = 128, 0.25
    if args.weights.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / args.weights.name
            shutil.copyfile(args.weights, copy)
            net, meta = load_appearance(copy)
        cnn_size, cnn_margin = net.cfg.size, net.cfg.margin
        if meta.get("val_identities") and sorted(meta["val_identities"]) != val_ids:
            print(f"warning: the weights' validation identities differ: {meta['val_identities']}")
        # the fakes here are pair_batch's: its crops of the first validation faces are ours
        k = min(8, len(val_faces))
        ref, _ = pair_batch(val_faces, np.arange(k), VAL_SEED, net.cfg, sbi)
        fk = pseudo_fakes(val_faces[:k], VAL_SEED, sbi)
        mine = to_input(np.stack([face_crop(im, f.landmarks, cnn_size, cnn_margin) for f, fake in
                                  zip(val_faces[:k], fk, strict=True) for im in (f.image, fake)]))
        if not torch.equal(ref, mine):
            raise SystemExit("the pseudo-fakes differ from pair_batch's")
    else:
        print(f"no CNN weights at {args.weights}: the cnn_* rows are left out")

    mp = MediaPipeTrunk(face_model_files(args.face_model, args.cache_dir)["face_landmarks_detector"])
    dlib_emb = DlibFaceEmbedder()
    print("train faces:", flush=True)
    ftr, ytr, itr = featurize(train_faces, TRAIN_SEED, sbi, mp, dlib_emb, net, cnn_size, cnn_margin)
    print("validation faces:", flush=True)
    fva, yva, iva = featurize(val_faces, VAL_SEED, sbi, mp, dlib_emb, net, cnn_size, cnn_margin)
    groups = np.array([train_ids.index(train_faces[i].identity) for i in itr])

    rows, scores = [], {}
    if "cnn_head" in fva:
        scores["cnn_head"] = fva["cnn_head"][:, 0]
        rows.append({"features": "cnn_head", "dim": 1, "val_auc": roc_auc(yva, scores["cnn_head"]), "C": None,
                     "train_cv_auc": None})
    for name in sorted(k for k in fva if k != "cnn_head"):
        t = time.perf_counter()
        scores[name], c, cv = probe_auc(ftr[name], ytr, groups, fva[name], yva)
        auc = roc_auc(yva, scores[name])
        rows.append({"features": name, "dim": int(fva[name].shape[1]), "val_auc": auc, "C": c, "train_cv_auc": cv})
        print(f"  probe {name}: val AUC {auc:.3f} (C {c:g}, {time.perf_counter() - t:.0f}s)", flush=True)
    vgroups = np.array([val_ids.index(val_faces[i].identity) for i in iva])
    boot = identity_bootstrap(yva, vgroups, scores, "cnn_head" if "cnn_head" in scores else None)
    for r in rows:
        r |= boot[str(r["features"])]

    print(f"\ncnn_head: the trained CNN's own logit (no probe); the rest: linear probe. 95 % intervals: "
          f"bootstrap over the {len(val_ids)} validation identities")
    print(f"{'features':<20} {'dim':>5} {'val AUC':>8} {'95% CI':>13} {'- cnn_head [95% CI]':>26} {'train-CV':>9}")
    for r in rows:
        cv_s = f"{r['train_cv_auc']:.3f}" if r["train_cv_auc"] is not None else "-"
        d_s = (f"{r['diff_vs_cnn_head']:+.3f} [{r['diff_lo']:+.3f},{r['diff_hi']:+.3f}]"
               if "diff_vs_cnn_head" in r else "")
        print(f"{r['features']:<20} {r['dim']:>5} {r['val_auc']:>8.3f} [{r['auc_lo']:.3f},{r['auc_hi']:.3f}] "
              f"{d_s:>26} {cv_s:>9}")
    wall = time.perf_counter() - t_start
    print(f"wall time {wall:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({
            "table": rows, "wall_s": round(wall, 1),
            "counts": {"faces_total": all_faces, "faces_train": len(train_faces), "faces_val": len(val_faces),
                       "identities_train": len(train_ids), "identities_val": len(val_ids), "clips": len(items)},
            "val_identities": val_ids, "mp_layers": MP_LAYERS, "mp_input": MP_SIZE,
            "cnn": {"weights": str(args.weights), "step": meta.get("step"), "val": meta.get("val")},
            "max_faces": args.max_faces}, indent=2))


if __name__ == "__main__":
    main()
