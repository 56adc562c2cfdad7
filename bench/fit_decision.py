"""Fit the decision (model/verification.py) on validation identities: the face and voice
cohorts, the motion cohort size, each term's genuine cross-recording spread, and the fusion
rule. Writes monitor/assets/decision-small.safetensors.

Never on the dev identities (bench/dev_eval.py reports on those). Data:
- **validation**: the corpus identities with two or more recordings outside the dev split
  (VALIDATION). Each is enrolled on one recording (as a user would, `enroll`), and scored on
  its *other* recordings: genuine cross-recording windows. Attacks made from those windows:
  impostor (another validation identity's other recording claimed as it), dub (its video with
  another identity's audio, voice embeddings included) and desync (audio 0.48 s late).
  The base model was trained on these identities' footage (the dev identities were the only
  ones held out), so the motion terms look more genuine here than on new people: the
  standardisation is, if anything, tight (dev_eval measures what that costs).
- **cohort**: every other single-recording corpus identity outside the dev split: its face
  descriptor mean and voice embedding mean. Cohort, validation and dev identities are disjoint.

Choices, each on validation windows: the motion cohort size (the smallest of COHORT_SIZES
whose identity T-norm separates impostors within 0.01 AUC of the best: each member costs a
branch of the batched pass), and the rule (``mean`` or ``max`` of the standardised terms, or
``channels``: the larger of the mean over face and identity and the mean over voice, sync and
fit; on all terms or without fit): the simplest whose worst AUC over impostor, dub, desync is
within one bootstrap standard error of the best (``one_standard_error_choice``). The channels
rule joined the candidates after the dev evaluation showed the mean diluting dubs and
desyncs; its two channels were named then, from the modalities, before other groupings were
tried. Five other groupings scored afterwards on the same validation rows (e.g.
face+voice+identity | sync+fit; face | voice | the motion terms) came within -0.03..+0.003 of
its worst AUC and were not adopted: a difference that size on 60 genuine windows is noise.

The driver (which term the explanation names) is chosen on the validation attacks too: the
largest standardised term, or the term with the most evidence of an attack (``evidence_lines``:
each term's attack-vs-genuine log-likelihood ratio as a line in its standardised value, fitted
on the attacks it sees), whichever more often names a term the attack changes (``CHANGES``,
by how each attack is made; ``driver_accuracy``). Added after trump's own face from another
recording, 1.7 spreads up, was named as often as another person's voice (1.6 spreads up) on
his dubbed video in the live test (a dev identity; the choice itself is made on validation).

With ``--appearance WEIGHTS`` (DiffFake's appearance embedding, ``expose train-appearance``)
the validation identities are extracted with appearance embeddings, enrolled with them, and the
appearance term (model/verification.appearance_term) joins: its genuine cross-recording spread
is measured like the others', and it is fused as a channel of its own (it answers "is the face
real?", which neither "whose face and motion" nor "whose voice" does; fixed before any figure
was seen). Two validation face attacks join the families (``appearance_attacks``, built once
into ``--attacks`` with the dev evaluation's makers: each validation identity's other
recording with the next one's face swapped in, ``swap``, and with its face following the next
one's motion, ``reenact``), so every choice prices the term on what it is for as well as on
impostors, dubs and desyncs. The appearance score (DiffFake's pair model, the network's head,
or the head centred on the enrolled faces: model/difffake.py) is the one whose term alone has
the best mean window AUC over those two families (``--appearance-score`` forces one). Only
candidates holding the term are chosen from. The decision stores the score's tensors and the
weights' sha256; it needs ``features.appearance_model`` set to them. The term's genuine spread
is at least how far recordings of people the network never trained on differ
(``recording_spread``, on its own validation identities, never the dev ones): most validation
identities here are its training identities, whose recordings it scores as uniformly real.

    .venv/bin/python bench/fit_decision.py [--out monitor/assets/decision-small.safetensors] [--json r.json]
        [--appearance monitor/assets/appearance-small.safetensors]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expose.monitor.config import FeatureConfig
from expose.monitor.features.appearance import load_score_tensors
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window, windows_of
from expose.monitor.metrics import roc_auc
from expose.monitor.model.difffake import SCORE_KINDS, AppearanceScore, appearance_score
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import DEFAULT_HOP, Scorer, identity_tnorm, motion_terms, nearest_cohort
from expose.monitor.model.smoothing import empirical_sd_ratios
from expose.monitor.model.verification import (
    STARTER_CHANNELS,
    Decision,
    DecisionSpec,
    TermStats,
    appearance_term,
    face_term,
    voice_term,
)
from expose.profiles.enroll import EnrollConfig, enroll
from expose.profiles.store import Reference

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
DEV = {"news_anchor_zh", "ocasio_cortez", "feifeili", "trump", "vox_7414", "macron", "kristinoem", "tedlieu"}
_GRID = sorted((CORPUS / "grid_s1" / "video").glob("*.mpg"))[:12]
# identity -> (enrolled recordings, other recordings scored as genuine)
VALIDATION: dict[str, tuple[list[str], list[str]]] = {
    "ebs_professor": (["real/ebs_professor/docu4_clip.mp4"],
                      ["real/ebs_professor/docu5_clip.mp4", "real/ebs_professor/docu6_clip.mp4"]),
    "eknim_min": (["real/eknim_min/room_0422.mp4"], ["real/eknim_min/cafe_0420.mp4", "real/eknim_min/office_0420.mp4"]),
    "niko_csgo": (["real/niko_csgo/esl_interview.mp4"], ["real/niko_csgo/home_greyhair.mp4"]),
    "vidtimit_fadg0": ([f"real/vidtimit_fadg0/{n}.mp4" for n in ("fadgo_sa1", "s1_sa2", "s1_si1909", "s1_si649",
                                                                 "s1_sx109")],
                       [f"real/vidtimit_fadg0/{n}.mp4" for n in ("s2_sx19", "s2_sx199", "s3_sx289", "s3_sx379")]),
    "grid_s1": ([str(p.relative_to(CORPUS)) for p in _GRID[:6]], [str(p.relative_to(CORPUS)) for p in _GRID[6:]]),
    "mead_m030": (["real/mead_m030/M030_sad_3_001.mp4"], ["real/mead_m030/M030_level_3_angry_016.mp4"]),
    "grid_s2": (["real/grid_s2/pwij3p.mpg"], ["real/grid_s2/id2_vcd_swwp2s.mpg"]),
}
COHORT_SIZES = (4, 8, 16, 32, 64)
TERMS = ("identity", "sync", "fit", "face", "voice")
TERM_SETS = {"all": TERMS, "no fit": ("identity", "sync", "face", "voice")}
FAMILIES: tuple[str, ...] = ("impostor", "dub", "desync")
DESYNC_FRAMES = 12


APPEARANCE_FAMILIES = ("swap", "reenact")
# the terms each attack family changes, by how the attack is made (fixed before any figure): an
# explanation naming one of them names what is wrong
CHANGES: dict[str, frozenset[str]] = {
    "impostor": frozenset({"face", "voice", "identity"}),  # another person altogether
    "dub": frozenset({"voice", "sync", "fit"}),  # another voice under the same face
    "desync": frozenset({"sync", "fit"}),  # the same voice, late
    "swap": frozenset({"face", "appearance"}),  # another face over the same motion and voice
    "reenact": frozenset({"identity", "sync", "fit", "appearance"}),  # the own face, another's motion
}
SEES_AUC = 0.75  # a term is calibrated against the families it alone separates at least this well


def logistic_line(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of y (1 = attack) on x, the two classes
    weighed equally (so the line is a log-likelihood ratio at equal priors) and the slope
    ridge-penalised (l2): a term that separates perfectly gets a steep but finite line.
    Newton's method; deterministic."""
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * len(y)
    X = np.c_[x, np.ones_like(x)]
    beta, pen = np.zeros(2), np.diag([l2, 0.0])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(X @ beta, -50, 50)))
        step = np.linalg.solve((X * (w * p * (1 - p))[:, None]).T @ X + pen, X.T @ (w * (p - y)) + pen @ beta)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


