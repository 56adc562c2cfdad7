"""Dev evaluation on ../shared/corpus identities held out of the starter model's training
and of every choice made on validation (DEV_IDENTITIES in monitor/assets/MODEL_CARD.md;
bench/fit_decision.py fits on other identities).

Each dev identity is enrolled on part of its real footage (``expose enroll`` as a user
would, with the shipped decision); then its test media are scored, every one a real file
(bench/make_attacks.py builds them, features extracted from them like any input):
  genuine   its test clip: another recording for ocasio_cortez, feifeili, trump, vox_7414
            (cross-recording), the later 40 % of the one recording for the others;
  impostor  the other dev identities' test clips claimed as it;
  dub       its test video with another dev identity's test audio;
  desync    its test clip with the audio 0.48 s late;
  tts       its test video with synthetic speech (espeak-ng);
  lipsync   the lip-sync fakes of corpus/fake/news_anchor_zh claimed as news_anchor_zh;
  swap      its test clip with another dev identity's face swapped in, its own audio
            (bench/face_swap.py; reported when the manifest has the family);
  reenact   its test clip with its own face warped to follow another dev identity's facial
            motion, its own audio (bench/reenact.py; reported when the manifest has it).
Every family at the original quality and re-encoded at H.264 CRF 35, 360p (the profiles are
enrolled on the original footage either way: a compressed call against a clean enrollment).
news_anchor_zh's only genuine footage is the 6 s the fakes were made from: that profile is
enrolled and calibrated on those same 6 s. The fair control, "genuine/6s", scores the other
identities' genuine clips against profiles enrolled on the first 6 s of their reference.

Clip score of a term = mean over the clip's scored windows (None when no window has it).
AUC per family = genuine clips (all identities, same quality) vs that family's clips.
With a decision that has DiffFake's appearance term (bench/fit_decision.py --appearance) pass
its weights as ``--appearance``: the media are extracted with appearance embeddings, the column
``appearance`` is the term alone (the decision's appearance score) and ``fused-app`` is the same decision
with the appearance term left out of each window (the rule on the other standardised terms):
the fused decision before and after the term, on the same windows. Both are compared as
``fused-raw`` and ``fused-app``: clip means of the window distances, without the per-profile
normalisation of ``fused`` (the profiles were calibrated with the term).

Columns: the fused decision; each term alone, raw and cohort-normalised (T-norm); the
previous fused motion distance ("legacy": w . (identity, sync, fit), centred as the
previous profiles did); a non-diffusion baseline (per-person Gaussian of window
statistics); and live alerts: clips on which the live AlertPolicy, replayed over the windows
with the default settings and the profile's thresholds, opens an alert. Then, per quality, the
protocol of the issues' held-out evaluation: the AUC of each person's attacks against its own
genuine clips, averaged over people (offsets between people and recordings cancel there).

    .venv/bin/python bench/make_attacks.py   # once: the attack media
    .venv/bin/python bench/dev_eval.py [--json dev.json]
    .venv/bin/python bench/dev_eval.py --report dev.json   # the tables again, nothing recomputed
"""

from __future__ import annotations

