"""Pre-training of EXAM on folders of talking videos, and the window sampling it shares
with enrollment.

With minutes of data the denoiser memorises and ignores the audio unless it is made
costly, so besides the masked denoising loss (the paper's objective) two margin terms
are trained on the same noised input:
- sync: the error with the window's true audio must be lower than with the same
  speaker's audio shifted in time (or another window's audio);
- identity: the error with the identity's own tokens must be lower than with another
  identity's tokens.
Selection and early stopping use a validation split of held-out windows of training
identities (the last part of each recording) and, when given, held-out identities.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from expose.monitor.features.audio import SPEECH_THRESHOLD
from expose.monitor.features.expressions import EXPRESSION_NAMES
from expose.monitor.features.timeline import FPS
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import Window, center_expression
from expose.monitor.model.diffusion import add_noise
from expose.monitor.model.exam import Exam, ModelConfig, pick_device, save_model
from expose.monitor.model.score import FusionWeights, ScoreSettings
from expose.monitor.model.scorer import Scorer, requests_for
from expose.monitor.model.smoothing import empirical_sd_ratios, overlap_sd_ratios
from expose.monitor.training.corpus import CorpusTrack

log = logging.getLogger(__name__)

SCORE_TIMES = ScoreSettings().times  # diffusion times used for validation: the scorer's
EXPR_SCALE_FLOOR = 0.02


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2500
    batch: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.05
    p_null: float = 0.25  # probability of replacing identity tokens by the null set
    sync_weight: float = 0.5
    id_weight: float = 0.5
    margin: float = 0.15  # in log-error units (~15 % error gap)
    min_face: float = 0.75
    min_speech: float = 0.2
    stride: int = 4
    val_fraction: float = 0.15
    eval_every: int = 100
    patience: int = 8  # evaluations without improvement before stopping
    time_warp: float = 0.1
    session_gain: float = 0.0  # sd of a per-window, per-channel log gain (simulated camera/session change)
    mirror: float = 0.0  # probability of mirroring a window left-right (it then trains the null tokens only)
    seed: int = 0
    device: str = "auto"


@dataclass
class WindowBatch:
    x0: torch.Tensor  # (B, T, D) centred (not yet scaled) expressions
    mask: torch.Tensor  # (B, T) bool: rows whose error counts (observed frames)
    audio: torch.Tensor  # (B, T, A)
    audio_neg: torch.Tensor  # (B, T, A): desynchronised audio for the sync term
    identity: torch.Tensor  # (B,) int64

    def to(self, device: torch.device) -> WindowBatch:
        return WindowBatch(*(getattr(self, f).to(device) for f in ("x0", "mask", "audio", "audio_neg", "identity")))


def _mirror_permutation() -> tuple[np.ndarray, np.ndarray]:
    """Channel order and signs of a left-right mirrored face: *Left and *Right blendshapes
    swap; yaw, roll and the horizontal translation change sign."""
    names = list(EXPRESSION_NAMES)
    perm = np.arange(len(names))
    for i, n in enumerate(names):
        for a, b in (("Left", "Right"), ("Right", "Left")):
            if n.endswith(a) and n[: -len(a)] + b in names:
                perm[i] = names.index(n[: -len(a)] + b)
    sign = np.ones(len(names), dtype=np.float32)
    for n in ("yaw", "roll", "tx"):
        sign[names.index(n)] = -1.0
    return perm, sign


_MIRROR_PERM, _MIRROR_SIGN = _mirror_permutation()


def mirror_expression(x: np.ndarray) -> np.ndarray:
    """(T, D) expression rows of the mirrored face."""
    return x[:, _MIRROR_PERM] * _MIRROR_SIGN


def valid_starts(tr: FeatureTrack, lo: int, hi: int, length: int, min_face: float,
                 min_speech: float, stride: int) -> tuple[np.ndarray, int]:
    """Window starts in [lo, hi - length] with enough face and speech; also the number skipped."""
    if hi - lo < length:
        return np.zeros(0, dtype=np.int64), 0
    starts = np.arange(lo, hi - length + 1, stride)
    face = np.convolve(tr.face_mask.astype(np.float32), np.ones(length), "valid") / length
    speech = np.convolve((tr.speech >= SPEECH_THRESHOLD).astype(np.float32), np.ones(length), "valid") / length
    ok = (face[starts] >= min_face) & (speech[starts] >= min_speech)
    return starts[ok], int((~ok).sum())


@dataclass
class Segment:
    track: FeatureTrack
    identity: int  # index into the identity table, -1 for held-out identities
    lo: int
    hi: int
    starts: np.ndarray
    name: str = ""  # the identity's name: it groups held-out identities' segments


@dataclass
class WindowSampler:
    segments: list[Segment]
    length: int
    rng: np.random.Generator
    time_warp: float = 0.0
    session_gain: float = 0.0
    mirror: float = 0.0
    weights: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.segments = [s for s in self.segments if len(s.starts)]
        if not self.segments:
            raise ValueError("no window has enough face and speech")
        # Balance identities: weight ~ sqrt(frames), so one long recording does not dominate.
        by_id: dict[int | str, int] = {}
        for s in self.segments:
            key = s.identity if s.identity >= 0 else s.name
            by_id[key] = by_id.get(key, 0) + len(s.starts)
        w = np.array([math.sqrt(by_id[s.identity if s.identity >= 0 else s.name])
                      * len(s.starts) / by_id[s.identity if s.identity >= 0 else s.name]
                      for s in self.segments])
        self.weights = w / w.sum()

    @property
    def n_windows(self) -> int:
        return int(sum(len(s.starts) for s in self.segments))

    def _indices(self, seg: Segment, start: int) -> np.ndarray:
        if self.time_warp <= 0:
            return np.arange(start, start + self.length)
        r = 1.0 + self.rng.uniform(-self.time_warp, self.time_warp)
        span = int(min(round(self.length * r), seg.hi - start))
        return start + np.floor(np.linspace(0, span - 1, self.length) + 0.5).astype(np.int64)

    def _negative_audio(self, seg: Segment, start: int) -> np.ndarray | None:
        """The same recording's audio shifted by 0.5-1.6 s, when the recording allows it."""
        lo, hi = seg.lo, seg.hi - self.length
        cands = [s for s in (start + d for d in range(-40, 41) if abs(d) >= 12) if lo <= s <= hi]
        if not cands:
            return None
        s = cands[int(self.rng.integers(len(cands)))]
        return seg.track.audio_rows(slice(s, s + self.length))

    def sample(self, batch: int) -> WindowBatch:
        segs = self.rng.choice(len(self.segments), size=batch, p=self.weights)
        xs, ms, auds, negs, ids = [], [], [], [], []
        for si in segs:
            seg = self.segments[si]
            start = int(seg.starts[self.rng.integers(len(seg.starts))])
            idx = self._indices(seg, start)
            x = center_expression(seg.track.expression[idx], seg.track.face_mask[idx])
            mask = seg.track.observed[idx]  # the loss counts frames that were really seen
            if self.session_gain > 0:
                # Another camera or session scales each channel's motion differently; the
                # tokens should not depend on the exact amplitudes of one recording.
                x = x * np.exp(self.rng.normal(0.0, self.session_gain, x.shape[1])).astype(x.dtype)
            identity = seg.identity
            if self.mirror > 0 and self.rng.random() < self.mirror:
                # A mirrored face is a plausible face but not this person (asymmetries flip):
                # it enlarges what the null tokens ("anyone") learn, never an identity's tokens.
                x = mirror_expression(x)
                identity = -1
            xs.append(x)
            ms.append(mask)
            auds.append(seg.track.audio_rows(idx))
            negs.append(self._negative_audio(seg, start))
            ids.append(identity)
        # Where no same-recording shift exists, use another window's audio.
        neg_audio = [n if n is not None else auds[(i + 1) % batch] for i, n in enumerate(negs)]
        return WindowBatch(
            torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ms)),
            torch.from_numpy(np.stack(auds)), torch.from_numpy(np.stack(neg_audio)),
            torch.tensor(ids, dtype=torch.int64),
        )

    def fixed(self, n: int, seed: int) -> WindowBatch:
        """A reproducible set of up to n windows (for validation)."""
        saved = self.rng, self.time_warp, self.session_gain, self.mirror
        self.rng, self.time_warp, self.session_gain, self.mirror = np.random.default_rng(seed), 0.0, 0.0, 0.0
        try:
            return self.sample(min(n, max(self.n_windows, 1)))
        finally:
            self.rng, self.time_warp, self.session_gain, self.mirror = saved