Line = tuple[float, float]


def evidence_lines(z: dict[str, dict[str, np.ndarray]], terms: tuple[str, ...],
                   ) -> tuple[dict[str, Line], dict[str, list[str]]]:
    """Per term, the log-likelihood-ratio line of its standardised value (``z[family][term]``):
    genuine windows against the windows of the families the term alone separates with AUC >=
    SEES_AUC (the best one if none does): an attack moves some terms and leaves the rest
    genuine, so a term is priced on the attacks it sees."""
    lines, sees = {}, {}
    for t in terms:
        alone = {f: auc(z["genuine"][t], z[f][t]) for f in FAMILIES}
        fams = [f for f in FAMILIES if alone[f] >= SEES_AUC] or [max(FAMILIES, key=alone.__getitem__)]
        g = z["genuine"][t][np.isfinite(z["genuine"][t])]
        a = np.concatenate([z[f][t][np.isfinite(z[f][t])] for f in fams])
        lines[t] = logistic_line(np.r_[g, a], np.r_[np.zeros(len(g)), np.ones(len(a))])
        sees[t] = fams
    return lines, sees


def driver_accuracy(decision: Decision, rows: list[dict[str, Any]], terms: tuple[str, ...]) -> dict[str, float]:
    """Per attack family, the share of its windows whose driver is a term the attack changes (CHANGES)."""
    out = {}
    for f in FAMILIES:
        rs = [r for r in rows if r["family"] == f]
        out[f] = float(np.mean([decision.fuse({n: r[n] for n in terms}).driver in CHANGES[f] for r in rs]))
    return out