import argparse
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
# identity -> enrollment clips (a single clip: its first 60 %; the rest is its test clip)
DEV_ENROLL: dict[str, list[str]] = {
    "news_anchor_zh": ["real/news_anchor_zh/original.mp4"],
    "ocasio_cortez": ["real/ocasio_cortez/hdtf_000.mp4", "real/ocasio_cortez/clip_03.mp4"],
    "feifeili": ["real/feifeili/feifeili_clip1.mp4", "real/feifeili/feifeili_clip3.mp4"],
    "trump": ["real/trump/speech_01.mp4"],
    "vox_7414": ["real/vox_7414/clip_01.mp4"],
    "macron": ["real/macron/speech_01.mp4"],
    "kristinoem": ["real/kristinoem/KristiNoem.mp4"],
    "tedlieu": ["real/tedlieu/speech_01.mp4"],
}
CROSS_RECORDING = {"ocasio_cortez", "feifeili", "trump", "vox_7414"}
SPLIT = 0.6
SHORT_REFERENCE = 153  # frames: news_anchor_zh's 6.1 s
QUALITIES = ("orig", "crf35_360p")
TERM_COLUMNS = ("fused", "fused-raw", "fused-app", "identity_raw", "identity", "sync", "fit", "face_raw", "face",
                "voice_raw", "voice", "appearance", "legacy", "baseline")


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


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Print the tables of ``rows`` (one per clip and quality); return them as a dict."""
    def auc(fam: str, key: str, quality: str, genuine: str = "genuine") -> float | None:
        gen = [r[key] for r in rows if r["family"] == genuine and r["quality"] == quality and r[key] is not None]
        att = [r[key] for r in rows if r["family"] == fam and r["quality"] == quality and r[key] is not None]
        if not gen or not att:
            return None
        return roc_auc(np.r_[np.zeros(len(gen)), np.ones(len(att))], np.r_[gen, att])

    def person_auc(fam: str, key: str, quality: str, person: str) -> float | None:
        def of(family: str) -> list[float]:
            return [r[key] for r in rows if r["family"] == family and r["quality"] == quality
                    and r["claimed"] == person and r[key] is not None]
        gen, att = of("genuine"), of(fam)
        return roc_auc(np.r_[np.zeros(len(gen)), np.ones(len(att))], np.r_[gen, att]) if gen and att else None

    def alerted(fam: str, quality: str) -> tuple[int, int]:
        rs = [r for r in rows if r["family"] == fam and r["quality"] == quality and r["fused"] is not None]
        return sum(r["alert"] is not None for r in rs), len(rs)

    def f(v: float | None) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    families = [(f, f, "genuine") for f in ("impostor", "dub", "desync", "tts", "lipsync", "swap", "reenact")]
    families.append(("lipsync/6s", "lipsync", "genuine_short"))
    table: dict[str, Any] = {}
    for quality in QUALITIES:
        print(f"\n== {quality} ==  (clip AUC vs genuine clips; live: clips alerted by the default policy)")
        print(f"{'family':<11} {'n':>3} " + " ".join(f"{c[:9]:>9}" for c in TERM_COLUMNS) + f" {'live':>7}")
        for gen in ("genuine", "genuine_short"):
            hit, n = alerted(gen, quality)
            label = "genuine" if gen == "genuine" else "genuine/6s"
            print(f"{label:<11} {n:>3} " + " ".join(f"{'':>9}" for _ in TERM_COLUMNS) + f" {f'{hit}/{n}':>7}")
            table[f"{quality}/{label}"] = {"live_alerted": hit, "clips": n}
        for label, fam, gen in families:
            a = {c: auc(fam, c, quality, gen) for c in TERM_COLUMNS}
            hit, n = alerted(fam, quality)
            table[f"{quality}/{label}"] = {**a, "live_alerted": hit, "clips": n}
            print(f"{label:<11} {n:>3} " + " ".join(f"{f(a[c]):>9}" for c in TERM_COLUMNS) + f" {f'{hit}/{n}':>7}")
        cross = [r for r in rows if r["family"] == "genuine" and r["quality"] == quality]
        print("genuine clips, fused score (cross-recording marked *): " + ", ".join(
            f"{r['claimed']}{'*' if r['claimed'] in CROSS_RECORDING else ''} {f(r['fused'])}" for r in cross))
        tally: dict[str, dict[str, int]] = {}
        for r in rows:
            if r["quality"] == quality and r["alert"] is not None:
                for k, v in r["drivers"].items():
                    tally.setdefault(r["family"], {}).setdefault(k, 0)
                    tally[r["family"]][k] += v
        print("windows by driving term, alerted clips: " + "; ".join(
            f"{fam} " + ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda x: -x[1]))
            for fam, d in sorted(tally.items())))
        # the protocol of the held-out set: AUC per claimed person (its genuine clips
        # against the attacks claiming it), then the mean over people. One genuine clip each here,
        # so a person's AUC is the share of its attack clips above its genuine clip: a term's
        # offsets between people and recordings, which the pooled AUC above pays for, cancel.
        people = sorted({r["claimed"] for r in rows if r["family"] == "genuine" and r["quality"] == quality})
        print("per person (mean over people of the AUC of each person's attacks against its own genuine clips):")
        for fam in ("impostor", "dub", "desync", "tts", "swap", "reenact"):
            per = {c: [v for p in people if (v := person_auc(fam, c, quality, p)) is not None] for c in TERM_COLUMNS}
            if not any(per.values()):
                continue
            a = {c: float(np.mean(v)) if v else None for c, v in per.items()}
            k = max(len(v) for v in per.values())
            table[f"{quality}/{fam}/per-person"] = {**a, "people": k}
            print(f"{fam:<11} {k:>3} " + " ".join(f"{f(a[c]):>9}" for c in TERM_COLUMNS))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "monitor/assets/exam-small.safetensors")
    ap.add_argument("--decision", default="auto", help="decision file, auto (the shipped one) or none")
    ap.add_argument("--attacks", type=Path, default=Path.home() / ".cache/expose/attacks",
                    help="bench/make_attacks.py's output folder")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/expose")
    ap.add_argument("--face-model", type=Path, default=SHARED / "models/face_landmarker.task")
    ap.add_argument("--enroll-steps", type=int, default=300)
    ap.add_argument("--json", type=Path, help="write the full results here")
    ap.add_argument("--appearance", type=Path, help="the appearance weights of a decision with that term")
    ap.add_argument("--report", type=Path, metavar="JSON", help="print the tables of an earlier run's --json; nothing "
                    "is extracted or scored")
    args = ap.parse_args()
    if args.report is not None:
        try:
            report(json.loads(args.report.read_text())["rows"])
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"{args.report}: not a dev_eval --json file ({err})") from None
        return
    manifest_path = args.attacks / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"{manifest_path} not found: run bench/make_attacks.py first")
    manifest = json.loads(manifest_path.read_text())

    # extracted with five faces a second, thinned to the configured rate (FeatureTrack.thin_face_ids)
    features = FeatureConfig(face_id_every=5, appearance_model=str(args.appearance) if args.appearance else "none")
    base = load_model(args.model, args.decision, features)
    length = base.model.cfg.window
    cache = FeatureCache(args.cache, features, args.face_model)
    every = FeatureConfig().face_id_every

    def track(path: Path) -> FeatureTrack:
        return cache.get(path, require_audio=False)[0].thin_face_ids(every)

    enroll_tracks: dict[str, list[FeatureTrack]] = {}
    for name, rels in DEV_ENROLL.items():
        ts = [track(CORPUS / r) for r in rels]
        if name not in CROSS_RECORDING and name != "news_anchor_zh":
            ts = [ts[0].segment(0, int(len(ts[0]) * SPLIT))]
        enroll_tracks[name] = ts

    scorer = Scorer.of(base)
    policy = AlertPolicy(PolicySettings.from_config(AlertSection()))
    ecfg = EnrollConfig(steps=args.enroll_steps)

    def make_profile(name: str, tracks: list[FeatureTrack]) -> Profile:
        refs = [(t, Reference(t.source, t.media_sha256, t.duration, 0)) for t in tracks]
        return enroll(name, base, refs, ecfg)

    test_ids = sorted({e["claimed"] for e in manifest if e["family"] == "genuine"})
    profiles, short_profiles, baselines, enroll_s = {}, {}, {}, {}
    for name, tracks in enroll_tracks.items():
        t0 = time.perf_counter()
        profiles[name] = make_profile(name, tracks)
        enroll_s[name] = (time.perf_counter() - t0, sum(t.duration for t in tracks))
        if name in test_ids:  # the control for the lip-sync family (docstring)
            first = tracks[0]
            short_profiles[name] = make_profile(name, [first.segment(0, min(len(first), SHORT_REFERENCE))])
        stats = [window_stats(t, length, 8) for t in tracks]
        cuts = [int(len(s) * 0.75) for s in stats]
        tr = np.concatenate([s[:c] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        ca = np.concatenate([s[c:] for s, c in zip(stats, cuts, strict=True)] or [np.zeros((0, 117))])
        baselines[name] = Baseline(tr if len(tr) else ca, ca)
        p = profiles[name]
        c = p.calibration
        print(f"enrolled {name}: {enroll_s[name][1]:.1f} s ref in {enroll_s[name][0]:.1f} s; {len(p.identity.face)} "
              f"faces, {len(p.identity.voice)} voices; calib n={c.n_windows} mean {c.mean:+.3f} sd {c.std:.3f} "
              f"thr {c.threshold:+.3f}", flush=True)

    # (family, quality, claimed, description, track, profile)
    cases: list[tuple[str, str, str, str, FeatureTrack, Profile]] = []
    for e in manifest:
        fam, q, claimed = e["family"], e["quality"], e["claimed"]
        t = track(Path(e["path"]))
        if fam == "genuine":
            cases.append(("genuine", q, claimed, e["desc"], t, profiles[claimed]))
            cases.append(("genuine_short", q, claimed, e["desc"], t, short_profiles[claimed]))
            for other in test_ids:
                if other != claimed:
                    cases.append(("impostor", q, other, e["desc"], t, profiles[other]))
        else:
            cases.append((fam, q, claimed, e["desc"], t, profiles[claimed]))

    w = base.weights
    rows: list[dict[str, Any]] = []
    t_score, n_windows, media_s = 0.0, 0, 0.0
    for family, quality, claimed, desc, t, profile in cases:
        t0 = time.perf_counter()
        res = score_track(t, profile, scorer, policy=policy)
        t_score += time.perf_counter() - t0
        n_windows += len(res.scores)
        media_s += t.duration
        scored = [s for s in res.scores if s.distance is not None]
        cal = profile.calibration

        def mean(values: list[float | None]) -> float | None:
            v = [x for x in values if x is not None]
            return float(np.mean(v)) if v else None

        legacy_centre = w.identity * cal.identity_mean + w.fit * cal.fit_mean
        drivers: dict[str, int] = {}
        for s in scored:
            if s.driver:
                drivers[s.driver] = drivers.get(s.driver, 0) + 1
        rows.append({
            "family": family, "quality": quality, "claimed": claimed, "clip": desc,
            "fused": res.clip_score, "identity_raw": mean([s.identity for s in scored]),
            "identity": mean([s.identity_tnorm for s in scored]), "sync": mean([s.sync for s in scored]),
            "fit": mean([None if s.fit is None else s.fit - cal.fit_mean for s in scored]),
            "face_raw": mean([s.face_raw for s in scored]), "face": mean([s.face for s in scored]),
            "voice_raw": mean([s.voice_raw for s in scored]), "voice": mean([s.voice for s in scored]),
            "appearance": mean([s.appearance for s in scored]),
            "fused-raw": mean([s.distance for s in scored]),
            "fused-app": mean([base.decision.combine({k: v for k, v in s.terms.items() if k != "appearance"}).distance
                               for s in scored if s.terms and set(s.terms) - {"appearance"}])
            if base.decision is not None and base.decision.appearance is not None else None,
            "legacy": mean([(w.identity * s.identity + w.sync * s.sync + w.fit * s.fit - legacy_centre)
                            / (w.genuine_std or 1.0) for s in scored
                            if s.identity is not None and s.sync is not None and s.fit is not None]),
            "baseline": baselines[claimed].clip(window_stats(t, length, FPS)) if family != "genuine_short" else None,
            "alert": res.alert_at, "drivers": drivers,
            "windows": [[s.t1, s.distance, s.driver] for s in res.scores]})

    table = report(rows)
    print(f"\nscoring: {n_windows} windows in {t_score:.1f} s = {n_windows / t_score:.1f} windows/s, "
          f"{media_s / t_score:.1f}x real time (CPU, decision: {base.decision.path if base.decision else 'none'})")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "rows": rows, "enroll_s": enroll_s,
                                         "score_windows_per_s": n_windows / t_score,
                                         "score_x_realtime": media_s / t_score}, indent=1))


if __name__ == "__main__":
    main()
