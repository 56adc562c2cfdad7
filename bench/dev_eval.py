"""Dev evaluation of the identity distance on ../shared/corpus identities held out of
the starter model's training (DEV_IDENTITIES in monitor/assets/MODEL_CARD.md).

Each dev identity is enrolled on part of its real footage; then scored:
  (a) genuine: its remaining footage (another recording when it has several, else the
      later part of the same recording);
  (b) impostor: the other dev identities' test footage claimed as it;
  (c) dub: its test footage with the audio replaced by another dev identity's speech;
  (d) desync: its test footage with the audio 0.5 s late;
  (e) lipsync: the lip-sync fakes of corpus/fake/news_anchor_zh claimed as news_anchor_zh.
The only genuine news_anchor_zh footage is the 6 s the fakes were made from, so that
profile is enrolled and calibrated on those same 6 s (too short to hold anything out). A
fair control for (e) is therefore genuine footage scored against profiles made the same
way: each other dev identity is also enrolled on just the first 6 s of its reference
(calibrated on those windows), and its genuine test clips scored against that profile
("genuine, 6 s reference"). The lip-sync AUC is reported against both genuine sets.
Attacks (c) and (d) are made on the features: audio features are computed from the
audio alone, so swapping or shifting their rows is what re-muxing the files would give.

Clip score = mean over windows of the profile-normalised distance (z-score). AUC per
family = genuine clips (a) of all dev identities vs that family's clips. The same table
is produced for a non-diffusion baseline (per-person Gaussian of window statistics).

    .venv/bin/python bench/dev_eval.py --model monitor/assets/exam-small.safetensors [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from expose.monitor.alerts.policy import AlertPolicy, PolicySettings
from expose.monitor.config import AlertSection, FeatureConfig
from expose.monitor.evaluation.clips import score_track
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.timeline import FPS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import center_expression, windows_of
from expose.monitor.metrics import roc_auc
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer
from expose.profiles.enroll import EnrollConfig, enroll
from expose.profiles.store import Profile, Reference

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
# identity -> (enrollment clips, test clips); a single clip is split in time (60 % / 40 %).
DEV_SPLIT: dict[str, tuple[list[str], list[str]]] = {
    "news_anchor_zh": (["real/news_anchor_zh/original.mp4"], []),
    "ocasio_cortez": (["real/ocasio_cortez/hdtf_000.mp4", "real/ocasio_cortez/clip_03.mp4"],
                      ["real/ocasio_cortez/clip_02.mp4"]),
    "feifeili": (["real/feifeili/feifeili_clip1.mp4", "real/feifeili/feifeili_clip3.mp4"],
                 ["real/feifeili/feifeili_clip2_short.mp4"]),
    "trump": (["real/trump/speech_01.mp4"], ["real/trump/clip_02.mp4"]),
    "vox_7414": (["real/vox_7414/clip_01.mp4"], ["real/vox_7414/clip_02.mp4"]),
    "macron": (["real/macron/speech_01.mp4"], []),
    "kristinoem": (["real/kristinoem/KristiNoem.mp4"], []),
    "tedlieu": (["real/tedlieu/speech_01.mp4"], []),
}
LIPSYNC = ["face_dain_50fps", "lip_dain_50fps", "none_dain_50fps", "retalking", "sadtalker",
           "sync_none", "wav2lip"]  # our.mp4 is byte-identical to face_dain_50fps.mp4
SPLIT = 0.6
DESYNC_FRAMES = 12  # 0.48 s
SHORT_REFERENCE = 153  # frames: news_anchor_zh's 6.1 s


def with_audio(track: FeatureTrack, donor: FeatureTrack, offset: int = 0) -> FeatureTrack:
    """``track``'s video with ``donor``'s audio rows from ``offset`` (looped to length)."""
    idx = (np.arange(len(track)) + offset) % len(donor)
    return dataclasses.replace(track, mel=donor.mel[idx], speech=donor.speech[idx], phones=donor.phones[idx],
                               source=f"{track.source}+audio:{donor.source}")


def desync(track: FeatureTrack, frames: int) -> FeatureTrack:
    """Audio ``frames`` late: video rows [frames:] with audio rows [:-frames]."""
    v = track.segment(frames, len(track))
    a = track.segment(0, len(track) - frames)
    return dataclasses.replace(v, mel=a.mel, speech=a.speech, phones=a.phones, source=f"{track.source}+late")


# ---- baseline: per-person statistics of the same features, one-class Gaussian ----------
def window_stats(track: FeatureTrack, length: int, hop: int) -> np.ndarray:
    from expose.monitor.features.expressions import EXPRESSION_NAMES

    jaw = EXPRESSION_NAMES.index("jawOpen")
    feats = []
    for w in windows_of(track, length, hop):
        if w.face_ratio < 0.6 or w.speech_ratio < 0.2:
            continue
        x = center_expression(w.expression, w.face_mask)
        energy = w.audio[:, :320].mean(axis=1)
        sync = np.corrcoef(x[:, jaw], energy)[0, 1] if x[:, jaw].std() > 1e-6 else 0.0
        feats.append(np.concatenate([x.std(axis=0), np.abs(np.diff(x, axis=0)).mean(axis=0),
                                     [np.nan_to_num(sync)]]))
    return np.array(feats)


class Baseline:
    def __init__(self, train: np.ndarray, calib: np.ndarray) -> None:
        self.mu = train.mean(axis=0)
        self.sd = train.std(axis=0) + 1e-3
        c = self.dist(calib) if len(calib) else self.dist(train)
        self.cm, self.cs = float(c.mean()), float(max(c.std(), 1e-3))

    def dist(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt((((x - self.mu) / self.sd) ** 2).mean(axis=1))

    def clip(self, x: np.ndarray) -> float | None:
        return float(((self.dist(x) - self.cm) / self.cs).mean()) if len(x) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "monitor/assets/exam-small.safetensors")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/expose")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--enroll-steps", type=int, default=300)
    ap.add_argument("--enroll-session-gain", type=float, default=None,
                    help="session-gain augmentation at enrollment (default: the base model's training value)")
    ap.add_argument("--json", type=Path, help="write the full results here")
    args = ap.parse_args()

    base = load_model(args.model)
    length = base.model.cfg.window
    cache = FeatureCache(args.cache, FeatureConfig(), args.face_model)

    def track(rel: str) -> FeatureTrack:
        return cache.get(CORPUS / rel)[0]

    enroll_tracks: dict[str, list[FeatureTrack]] = {}
    test_tracks: dict[str, list[FeatureTrack]] = {}
    for name, (enr, tst) in DEV_SPLIT.items():
        e = [track(r) for r in enr]
        if tst:
            test_tracks[name] = [track(r) for r in tst]
        elif name != "news_anchor_zh":  # one recording: split in time
            t = e[0]
            cut = int(len(t) * SPLIT)
            e, test_tracks[name] = [t.segment(0, cut)], [t.segment(cut, len(t))]
        enroll_tracks[name] = e

    scorer = Scorer(base.model, base.weights.settings())
    policy = AlertPolicy(PolicySettings.from_config(AlertSection()))
    ecfg = EnrollConfig(steps=args.enroll_steps, session_gain=args.enroll_session_gain)

    def make_profile(name: str, tracks: list[FeatureTrack]) -> Profile:
        refs = [(t, Reference(t.source, t.media_sha256, t.duration, 0)) for t in tracks]
        return enroll(name, base, refs, ecfg)

    profiles, short_profiles, baselines, enroll_s = {}, {}, {}, {}
    for name, tracks in enroll_tracks.items():
        t0 = time.perf_counter()
        profiles[name] = make_profile(name, tracks)
        enroll_s[name] = (time.perf_counter() - t0, sum(t.duration for t in tracks))
        if name in test_tracks:  # the control for the lip-sync family (docstring)
            first = tracks[0]
            short_profiles[name] = make_profile(name, [first.segment(0, min(len(first), SHORT_REFERENCE))])
        stats = [window_stats(t, length, 8) for t in tracks]
        cuts = [int(len(s) * 0.75) for s in stats]
        tr = np.concatenate([s[:c] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        ca = np.concatenate([s[c:] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        baselines[name] = Baseline(tr if len(tr) else ca, ca)
        c = profiles[name].calibration
        print(f"enrolled {name}: {enroll_s[name][1]:.1f} s ref in {enroll_s[name][0]:.1f} s; "
              f"calib n={c.n_windows} mean {c.mean:+.4f} sd {c.std:.4f} thr {c.threshold:+.4f}", flush=True)

    # (family, claimed, description, track, profile)
    cases: list[tuple[str, str, str, FeatureTrack, Profile]] = []
    names = list(test_tracks)
    for name in names:
        others = [o for o in names if o != name]
        for t in test_tracks[name]:
            cases.append(("genuine", name, t.source, t, profiles[name]))
            cases.append(("genuine_short", name, t.source, t, short_profiles[name]))
            donor = test_tracks[others[names.index(name) % len(others)]][0]  # deterministic: no hash()
            cases.append(("dub", name, f"{t.source} audio<-{donor.source}", with_audio(t, donor), profiles[name]))
            if len(t) > length + DESYNC_FRAMES:
                cases.append(("desync", name, f"{t.source} audio +0.48s", desync(t, DESYNC_FRAMES), profiles[name]))
        for o in others:
            for t in test_tracks[o]:
                cases.append(("impostor", name, t.source, t, profiles[name]))
    for method in LIPSYNC:
        t = track(f"fake/news_anchor_zh/{method}.mp4")
        cases.append(("lipsync", "news_anchor_zh", method, t, profiles["news_anchor_zh"]))

    rows: list[dict[str, Any]] = []
    t_score, n_windows, media_s = 0.0, 0, 0.0
    for family, claimed, desc, t, profile in cases:
        t0 = time.perf_counter()
        res = score_track(t, profile, scorer, policy=policy)
        t_score += time.perf_counter() - t0
        n_windows += len(res.scores)
        media_s += t.duration
        scored = [s for s in res.scores if s.distance is not None]
        cal = profile.calibration

        def term(values: list[float | None], offset: float = 0.0) -> float | None:
            v = [x for x in values if x is not None]
            return float(np.mean(v)) - offset if v else None

        rows.append({"family": family, "claimed": claimed, "clip": desc, "score": res.clip_score,
                     # the per-profile terms relative to the profile's calibration windows
                     "identity": term([s.identity for s in scored], cal.identity_mean),
                     "sync": term([s.sync for s in scored]),
                     "fit": term([s.fit for s in scored], cal.fit_mean),
                     "alert": res.alert_at,
                     "windows": [[s.identity, s.sync, s.fit, s.distance] for s in res.scores],
                     "baseline": baselines[claimed].clip(window_stats(t, length, FPS))
                     if family != "genuine_short" else None})

    def auc(fam: str, key: str, genuine: str = "genuine") -> tuple[float | None, int]:
        gen = [r[key] for r in rows if r["family"] == genuine and r[key] is not None]
        att = [r[key] for r in rows if r["family"] == fam and r[key] is not None]
        if not gen or not att:
            return None, len(att)
        y = np.r_[np.zeros(len(gen)), np.ones(len(att))]
        return roc_auc(y, np.r_[gen, att]), len(att)

    def within_person(fam: str) -> float | None:
        """The AUC restricted to pairs claimed as the same person: how often an attack on a
        profile scores above that profile's genuine clips (what a per-profile threshold sees)."""
        pairs = [(g["score"], a["score"]) for g in rows if g["family"] == "genuine" and g["score"] is not None
                 for a in rows if a["family"] == fam and a["claimed"] == g["claimed"] and a["score"] is not None]
        return float(np.mean([1.0 if a > g else 0.5 if a == g else 0.0 for g, a in pairs])) if pairs else None

    # (label, attack family, genuine family the attacks are ranked against)
    comparisons = [("impostor", "impostor", "genuine"), ("dub", "dub", "genuine"), ("desync", "desync", "genuine"),
                   ("lipsync", "lipsync", "genuine"), ("lipsync/6s", "lipsync", "genuine_short")]
    table: dict[str, dict[str, object]] = {}

    def alerted(fam: str) -> tuple[int, int]:
        rs = [r for r in rows if r["family"] == fam and r["score"] is not None]
        return sum(r["alert"] is not None for r in rs), len(rs)

    def f(v: float | None) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    print(f"\n{'family':<11} {'n':>4} {'EXAM':>7} {'within':>7} {'identity':>9} {'sync':>7} {'fit':>7} "
          f"{'baseline':>9} {'live alerts':>12}")
    for gen in ("genuine", "genuine_short"):
        g_hit, g_n = alerted(gen)
        label = "genuine" if gen == "genuine" else "genuine/6s"
        print(f"{label:<11} {g_n:>4} {'':>7} {'':>7} {'':>9} {'':>7} {'':>7} {'':>9} {f'{g_hit}/{g_n}':>12}")
        table[label] = {"live_alerted": g_hit, "live_scored": g_n}
    for label, fam, gen in comparisons:
        a, n = auc(fam, "score", gen)
        ai, _ = auc(fam, "identity", gen)
        asy, _ = auc(fam, "sync", gen)
        afit, _ = auc(fam, "fit", gen)
        ab, _ = auc(fam, "baseline", gen)
        hit, m = alerted(fam)
        aw = within_person(fam) if gen == "genuine" else None
        table[label] = {"n": n, "exam": a, "exam_within_person": aw, "identity_term": ai, "sync_term": asy,
                        "fit_term": afit, "baseline": ab, "live_alerted": hit, "live_scored": m}
        print(f"{label:<11} {n:>4} {f(a):>7} {f(aw):>7} {f(ai):>9} {f(asy):>7} {f(afit):>7} {f(ab):>9} "
              f"{f'{hit}/{m}':>12}")
    print(f"(AUC: genuine clips vs the family's, clip score = mean normalised window distance; lipsync/6s: against "
          "genuine clips scored with profiles enrolled on 6 s, like news_anchor_zh's; within: the EXAM AUC over "
          "pairs claimed as the same person; identity, fit: clip means relative to the profile's calibration "
          f"windows; live alerts: clips on which the live AlertPolicy ({policy.settings}) opens an alert at the "
          "profile's threshold for the smoothed distance)")
    print(f"scoring: {n_windows} windows in {t_score:.1f} s = {n_windows / t_score:.1f} windows/s, "
          f"{media_s / t_score:.1f}x real time (CPU)")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rows": rows, "enroll_s": enroll_s,
                                         "score_windows_per_s": n_windows / t_score,
                                         "score_x_realtime": media_s / t_score}, indent=1))


if __name__ == "__main__":
    main()
