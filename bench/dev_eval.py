"""Dev evaluation of the identity distance on ../shared/corpus identities held out of
the starter model's training (DEV_IDENTITIES in monitor/assets/MODEL_CARD.md).

Each dev identity is enrolled on part of its real footage; then scored:
  (a) genuine: its remaining footage (another recording when it has several, else the
      later part of the same recording);
  (b) impostor: the other dev identities' test footage claimed as it;
  (c) dub: its test footage with the audio replaced by another dev identity's speech;
  (d) desync: its test footage with the audio 0.5 s late;
  (e) lipsync: the lip-sync fakes of corpus/fake/news_anchor_zh claimed as news_anchor_zh.
Attacks (c) and (d) are made on the features: audio features are computed from the
audio alone, so swapping or shifting their rows is what re-muxing the files would give.

Clip score = mean over windows of the profile-normalised distance (z-score). AUC per
family = genuine clips (a) of all dev identities vs that family's clips. The same table
is produced for a non-diffusion baseline (per-person Gaussian of window statistics).

    python3 bench/dev_eval.py --model monitor/assets/exam-small.safetensors [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.clip_scoring import score_track, settings_for  # noqa: E402
from monitor.config import AlertSection, FeatureConfig  # noqa: E402
from monitor.corpus import TrackArrays  # noqa: E402
from monitor.evaluation import roc_auc  # noqa: E402
from monitor.feature_cache import FeatureCache  # noqa: E402
from monitor.model import load_model  # noqa: E402
from monitor.scorer import Scorer  # noqa: E402
from monitor.track import FeatureTrack  # noqa: E402
from monitor.windows import center_expression, windows_of  # noqa: E402
from profiles.enroll import EnrollConfig, enroll  # noqa: E402
from profiles.store import Reference  # noqa: E402

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
    from monitor.expressions import EXPRESSION_NAMES

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

    scorer = Scorer(base.model, settings_for(base))
    policy = AlertSection().policy()
    profiles, baselines, enroll_s = {}, {}, {}
    for name, tracks in enroll_tracks.items():
        refs = [(TrackArrays.of(t, name), Reference(t.source, t.media_sha256, t.duration, 0)) for t in tracks]
        t0 = time.perf_counter()
        ecfg = EnrollConfig(steps=args.enroll_steps, session_gain=args.enroll_session_gain)
        profiles[name] = enroll(name, base, refs, ecfg)
        enroll_s[name] = (time.perf_counter() - t0, sum(t.duration for t in tracks))
        stats = [window_stats(t, length, 8) for t in tracks]
        cuts = [int(len(s) * 0.75) for s in stats]
        tr = np.concatenate([s[:c] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        ca = np.concatenate([s[c:] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        baselines[name] = Baseline(tr if len(tr) else ca, ca)
        c = profiles[name].calibration
        print(f"enrolled {name}: {enroll_s[name][1]:.1f} s ref in {enroll_s[name][0]:.1f} s; "
              f"calib n={c.n_windows} mean {c.mean:+.4f} sd {c.std:.4f} thr {c.threshold:+.4f}", flush=True)

    cases: list[tuple[str, str, str, FeatureTrack]] = []  # (family, claimed, description, track)
    names = list(test_tracks)
    for name in names:
        others = [o for o in names if o != name]
        for t in test_tracks[name]:
            cases.append(("genuine", name, t.source, t))
            donor = test_tracks[others[names.index(name) % len(others)]][0]  # deterministic: no hash()
            cases.append(("dub", name, f"{t.source} audio<-{donor.source}", with_audio(t, donor)))
            if len(t) > length + DESYNC_FRAMES:
                cases.append(("desync", name, f"{t.source} audio +0.48s", desync(t, DESYNC_FRAMES)))
        for o in others:
            for t in test_tracks[o]:
                cases.append(("impostor", name, t.source, t))
    for f in LIPSYNC:
        t = track(f"fake/news_anchor_zh/{f}.mp4")
        cases.append(("lipsync", "news_anchor_zh", f, t))

    rows = []
    t_score, n_windows, media_s = 0.0, 0, 0.0
    for family, claimed, desc, t in cases:
        t0 = time.perf_counter()
        res = score_track(t, profiles[claimed], scorer, policy=policy)
        t_score += time.perf_counter() - t0
        n_windows += len(res.scores)
        media_s += t.duration
        ids = [s.identity for s in res.scores if s.identity is not None]
        syn = [s.sync for s in res.scores if s.sync is not None]
        idm = [s.identity_mouth for s in res.scores if s.identity_mouth is not None]
        rows.append({"family": family, "claimed": claimed, "clip": desc, "score": res.clip_score,
                     "identity": float(np.mean(ids)) if ids else None, "sync": float(np.mean(syn)) if syn else None,
                     "identity_mouth": float(np.mean(idm)) if idm else None,
                     "alert": res.alert_at,
                     "windows": [[s.identity, s.sync, s.distance] for s in res.scores],
                     "baseline": baselines[claimed].clip(window_stats(t, length, 25))})

    def auc(fam: str, key: str) -> tuple[float | None, int]:
        gen = [r[key] for r in rows if r["family"] == "genuine" and r[key] is not None]
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

    families = ["impostor", "dub", "desync", "lipsync"]
    table = {}

    def alerted(fam: str) -> tuple[int, int]:
        rs = [r for r in rows if r["family"] == fam and r["score"] is not None]
        return sum(r["alert"] is not None for r in rs), len(rs)

    print(f"\n{'family':<10} {'n':>4} {'EXAM':>7} {'within':>7} {'identity':>9} {'id-mouth':>9} {'sync':>7} "
          f"{'baseline':>9} {'live alerts':>12}")
    g_hit, g_n = alerted("genuine")
    print(f"{'genuine':<10} {g_n:>4} {'':>7} {'':>7} {'':>9} {'':>9} {'':>7} {'':>9} {f'{g_hit}/{g_n}':>12}")
    for fam in families:
        a, n = auc(fam, "score")
        ai, _ = auc(fam, "identity")
        aim, _ = auc(fam, "identity_mouth")
        asy, _ = auc(fam, "sync")
        ab, _ = auc(fam, "baseline")
        hit, m = alerted(fam)
        aw = within_person(fam)
        table[fam] = {"n": n, "exam": a, "exam_within_person": aw, "identity_term": ai, "identity_mouth_term": aim,
                      "sync_term": asy, "baseline": ab, "live_alerted": hit, "live_scored": m}
        f = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{fam:<10} {n:>4} {f(a):>7} {f(aw):>7} {f(ai):>9} {f(aim):>9} {f(asy):>7} {f(ab):>9} "
              f"{f'{hit}/{m}':>12}")
    table["genuine"] = {"live_alerted": g_hit, "live_scored": g_n}
    print(f"(genuine clips: {g_n}; AUC: genuine vs family, clip score = mean normalised window distance; within: "
          "the EXAM AUC over pairs claimed as the same person; "
          f"live alerts: clips on which the live AlertPolicy ({policy.settings}) opens an alert at the "
          "profile's threshold for the smoothed distance)")
    print(f"scoring: {n_windows} windows in {t_score:.1f} s = {n_windows / t_score:.1f} windows/s, "
          f"{media_s / t_score:.1f}x real time (CPU)")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rows": rows, "enroll_s": enroll_s,
                                         "score_windows_per_s": n_windows / t_score,
                                         "score_x_realtime": media_s / t_score}, indent=1))


if __name__ == "__main__":
    main()