def appearance_attacks(out: Path) -> dict[str, list[tuple[str, Path]]]:
    """Validation attacks on the face (with ``--appearance``), built once into ``out`` with the
    dev evaluation's makers (bench/make_attacks.py): each validation identity's first other
    recording with the next identity's face swapped in (``swap``), and with its own face made to
    follow the next identity's motion (``reenact``); its own audio kept. family -> [(claimed, file)]."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_attacks import face_reenact, face_swap

    ids = list(VALIDATION)
    made: dict[str, list[tuple[str, Path]]] = {f: [] for f in APPEARANCE_FAMILIES}
    for i, n in enumerate(ids):
        donor = ids[(i + 1) % len(ids)]
        target, other = CORPUS / VALIDATION[n][1][0], CORPUS / VALIDATION[donor][1][0]
        for fam, maker in (("swap", face_swap), ("reenact", face_reenact)):
            path = out / fam / f"{n}_{donor}.mp4"
            if not (path.is_file() and path.stat().st_size > 0):
                path.parent.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                maker(target, other)(path)
                print(f"made {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
            made[fam].append((n, path))
    return made


def unseen_recordings(weights: Path) -> list[str]:
    """The real corpus recordings of the people the appearance network never trained on: its
    own validation identities (named in its header), never a dev identity."""
    from expose.monitor.features.appearance import load_appearance

    _, meta = load_appearance(weights)
    unseen = set(meta.get("val_identities") or []) - DEV
    with open(CORPUS / "MANIFEST.csv", encoding="utf-8") as f:
        return [r["path"] for r in csv.DictReader(f) if r["label"] == "real" and r["identity"] in unseen]


def recording_spread(kind: str, head: AppearanceScore, tracks: list[FeatureTrack]) -> float | None:
    """How far a genuine recording's appearance score sits from another's, on people the network
    never trained on: the sd over ``tracks`` (one a recording) of the recording's mean head
    logit; times sqrt(2) for ``head_centred``, a difference of two recordings' offsets (taken as
    independent). None for ``pair``, which needs two recordings of one person (too few here).

    Why: the validation identities' genuine windows (the term's spread otherwise) are mostly the
    network's *training* identities, whose recordings it has learnt as real: their mean logits
    spread 0.78 against 1.50 for its unseen validation identities (2026-12-02, shipped weights),
    so the window spread alone is about half of what a new person's new recording moves by."""
    if kind == "pair":
        return None
    means = [float(head.distance(t.appearance[:0], t.appearance).mean()) for t in tracks if len(t.appearance)]
    if len(means) < 3:
        return None
    return float(np.std(means)) * (float(np.sqrt(2.0)) if kind == "head_centred" else 1.0)


