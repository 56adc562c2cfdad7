"""Enrollment: personalise the frozen base model to one subject (textual inversion).

Only a new set of adapter tokens is optimised, with the pre-training denoising loss, on
windows of the subject's reference footage; every base weight stays bit-identical.
The last part of each reference recording (25 %, at least one window) is held out;
the distances of its windows give the genuine distribution (profiles/store.py,
Calibration), and the alert thresholds sit at a target false-alarm rate above it: one
for a single window, and one for the live policy's mean of n windows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from statistics import NormalDist

import numpy as np
import torch

from expose.monitor.features.face_id import PITCH, YAW, select_face_references
from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM
from expose.monitor.features.timeline import FPS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window
from expose.monitor.model.exam import LoadedModel
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import DEFAULT_HOP, Scorer, ScoreRequest, ScoreSettings
from expose.monitor.model.smoothing import overlap_sd_ratios
from expose.monitor.model.verification import IdentityReferences
from expose.monitor.training.train import Segment, WindowSampler, valid_starts
from expose.profiles.store import Calibration, Profile, Reference

log = logging.getLogger(__name__)

# Where a profile's calibration windows came from (profile.json: enroll.calibration_source).
CALIBRATED_ON_HELD_OUT = "held-out tail of each reference"
CALIBRATED_ON_REFERENCE = "all reference windows (references too short to hold enough out)"


@dataclass(frozen=True)
class EnrollConfig:
    steps: int = 300
    batch: int = 32
    lr: float = 1e-2
    holdout_fraction: float = 0.25
    target_far: float = 0.01
    min_face: float = 0.75
    min_speech: float = 0.2
    calib_hop: int = 4  # frames between calibration windows
    min_std: float = 0.05  # floor on the genuine spread: a handful of windows underestimates it
    min_calibration_windows: int = 8
    face_references: int = 16  # enrolled face descriptors kept, spread over head pose
    voice_references: int = 32  # enrolled voice embeddings kept, evenly over the references
    # sd of the per-channel log gain applied to reference windows (monitor/training.py);
    # None: the base model's own training value, so tokens meet the variation the base saw
    session_gain: float | None = None
    seed: int = 0


class EnrollError(ValueError):
    pass


def _split(tr: FeatureTrack, length: int, cfg: EnrollConfig) -> tuple[int, int]:
    n = len(tr)
    if n < 3 * length:
        return n, n  # too short to split: all for training
    hold = max(length + 32, int(round(n * cfg.holdout_fraction)))  # >= 9 windows at a 4-frame hop
    return n - hold, n


def identity_references(parts: list[tuple[FeatureTrack, int]], cfg: EnrollConfig) -> IdentityReferences:
    """The face descriptors (spread over head pose), their appearance embeddings (the same
    faces) and voice embeddings of rows [0, cut) of each reference track, so that the held-out
    tails the calibration scores were never enrolled; a modality that the parts do not hold is
    taken from the whole tracks."""
    app_dim = max((tr.appearance.shape[1] for tr, _ in parts), default=0)
    if any(tr.appearance.shape[1] != app_dim for tr, _ in parts):
        raise EnrollError("the reference tracks were extracted with and without appearance embeddings")

    def collect(rows: list[tuple[FeatureTrack, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        face = [tr.face_ids[tr.face_id_ticks < cut] for tr, cut in rows]
        app = [tr.appearance[tr.face_id_ticks < cut] for tr, cut in rows]
        pose = [tr.expression[tr.face_id_ticks[tr.face_id_ticks < cut]][:, [YAW, PITCH]] for tr, cut in rows]
        voice = [v[np.isfinite(v).all(axis=1)] for v in (tr.voice_ids[tr.voice_id_ticks <= cut] for tr, cut in rows)]
        return (np.concatenate([np.zeros((0, FACE_ID_DIM), np.float32), *face]),
                np.concatenate([np.zeros((0, 2), np.float32), *pose]),
                np.concatenate([np.zeros((0, VOICE_ID_DIM), np.float32), *voice]),
                np.concatenate([np.zeros((0, app_dim), np.float32), *app]))

    face, pose, voice, app = collect(parts)
    if not len(face) or not len(voice):
        wf, wp, wv, wa = collect([(tr, len(tr)) for tr, _ in parts])
        face, pose, app = (face, pose, app) if len(face) else (wf, wp, wa)
        voice = voice if len(voice) else wv
    keep = np.sort(select_face_references(pose, cfg.face_references))
    if len(voice) > cfg.voice_references:
        voice = voice[np.linspace(0, len(voice) - 1, cfg.voice_references).round().astype(int)]
    appearance = app[keep] if app_dim else np.zeros((0, 0), np.float32)
    return IdentityReferences(face[keep].astype(np.float32), voice.astype(np.float32),
                              appearance.astype(np.float32))


def enroll(
    name: str,
    base: LoadedModel,
    references: list[tuple[FeatureTrack, Reference]],
    cfg: EnrollConfig | None = None,
    score_settings: ScoreSettings | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Profile:
    cfg = cfg or EnrollConfig()
    score_settings = score_settings or base.weights.settings()
    model = base.model.eval()
    length = model.cfg.window
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    segments, calib_windows, parts = [], [], []
    for tr, _ in references:
        cut, n = _split(tr, length, cfg)
        parts.append((tr, cut))
        st, _ = valid_starts(tr, 0, cut, length, cfg.min_face, cfg.min_speech, 2)
        segments.append(Segment(tr, 0, 0, cut, st))
        if cut < n:
            calib_windows += tr.windows(cut, n, length, cfg.calib_hop)
    if not any(len(s.starts) for s in segments):
        raise EnrollError(
            f"no usable reference window: need {length / FPS:.1f} s stretches with a face on "
            f">={100 * cfg.min_face:.0f}% and speech on >={100 * cfg.min_speech:.0f}% of frames")
    gain = cfg.session_gain if cfg.session_gain is not None else float(
        (base.meta.get("train") or {}).get("session_gain", 0.0))
    sampler = WindowSampler(segments, length, rng, time_warp=0.05, session_gain=gain)

    tokens = torch.nn.Parameter(model.null_tokens.detach().clone()
                                + 0.01 * torch.randn(model.null_tokens.shape, generator=gen))
    opt = torch.optim.Adam([tokens], lr=cfg.lr)
    t_start = time.perf_counter()
    for step in range(cfg.steps):
        b = sampler.sample(cfg.batch)
        x0 = model.normalize_expression(b.x0)
        with torch.no_grad():
            audio = model.encode_audio(model.normalize_audio(b.audio))
        t = torch.empty(cfg.batch).uniform_(0.05, 0.95, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        loss = model.denoising_error(x0, audio, b.mask, tokens.expand(cfg.batch, -1, -1), t, noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step:
            on_step(step + 1, loss.item())
    train_s = time.perf_counter() - t_start

    decision = base.decision
    scorer = Scorer(model, score_settings, decision=decision)
    tok = tokens.detach()
    refs = identity_references(parts, cfg)
    cohort = scorer.motion_cohort(tok)

    def scored(windows: list[Window]) -> list[Score]:
        return [s for s in scorer.score_batched([ScoreRequest(w, tok, name, cohort, refs) for w in windows])
                if s.distance is not None and s.identity is not None and s.fit is not None]

    windows_scored = scored(calib_windows)
    calib_source = CALIBRATED_ON_HELD_OUT
    if len(windows_scored) < cfg.min_calibration_windows:
        # References too short to hold enough out: calibrate on every reference window. The
        # tokens were fitted to them, so the mean is optimistic; the spread is floored below.
        every = [w for tr, _ in references for w in tr.windows(0, len(tr), length, cfg.calib_hop)]
        windows_scored += scored(every)
        calib_source = CALIBRATED_ON_REFERENCE
    if not windows_scored:
        raise EnrollError("no calibration window has enough face and speech; give longer references")
    # (N, 3): distance, identity and fit terms; with a decision, the distance fuses the fit
    # term relative to this profile's own fit mean, known only now
    fit_mean = float(np.mean([s.fit for s in windows_scored if s.fit is not None]))
    d = np.array([(s.distance if decision is None else
                   decision.fuse_terms(s.identity_tnorm, s.sync, s.fit, fit_mean, s.face, s.voice).distance,
                   s.identity, s.fit) for s in windows_scored], dtype=np.float64)
    weights = base.weights
    dist = d[:, 0]
    # A few correlated windows underestimate the genuine spread: never go below the spread
    # measured on the base model's validation windows (genuine footage of many people, with
    # the terms a profile centres centred per person: monitor/model/fusion.py).
    std_floor = weights.genuine_std if weights.genuine_std is not None else cfg.min_std
    mean, std = float(dist.mean()), float(max(dist.std(), std_floor, cfg.min_std))
    center = float(score_settings.w_identity * d[:, 1].mean() + score_settings.w_fit * d[:, 2].mean())
    scale = max(std_floor, cfg.min_std)
    ratios = weights.smoothing_sd_ratio or overlap_sd_ratios(length, DEFAULT_HOP)
    if decision is not None:
        # The fused distance is already standardised on genuine footage from *other*
        # recordings than the enrolled one (validation identities): that is the genuine
        # distribution a new call meets. The held-out tail is the same recording, so it can
        # only raise the bar (a profile whose own footage scores high), never lower it.
        spec = decision.spec
        mean, std = max(mean, spec.genuine_mean), max(float(dist.std()), spec.genuine_std)
        center, scale, ratios = spec.genuine_mean, spec.genuine_std, spec.smoothing_sd_ratio
    z = NormalDist().inv_cdf(1 - cfg.target_far)
    threshold = max(mean + z * std, float(np.quantile(dist, 1 - cfg.target_far)))
    calib = Calibration(
        n_windows=len(d), mean=mean, std=std, threshold=threshold, target_far=cfg.target_far,
        quantiles={q: float(np.quantile(dist, float(q))) for q in ("0.5", "0.9", "0.99")},
        center=center, scale=scale, identity_mean=float(d[:, 1].mean()), fit_mean=float(d[:, 2].mean()),
        smoothing_sd_ratio=[float(r) for r in ratios],
    )
    return Profile(
        name=name, base_model_sha256=base.sha256,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        references=[r for _, r in references], calibration=calib,
        enroll={"config": {**asdict(cfg), "session_gain": gain}, "score_settings": asdict(score_settings),
                "train_windows": sampler.n_windows, "seconds": round(train_s, 2),
                "final_loss": loss.item(), "calibration_source": calib_source,
                "face_references": len(refs.face), "voice_references": len(refs.voice),
                "decision": str(decision.path) if decision is not None else None},
        tokens=tok, identity=refs, decision_sha256=decision.sha256 if decision is not None else None,
    )
