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

from expose.monitor.features.timeline import FPS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window
from expose.monitor.model.exam import LoadedModel
from expose.monitor.model.scorer import DEFAULT_HOP, Scorer, ScoreSettings, requests_for
from expose.monitor.model.smoothing import overlap_sd_ratios
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

    segments, calib_windows = [], []
    for tr, _ in references:
        cut, n = _split(tr, length, cfg)
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

    scorer = Scorer(model, score_settings)
    tok = tokens.detach()

    def terms(windows: list[Window]) -> np.ndarray:
        """(N, 3): distance, identity and fit terms of the scored windows."""
        scores = scorer.score_batched(requests_for(windows, tok, name))
        return np.array([(s.distance, s.identity, s.fit) for s in scores
                         if s.distance is not None and s.identity is not None and s.fit is not None]).reshape(-1, 3)

    d = terms(calib_windows)
    calib_source = CALIBRATED_ON_HELD_OUT
    if len(d) < cfg.min_calibration_windows:
        # References too short to hold enough out: calibrate on every reference window. The
        # tokens were fitted to them, so the mean is optimistic; the spread is floored below.
        every = [w for tr, _ in references for w in tr.windows(0, len(tr), length, cfg.calib_hop)]
        d = np.concatenate([d, terms(every)])
        calib_source = CALIBRATED_ON_REFERENCE
    if len(d) == 0:
        raise EnrollError("no calibration window has enough face and speech; give longer references")
    weights = base.weights
    dist = d[:, 0]
    # A few correlated windows underestimate the genuine spread: never go below the spread
    # measured on the base model's validation windows (genuine footage of many people, with
    # the terms a profile centres centred per person: monitor/model/fusion.py).
    std_floor = weights.genuine_std if weights.genuine_std is not None else cfg.min_std
    mean, std = float(dist.mean()), float(max(dist.std(), std_floor, cfg.min_std))
    z = NormalDist().inv_cdf(1 - cfg.target_far)
    threshold = max(mean + z * std, float(np.quantile(dist, 1 - cfg.target_far)))
    ratios = weights.smoothing_sd_ratio or overlap_sd_ratios(length, DEFAULT_HOP)
    calib = Calibration(
        n_windows=len(d), mean=mean, std=std, threshold=threshold, target_far=cfg.target_far,
        quantiles={q: float(np.quantile(dist, float(q))) for q in ("0.5", "0.9", "0.99")},
        center=float(score_settings.w_identity * d[:, 1].mean() + score_settings.w_fit * d[:, 2].mean()),
        scale=max(std_floor, cfg.min_std), identity_mean=float(d[:, 1].mean()), fit_mean=float(d[:, 2].mean()),
        smoothing_sd_ratio=[float(r) for r in ratios],
    )
    return Profile(
        name=name, base_model_sha256=base.sha256,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        references=[r for _, r in references], calibration=calib,
        enroll={"config": {**asdict(cfg), "session_gain": gain}, "score_settings": asdict(score_settings),
                "train_windows": sampler.n_windows, "seconds": round(train_s, 2),
                "final_loss": loss.item(), "calibration_source": calib_source},
        tokens=tok,
    )