def corpus_statistics(sampler: WindowSampler, n: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel scale of centred expressions and per-feature mel mean/std."""
    b = sampler.fixed(n, seed=12345)
    m = b.mask.reshape(-1)
    x = b.x0.reshape(-1, b.x0.shape[-1])[m]
    # Floor: blendshape changes below ~0.02 are landmarker jitter; without it a channel that
    # never moves in the corpus explodes on the first person for whom it does.
    scale = x.std(dim=0).clamp(min=EXPR_SCALE_FLOOR)
    from expose.monitor.model.exam import N_MEL_FEATURES

    mel = b.audio.reshape(-1, b.audio.shape[-1])[:, :N_MEL_FEATURES]
    return scale, mel.mean(dim=0), mel.std(dim=0).clamp(min=1e-3)


def margin_losses(model: Exam, b: WindowBatch, t: torch.Tensor, noise: torch.Tensor,
                  p_null: float, gen: torch.Generator, n_identities: int, margin: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(denoising loss, sync margin loss, identity margin loss) for one batch."""
    x0 = model.normalize_expression(b.x0)
    audio_h = model.encode_audio(model.normalize_audio(b.audio))
    ident = b.identity.clone()
    drop = torch.rand(len(ident), generator=gen).to(ident.device) < p_null
    ident[drop] = -1
    tokens = model.tokens_for(ident)
    err = model.denoising_error(x0, audio_h, b.mask, tokens, t, noise)
    # The margin terms use half the batch each: they shape the errors, the first term fits them.
    h = len(x0) // 2
    neg_h = model.encode_audio(model.normalize_audio(b.audio_neg[:h]))
    err_neg_audio = model.denoising_error(x0[:h], neg_h, b.mask[:h], tokens[:h], t[:h], noise[:h])
    sync = torch.relu(margin + torch.log(err[:h] + 1e-6) - torch.log(err_neg_audio + 1e-6)).mean()
    if n_identities > 1:
        sl = slice(h, len(x0))
        other = (b.identity[sl] + torch.randint(1, n_identities, (len(x0) - h,), generator=gen
                                                ).to(ident.device)) % n_identities
        has_id = ~drop[sl] & (b.identity[sl] >= 0)  # mirrored windows have no identity
        err_other = model.denoising_error(x0[sl], audio_h[sl], b.mask[sl], model.tokens_for(other), t[sl], noise[sl])
        id_term = torch.relu(margin + torch.log(err[sl] + 1e-6) - torch.log(err_other + 1e-6))
        id_loss = (id_term * has_id).sum() / has_id.sum().clamp(min=1)
    else:
        id_loss = torch.zeros((), device=x0.device)
    return err.mean(), sync, id_loss


@torch.no_grad()
def evaluate(model: Exam, b: WindowBatch, seed: int = 0, own_tokens: bool = True) -> dict[str, float]:
    """Validation figures at the fixed scoring times, with fixed noise."""
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x0 = model.normalize_expression(b.x0)
    audio = model.encode_audio(model.normalize_audio(b.audio))
    audio_neg = model.encode_audio(model.normalize_audio(b.audio_neg))
    null = model.tokens_for(torch.full_like(b.identity, -1))
    own = model.tokens_for(b.identity) if own_tokens else null
    res: dict[str, list[torch.Tensor]] = {"own": [], "null": [], "own_shift": [], "mouth": [], "mouth_shift": []}
    for t_val in SCORE_TIMES:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = torch.full((len(x0),), t_val, device=x0.device)
        x_t = add_noise(x0, t, noise)
        pred_own, pred_shift = model(x_t, t, audio, own), model(x_t, t, audio_neg, own)
        res["own"].append(model.window_error(x0, pred_own, b.mask))
        res["null"].append(model.window_error(x0, model(x_t, t, audio, null), b.mask))
        res["own_shift"].append(model.window_error(x0, pred_shift, b.mask))
        res["mouth"].append(model.window_error(x0, pred_own, b.mask, model.mouth_weight))
        res["mouth_shift"].append(model.window_error(x0, pred_shift, b.mask, model.mouth_weight))
    own_e, null_e, shift_e, mouth_e, mouth_shift_e = (
        torch.stack(res[k]).mean(0) for k in ("own", "null", "own_shift", "mouth", "mouth_shift"))
    model.train()
    return {
        "err_own": float(own_e.mean()),
        "err_null": float(null_e.mean()),
        "audio_shift_ratio": float((shift_e / own_e).mean()),
        "mouth_audio_shift_ratio": float((mouth_shift_e / mouth_e).mean()),
        "id_log_gap": float(torch.log(own_e / null_e).mean()),
    }


@dataclass
class TrainResult:
    best_step: int
    best_val: float
    history: list[dict[str, float]]
    seconds: float
    identities: list[str]
    windows_train: int
    windows_skipped: int


def split_segments(tracks: list[CorpusTrack], identities: list[str], holdout: set[str],
                   cfg: TrainConfig, length: int) -> tuple[list[Segment], list[Segment], list[Segment], int]:
    """(train, val_seen, val_unseen, skipped): the last val_fraction of each training
    recording is held out; held-out identities go whole to val_unseen."""
    index = {name: i for i, name in enumerate(identities)}
    train, seen, unseen, skipped = [], [], [], 0
    for item in tracks:
        tr, name = item.track, item.identity
        n = len(tr)
        if name in holdout:
            st, sk = valid_starts(tr, 0, n, length, cfg.min_face, cfg.min_speech, cfg.stride)
            unseen.append(Segment(tr, -1, 0, n, st, name))
            skipped += sk
            continue
        cut = n - int(round(n * cfg.val_fraction)) if n >= 3 * length else n
        st, sk = valid_starts(tr, 0, cut, length, cfg.min_face, cfg.min_speech, cfg.stride)
        train.append(Segment(tr, index[name], 0, cut, st, name))
        skipped += sk
        if cut < n:
            st, _ = valid_starts(tr, cut, n, length, cfg.min_face, cfg.min_speech, cfg.stride)
            seen.append(Segment(tr, index[name], cut, n, st, name))
    return train, seen, unseen, skipped


def validation_windows(segments: list[Segment], length: int, stride: int = 8) -> list[tuple[Window, int]]:
    """(window, identity index) for every valid start of held-out segments."""
    out = []
    for seg in segments:
        out += [(seg.track.window(int(s), length), seg.identity) for s in seg.starts[::max(1, stride // 4)]]
    return out


def finalize_checkpoint(out: Path, tracks: list[CorpusTrack], holdout: set[str], cfg: TrainConfig,
                        ) -> FusionWeights:
    """Reload the best checkpoint, fit the score weights on its validation windows, measure
    how smoothing shrinks the genuine spread, re-save."""
    from expose.monitor.model.exam import load_model
    from expose.monitor.model.fusion import choose_weights, validation_families

    best = load_model(out)
    identities = best.meta["identities"]
    _, seen, _, _ = split_segments(tracks, identities, set(holdout), cfg, best.model.cfg.window)
    windows = validation_windows(seen, best.model.cfg.window)
    families = validation_families(best.model, windows)
    weights = choose_weights(families, np.array([k for _, k in windows]))
    weights = weights.model_copy(update={"smoothing_sd_ratio": smoothing_ratios(best.model, weights, tracks,
                                                                                identities)})
    save_model(best.model, out, {**best.meta, "score_weights": weights.model_dump(exclude_none=True)})
    return weights


def smoothing_ratios(model: Exam, weights: FusionWeights, tracks: list[CorpusTrack],
                     identities: list[str], hop: int = FPS) -> list[float]:
    """sd(mean of n consecutive windows) / sd(one window) of the fused distance on the
    training identities' recordings with their own tokens (monitor/smoothing.py); the
    overlap bound where the recordings are too short to measure it."""
    length = model.cfg.window
    scorer = Scorer(model, weights.settings())
    index = {n: i for i, n in enumerate(identities)}
    series: list[np.ndarray] = []
    for item in tracks:
        if item.identity not in index:
            continue
        ws = item.track.windows(0, len(item.track), length, hop)
        tok = model.id_tokens[index[item.identity]].detach()
        run: list[float] = []
        for sc in scorer.score_batched(requests_for(ws, tok, "cal")):
            if sc.distance is None:  # a gap ends a run of consecutive windows
                if run:
                    series.append(np.array(run))
                run = []
            else:
                run.append(sc.distance)
        if run:
            series.append(np.array(run))
    bound = overlap_sd_ratios(length, hop)
    measured = empirical_sd_ratios(series)
    return bound if measured is None else [max(a, b) for a, b in zip(measured, bound, strict=True)]


@dataclass
class EarlyStopping:
    """The best validation value so far (lower is better unless ``higher``), its step, and
    the validations since it last improved. Shared by the EXAM and the appearance trainers."""

    patience: int
    higher: bool = False
    best: float = field(init=False)
    best_step: int = -1
    bad: int = 0

    def __post_init__(self) -> None:
        self.best = -math.inf if self.higher else math.inf

    def improved(self, value: float, step: int) -> bool:
        """Record a validation; True when it is the best so far (then save the checkpoint)."""
        if value > self.best if self.higher else value < self.best:
            self.best, self.best_step, self.bad = value, step, 0
            return True
        self.bad += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad >= self.patience


def state_path(out: Path) -> Path:
    return out.with_name(out.stem + ".state.safetensors")


def save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                best: float, best_step: int, history: list) -> None:
    """Resume state without pickle: model (buffers included) + AdamW moments as tensors, the
    rest as JSON. Shared by the EXAM and the appearance trainers."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq"):
                if k in st:
                    tensors[f"opt.{names[id(p)]}.{k}"] = st[k].detach().cpu().contiguous()
    meta = {"step": step, "best": best, "best_step": best_step, "history": history,
            "opt_step": int(next(iter(opt.state.values()))["step"]) if opt.state else 0}
    save_file(tensors, str(path), metadata={"json": json.dumps(meta)})


def load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["json"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for n, p in model.named_parameters():
        if f"opt.{n}.exp_avg" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(meta["opt_step"])),
                "exp_avg": tensors[f"opt.{n}.exp_avg"].to(device),
                "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].to(device),
            }
    return meta


def resume_training(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                    stop: EarlyStopping) -> tuple[int, list[dict[str, float]]]:
    """Load a resume state into the model and optimiser, fast-forward the schedule and restore
    the best validation so far: (step, history)."""
    meta = load_state(path, model, opt, device)
    stop.best, stop.best_step = meta["best"], meta["best_step"]
    with warnings.catch_warnings():  # fast-forwarding the schedule: no optimiser step is missed
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(meta["step"]):
            sched.step()
    log.info("resumed at step %d", meta["step"])
    return meta["step"], meta["history"]


def train(
    tracks: list[CorpusTrack],
    out: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    holdout: set[str] = frozenset(),  # type: ignore[assignment]
    resume: bool = False,
    on_step: Callable[[int, float, dict[str, float] | None], None] | None = None,
) -> TrainResult:
    """Train and write the best checkpoint (by validation loss) to ``out``."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    identities = sorted({t.identity for t in tracks if t.identity not in holdout})
    if not identities:
        raise ValueError("no training identity left after the hold-out")
    model_cfg = ModelConfig(**{**asdict(model_cfg), "n_identities": len(identities)})
    train_s, seen_s, unseen_s, skipped = split_segments(tracks, identities, set(holdout), cfg, model_cfg.window)
    sampler = WindowSampler(train_s, model_cfg.window, rng, cfg.time_warp, cfg.session_gain, cfg.mirror)
    def fixed_set(segs: list[Segment], seed: int) -> WindowBatch | None:
        return WindowSampler(segs, model_cfg.window, rng).fixed(256, seed) if any(len(s.starts) for s in segs) else None

    val_seen, val_unseen = fixed_set(seen_s, 1), fixed_set(unseen_s, 2)

    model = Exam(model_cfg)
    scale, mel_mean, mel_std = corpus_statistics(sampler)
    model.expr_scale.copy_(scale)
    model.mel_mean.copy_(mel_mean)
    model.mel_std.copy_(mel_std)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    amp = device.type == "cuda"

    step, stop = 0, EarlyStopping(cfg.patience)
    history: list[dict[str, float]] = []
    state_file = state_path(out)
    if resume and state_file.is_file():
        step, history = resume_training(state_file, model, opt, sched, device, stop)
    t_start = time.perf_counter()
    while step < cfg.steps:
        b = sampler.sample(cfg.batch).to(device)
        t = torch.empty(cfg.batch).uniform_(0.05, 0.95, generator=gen).to(device)
        noise = torch.randn(b.x0.shape, generator=gen).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            rec, sync, idl = margin_losses(model, b, t, noise, cfg.p_null, gen, len(identities), cfg.margin)
            loss = rec + cfg.sync_weight * sync + cfg.id_weight * idl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        evals = None
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evals = {"step": step, "loss": loss.item(), "rec": rec.item(), "sync": sync.item(), "id": idl.item()}
            if val_seen is not None:
                evals.update({f"seen_{k}": v for k, v in evaluate(model, val_seen.to(device)).items()})
            if val_unseen is not None:
                unseen = evaluate(model, val_unseen.to(device), own_tokens=False)
                evals.update({f"unseen_{k}": v for k, v in unseen.items()})
            parts = [evals[k] for k in ("seen_err_own", "unseen_err_null") if k in evals]
            val = float(np.mean(parts)) if parts else float(rec)
            evals["val"] = val
            history.append(evals)
            if stop.improved(val, step):
                save_model(model, out, {"identities": identities, "train": asdict(cfg), "step": step,
                                        "val": evals})
            save_state(state_file, model, opt, step, stop.best, stop.best_step, history)
        if on_step:
            on_step(step, loss.item(), evals)
        if evals is not None and stop.exhausted:
            log.info("early stop at step %d (best %d)", step, stop.best_step)
            break
    if val_seen is not None and out.is_file():
        finalize_checkpoint(out, tracks, set(holdout), cfg)
    return TrainResult(stop.best_step, stop.best, history, time.perf_counter() - t_start, identities,
                       sampler.n_windows, skipped)