def cohort_identities() -> dict[str, list[str]]:
    with open(CORPUS / "MANIFEST.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[str]] = {}
    for r in rows:
        if r["label"] == "real" and r["identity"] not in DEV and r["identity"] not in VALIDATION:
            out.setdefault(r["identity"], []).append(r["path"])
    return out


def auc(gen: np.ndarray, att: np.ndarray) -> float:
    g, a = gen[np.isfinite(gen)], att[np.isfinite(att)]
    return roc_auc(np.r_[np.zeros(len(g)), np.ones(len(a))], np.r_[g, a]) if len(g) and len(a) else float("nan")


def worst_auc(scores: dict[str, np.ndarray], pick: dict[str, np.ndarray] | None = None) -> float:
    """The smallest AUC over FAMILIES, on the rows ``pick`` selects per family (all: None)."""
    def sel(f: str) -> np.ndarray:
        return scores[f] if pick is None else scores[f][pick[f]]
    return min(auc(sel("genuine"), sel(f)) for f in FAMILIES)


def one_standard_error_choice(candidates: list[tuple[str, str]], rules: dict[tuple[str, str], dict[str, float]],
                              scores: dict[tuple[str, str], dict[str, np.ndarray]],
                              rows: list[dict[str, Any]], draws: int = 300) -> tuple[str, str, str]:
    """The simplest candidate whose worst-family AUC is within one standard error of the best
    one's (Breiman's one-standard-error rule). The error is that of the paired difference over
    bootstrap resamples of the validation *clips* (a clip's windows move together: they are not
    independent), seed 0. Why not simply the best: on 60 genuine windows from 17 clips the
    rules differ by about one such error, and the first fit with the channels rule among the
    candidates took it for +0.015 worst AUC (bootstrap sd of that difference 0.017; it beat
    the mean in 81 % of resamples), then did worse than the mean on the dev identities in every
    family but impostors. This rule was written after that dev run: from then on dev is no
    longer an untouched test of this choice (the model card says so)."""
    per_family = {f: [r for r in rows if r["family"] == f] for f in ("genuine", *FAMILIES)}
    clip_rows: dict[str, dict[tuple[str, str], list[int]]] = {f: {} for f in per_family}  # case -> rows
    for f, rs in per_family.items():
        for i, r in enumerate(rs):
            clip_rows[f].setdefault((r["claimed"], r["clip"]), []).append(i)
    rng = np.random.default_rng(0)
    best = max(candidates, key=lambda c: min(rules[c].values()))
    diffs: dict[tuple[str, str], list[float]] = {c: [] for c in candidates}
    for _ in range(draws):
        pick = {}
        for f, cases in clip_rows.items():
            keys = list(cases)
            chosen = rng.integers(0, len(keys), len(keys))
            pick[f] = np.array([i for k in chosen for i in cases[keys[k]]], dtype=np.int64)
        ref = worst_auc(scores[best], pick)
        for c in candidates:
            diffs[c].append(ref - worst_auc(scores[c], pick))
    for c in candidates:
        gap, se = min(rules[best].values()) - min(rules[c].values()), float(np.std(diffs[c]))
        if gap <= se:
            return c[0], c[1], (f"rule {c[0]}, terms {c[1]}: the simplest within one standard error of the best "
                                f"({best[0]}, {best[1]}: worst AUC {min(rules[best].values()):.3f}, this one "
                                f"{min(rules[c].values()):.3f}, bootstrap se of the difference {se:.3f})")
    return best[0], best[1], f"rule {best[0]}, terms {best[1]}: the best"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "monitor/assets/exam-small.safetensors")
    ap.add_argument("--out", type=Path, default=ROOT / "monitor/assets/decision-small.safetensors")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/expose")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--enroll-steps", type=int, default=300)
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--appearance", type=Path, help="DiffFake appearance weights: fuse the appearance term too")
    ap.add_argument("--appearance-score", choices=SCORE_KINDS,
                    help="the appearance score to fuse (default: the best on the validation swaps and reenactments)")
    ap.add_argument("--attacks", type=Path, default=Path.home() / ".cache/expose/validation-attacks",
                    help="where the validation face attacks are built (with --appearance)")
    args = ap.parse_args()
    global FAMILIES
    scores_app: dict[str, AppearanceScore] = {}
    if args.appearance:
        tensors = load_score_tensors(args.appearance)
        scores_app = {k: appearance_score(k, tensors) for k in SCORE_KINDS}
        FAMILIES = (*FAMILIES, *APPEARANCE_FAMILIES)  # the face attacks join every choice
    terms_all = (*TERMS, "appearance") if scores_app else TERMS
    term_sets = ({f"{k} + appearance": (*v, "appearance") for k, v in TERM_SETS.items()} if scores_app
                 else TERM_SETS)
    channels = [list(c) for c in STARTER_CHANNELS] + ([["appearance"]] if scores_app else [])
    t_start = time.perf_counter()
    base = load_model(args.model, decision="none")
    model = base.model
    # Extracted with five faces a second and thinned to the configured rate: the same
    # descriptors that rate's extraction gives (FeatureTrack.thin_face_ids), one cache for both.
    cache = FeatureCache(args.cache, FeatureConfig(face_id_every=5), args.face_model)
    every = FeatureConfig().face_id_every

    # the validation identities' tracks with appearance embeddings when asked (the cohort needs none)
    app_cache = (FeatureCache(args.cache, FeatureConfig(face_id_every=5, appearance_model=str(args.appearance)),
                              args.face_model) if args.appearance else cache)

    def track(rel: str, appearance: bool = False) -> FeatureTrack:
        return (app_cache if appearance else cache).get(CORPUS / rel, require_audio=False)[0].thin_face_ids(every)

    # ---- face and voice cohort ----------------------------------------------------------
    faces, voices, members = [], [], []
    for member, paths in sorted(cohort_identities().items()):
        trs = [track(p) for p in paths]
        f = np.concatenate([t.face_ids for t in trs])
        v = np.concatenate([t.voice_ids for t in trs])
        v = v[np.isfinite(v).all(axis=1)]
        if len(f) < 4 or len(v) < 1:
            print(f"cohort: skip {member} ({len(f)} faces, {len(v)} voice embeddings)")
            continue
        faces.append(f.astype(np.float64).mean(axis=0))
        mv = v.astype(np.float64).mean(axis=0)
        voices.append(mv / np.linalg.norm(mv))
        members.append(member)
    face_cohort, voice_cohort = np.array(faces, np.float32), np.array(voices, np.float32)
    print(f"cohort: {len(members)} identities")

    # ---- enroll the validation identities ------------------------------------------------
    ids = list(VALIDATION)
    tracks = {n: ([track(p, True) for p in e], [track(p, True) for p in t]) for n, (e, t) in VALIDATION.items()}
    names = base.meta.get("identities", [])
    names = json.loads(names.replace("'", '"')) if isinstance(names, str) else list(names)
    profiles = {}
    for n in ids:
        refs = [(t, Reference(t.source, t.media_sha256, t.duration, 0)) for t in tracks[n][0]]
        t0 = time.perf_counter()
        profiles[n] = enroll(n, base, refs, EnrollConfig(steps=args.enroll_steps))
        print(f"enrolled {n}: {sum(t.duration for t in tracks[n][0]):.1f} s in {time.perf_counter() - t0:.1f} s, "
              f"{len(profiles[n].identity.face)} faces, {len(profiles[n].identity.voice)} voices", flush=True)

    # ---- cases: (family, claimed, windows) -----------------------------------------------
    length = model.cfg.window
    cases: list[tuple[str, str, str, list[Window]]] = []
    for i, n in enumerate(ids):
        donor_id = ids[(i + 1) % len(ids)]
        for j, t in enumerate(tracks[n][1]):
            cases.append(("genuine", n, t.source, windows_of(t, length, DEFAULT_HOP)))
            d = tracks[donor_id][1][j % len(tracks[donor_id][1])]
            m = min(len(t), len(d))
            if m >= length:
                dub = t.segment(0, m).with_audio_of(d.segment(0, m))
                cases.append(("dub", n, dub.source, windows_of(dub, length, DEFAULT_HOP)))
            if len(t) >= length + DESYNC_FRAMES:
                late = t.segment(DESYNC_FRAMES, len(t)).with_audio_of(t.segment(0, len(t) - DESYNC_FRAMES))
                cases.append(("desync", n, late.source, windows_of(late, length, DEFAULT_HOP)))
        for o in ids:
            if o != n:
                cases += [("impostor", n, t.source, windows_of(t, length, DEFAULT_HOP)) for t in tracks[o][1]]
    if scores_app:
        for fam, made in appearance_attacks(args.attacks.expanduser()).items():
            for n, path in made:
                t = app_cache.get(path, require_audio=False)[0].thin_face_ids(every)
                cases.append((fam, n, str(path), windows_of(t, length, DEFAULT_HOP)))

    # ---- raw terms of every window: one pass with the largest cohort ----------------------
    scorer = Scorer(model, base.weights.settings())
    cmax = max(COHORT_SIZES)
    rows: list[dict[str, Any]] = []
    t_score = time.perf_counter()
    for fam, claimed, src, ws in cases:
        prof = profiles[claimed]
        exclude = tuple(k for k, nm in enumerate(names) if nm == claimed)  # its own training tokens
        cohort = nearest_cohort(model, prof.tokens, cmax, exclude)
        ok = [w for w in ws if not scorer.insufficiency(w)]
        if not ok:
            continue
        with torch.no_grad():
            errs, mouth, cerrs = scorer._errors(ok, torch.stack([prof.tokens] * len(ok)),
                                                torch.stack([cohort] * len(ok)))
        assert cerrs is not None
        for k, w in enumerate(ok):
            e_sub, e_null = errs[:, :, k, 0], errs[:, :, k, 1]
            mt = motion_terms(errs[:, :, k], mouth[:, :, k])
            ident, sync, fit = mt.identity, mt.sync, mt.fit - prof.calibration.fit_mean
            # the cohort's members are nearest first: a smaller cohort is a prefix of this one
            tn = {c: identity_tnorm(e_sub, e_null, cerrs[:, :, k, :c]) for c in COHORT_SIZES}
            ft = face_term(w, prof.identity, face_cohort)
            vt = voice_term(w, prof.identity, voice_cohort)
            app = {f"appearance_{k}": appearance_term(w, prof.identity, sc) for k, sc in scores_app.items()}
            rows.append({"family": fam, "claimed": claimed, "clip": src, "t0": w.t0, "identity_raw": ident,
                         **{f"identity_c{c}": v for c, v in tn.items()}, "sync": sync, "fit": fit,
                         "face": ft.tnorm if ft else None, "face_raw": ft.raw if ft else None,
                         "voice": vt.tnorm if vt else None, "voice_raw": vt.raw if vt else None,
                         **app})
    t_score = time.perf_counter() - t_score
    print(f"scored {len(rows)} windows with a {cmax}-member cohort in {t_score:.0f} s")

    def col(fam: str, key: str) -> np.ndarray:
        return np.array([r[key] if r[key] is not None else np.nan for r in rows if r["family"] == fam], np.float64)

    report: dict[str, Any] = {"term_auc": {}}
    keys = ["identity_raw", *[f"identity_c{c}" for c in COHORT_SIZES], "sync", "fit", "face_raw", "face",
            "voice_raw", "voice", *[f"appearance_{k}" for k in scores_app]]
    print(f"\n{'term (window AUC)':<16}" + "".join(f"{f:>10}" for f in FAMILIES))
    for key in keys:
        a = {f: auc(col("genuine", key), col(f, key)) for f in FAMILIES}
        report["term_auc"][key] = a
        print(f"{key:<16}" + "".join(f"{a[f]:>10.3f}" for f in FAMILIES))
    best = max(report["term_auc"][f"identity_c{c}"]["impostor"] for c in COHORT_SIZES)
    size = min(c for c in COHORT_SIZES if report["term_auc"][f"identity_c{c}"]["impostor"] >= best - 0.01)
    print(f"motion cohort: {size} (impostor AUC within 0.01 of the best, {best:.3f})")
    kind = args.appearance_score
    if scores_app and kind is None:  # fixed before any figure: the best mean AUC over the face attacks
        kind = max(SCORE_KINDS, key=lambda k: np.mean([report["term_auc"][f"appearance_{k}"][f]
                                                       for f in APPEARANCE_FAMILIES]))
        print(f"appearance score: {kind} (best mean window AUC over {', '.join(APPEARANCE_FAMILIES)})")
    chosen = scores_app.get(kind) if kind else None
    for r in rows:
        r["identity"] = r[f"identity_c{size}"]
        if kind:
            r["appearance"] = r[f"appearance_{kind}"]

    stats: dict[str, TermStats] = {}
    for term in terms_all:
        g = col("genuine", term)
        g = g[np.isfinite(g)]
        stats[term] = TermStats(mean=float(g.mean()), sd=float(max(g.std(), 1e-3)))
    spread_note: dict[str, Any] = {}
    if kind and args.appearance:  # the term's spread: at least what recordings of unseen people differ by
        rels = unseen_recordings(args.appearance)
        spread = recording_spread(kind, appearance_score("head", load_score_tensors(args.appearance)),
                                  [track(r, True) for r in rels])
        window_sd = stats["appearance"].sd
        if spread is not None and spread > window_sd:
            stats["appearance"] = TermStats(mean=stats["appearance"].mean, sd=spread)
        spread_note = {"window_sd": window_sd, "recording_spread": spread, "recordings": len(rels),
                       "sd": stats["appearance"].sd}
        print(f"appearance spread: {window_sd:.3f} over validation windows, {spread or float('nan'):.3f} between "
              f"{len(rels)} recordings of the network's unseen identities; sd {stats['appearance'].sd:.3f}")

    def fused(rule: str, terms: tuple[str, ...]) -> dict[str, np.ndarray]:
        spec = DecisionSpec(base_model_sha256=base.sha256, motion_cohort=size, rule=rule,  # type: ignore[arg-type]
                            terms={n: stats[n] for n in terms}, genuine_mean=0.0, channels=channels,
                            genuine_std=1.0, smoothing_sd_ratio=[1.0], cohort_identities=members,
                            appearance_sha256=sha256_file(args.appearance) if "appearance" in terms else None,
                            appearance_score=kind or "pair")
        d = Decision(spec, face_cohort, voice_cohort, appearance=chosen if "appearance" in terms else None)
        return {f: np.array([d.fuse({n: r[n] for n in terms_all}).distance for r in rows if r["family"] == f])
                for f in ("genuine", *FAMILIES)}

    # Candidates from the simplest: all terms before a term is dropped, the mean before the max
    # before the channels rule (which adds a grouping).
    candidates = [(rule, set_name) for set_name in term_sets for rule in ("mean", "max", "channels")]
    scores = {c: fused(c[0], term_sets[c[1]]) for c in candidates}
    rules: dict[tuple[str, str], dict[str, float]] = {}
    for c in candidates:
        rules[c] = {f: auc(scores[c]["genuine"], scores[c][f]) for f in FAMILIES}
        print(f"{c[0] + ', ' + c[1]:<16}" + "".join(f"{rules[c][f]:>10.3f}" for f in FAMILIES))
    rule, set_name, choice = one_standard_error_choice(candidates, rules, scores, rows)
    print(choice)
    fz = fused(rule, term_sets[set_name])
    stats = {n: stats[n] for n in term_sets[set_name]}
    gen = fz["genuine"]
    gen_rows = [r for r in rows if r["family"] == "genuine"]
    clips = sorted({r["clip"] for r in gen_rows})
    series = [gen[[i for i, r in enumerate(gen_rows) if r["clip"] == clip]] for clip in clips]
    ratios = empirical_sd_ratios(series, min_points=20) or base.weights.smoothing_sd_ratio or [1.0]
    # The driver: the largest standardised term, or the term with the most evidence of an attack
    # (evidence_lines), whichever names a term the attack changes more often on the validation
    # attacks (mean over families).
    chosen_terms = term_sets[set_name]
    zs = {f: {t: np.array([np.nan if r[t] is None else (r[t] - stats[t].mean) / stats[t].sd
                           for r in rows if r["family"] == f]) for t in chosen_terms} for f in ("genuine", *FAMILIES)}
    lines, sees = evidence_lines(zs, chosen_terms)
    spec_z = DecisionSpec(
        base_model_sha256=base.sha256, motion_cohort=size, rule=rule, terms=stats,  # type: ignore[arg-type]
        genuine_mean=0.0, genuine_std=1.0, smoothing_sd_ratio=[1.0], cohort_identities=members, channels=channels,
        appearance_sha256=sha256_file(args.appearance) if chosen is not None else None, appearance_score=kind or "pair")
    spec_ev = spec_z.model_copy(update={"evidence": lines})
    accuracy = {how: driver_accuracy(Decision(sp, face_cohort, voice_cohort, appearance=chosen), rows, chosen_terms)
                for how, sp in (("largest term", spec_z), ("evidence", spec_ev))}
    use_evidence = np.mean(list(accuracy["evidence"].values())) > np.mean(list(accuracy["largest term"].values()))
    for how, acc in accuracy.items():
        print(f"driver by {how:<13}" + "".join(f"{acc[f]:>10.3f}" for f in FAMILIES))
    for term in chosen_terms:
        print(f"evidence {term:<11} {lines[term][0]:+.3f} z {lines[term][1]:+.3f}  "
              f"(genuine vs {', '.join(sees[term])})")
    print(f"driver: {'evidence' if use_evidence else 'largest term'}")
    spec = DecisionSpec(
        base_model_sha256=base.sha256, motion_cohort=size, rule=rule, terms=stats,  # type: ignore[arg-type]
        evidence=lines if use_evidence else {},  # type: ignore[arg-type]
        genuine_mean=float(gen.mean()), genuine_std=float(gen.std()), smoothing_sd_ratio=[float(x) for x in ratios],
        cohort_identities=members, channels=channels,
        appearance_sha256=sha256_file(args.appearance) if chosen is not None else None,
        appearance_score=kind or "pair",
        validation={"identities": ids, "windows": {f: int(len(fz[f])) for f in fz},
                    "rule_auc": {f"{r}, {t}": a for (r, t), a in rules.items()}, "rule_choice": choice,
                    "term_auc": report["term_auc"], "cohort_sizes": list(COHORT_SIZES),
                    **({"appearance_spread": spread_note} if spread_note else {}),
                    "driver_accuracy": accuracy, "evidence_families": sees,
                    "enroll_steps": args.enroll_steps, "smoothing": "empirical" if empirical_sd_ratios(
                        series, min_points=20) else "base model's"})
    Decision(spec, face_cohort, voice_cohort, appearance=chosen).save(args.out)
    print(f"rule {rule}, terms {set_name}; genuine fused mean {spec.genuine_mean:+.3f} sd {spec.genuine_std:.3f}; "
          f"wrote {args.out} "
          f"({time.perf_counter() - t_start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"spec": spec.model_dump(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
