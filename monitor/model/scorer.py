"""Scorer: Windows + claimed profiles -> Scores, by diffusion reconstruction (ExposeAnyone).

For each window, the expressions are noised at a few fixed diffusion times with fixed
noise draws and reconstructed three ways: with the subject's tokens, with the null
tokens, and with the subject's tokens but the window's audio shifted in time. All
(window, time, draw, branch) combinations go through the network as ONE batched
forward pass; no iterative sampling.

Two terms, each kept in the Score so a console can say why a window was flagged:
- ``identity`` = mean log(err_subject / err_null): below 0 when the subject's tokens
  explain the motion better than "anyone" does; content-agnostic, since hard content
  raises both errors.
- ``sync`` = mean log(err_subject / err_subject_with_shifted_audio) over the mouth and
  jaw channels (what the audio should explain): below 0 when the true audio explains
  the mouth better than the same audio out of sync. The identity
  ratio alone is blind to dubbing and lip-sync (both branches hear the same wrong
  audio); this term is not.
- ``fit`` = mean log(err_subject) over the mouth and jaw channels: how well the subject's
  personalised model explains the mouth at all. The two ratios cancel what both of their
  branches fail on, so a mouth that no one moves like that (the jitter and the
  over-articulated or implausible shapes of generated lip-sync) leaves them unmoved; this
  absolute term sees it. It depends on content and recording quality, so profiles
  centre it on their own calibration windows (profiles/store.py).
``distance = w_identity * identity + w_sync * sync + w_fit * fit``; higher means less like
the person.

Noise draws are generated once from a fixed seed and shared by every window, so a
window always gets the same score whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from expose.monitor.features.timeline import FPS
from expose.monitor.features.windows import Window
from expose.monitor.model.diffusion import add_noise
from expose.monitor.model.exam import Exam
from expose.monitor.model.score import Score, ScoreSettings

DEFAULT_HOP = FPS  # one window per second, offline and live


@dataclass(frozen=True)
class ScoreRequest:
    """One window to score against one claimed profile."""

    window: Window
    tokens: torch.Tensor  # (K, d_model) the claimed profile's adapter tokens
    profile: str  # the claimed profile's name, carried into the Score
    # (C, K, d_model) token sets of other identities: the window is also reconstructed with
    # each, and the identity term is T-normalised against theirs (Score.identity_tnorm)
    cohort: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be (K, d_model), got shape {tuple(self.tokens.shape)}")
        if self.cohort is not None and (self.cohort.ndim != 3 or self.cohort.shape[1:] != self.tokens.shape
                                        or len(self.cohort) < 2):
            raise ValueError(f"cohort must be (C >= 2, {', '.join(map(str, self.tokens.shape))}), "
                             f"got shape {tuple(self.cohort.shape)}")

    @property
    def cohort_size(self) -> int:
        return 0 if self.cohort is None else len(self.cohort)


def requests_for(windows: list[Window], tokens: torch.Tensor, profile: str,
                 cohort: torch.Tensor | None = None) -> list[ScoreRequest]:
    """Every window claimed as the same profile (a clip, a reference, a validation set)."""
    return [ScoreRequest(w, tokens, profile, cohort) for w in windows]


def nearest_cohort(model: Exam, tokens: torch.Tensor, size: int, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """(size, K, d) the base model's training-identity token sets nearest to ``tokens``
    (adaptive cohort, as in speaker verification's AS-norm: the others a profile is most
    easily confused with say most about how far a window is from it, relative to anyone).
    ``exclude``: identity indices never to use (the profile's own identity in training)."""
    pool = model.id_tokens.detach()
    keep = [i for i in range(len(pool)) if i not in set(exclude)]
    if size < 2 or size > len(keep):
        raise ValueError(f"cohort size must be 2..{len(keep)}, got {size}")
    d = (pool[keep] - tokens.to(pool.device)[None]).flatten(1).norm(dim=1)
    order = torch.argsort(d, stable=True)[:size]
    return pool[[keep[int(i)] for i in order]].clone()


@dataclass
class Scorer:
    model: Exam
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        cfg = self.model.cfg
        gen = torch.Generator(device="cpu").manual_seed(self.settings.seed)
        # (times, draws, T, D): one fixed noise draw per (time, draw), shared by all windows
        self._noise = torch.randn(len(self.settings.times), self.settings.draws, cfg.window,
                                  cfg.expr_dim, generator=gen).to(self.device)
        self._shift = int(round(self.settings.audio_shift_s * FPS))

    def insufficiency(self, w: Window) -> str:
        s = self.settings
        if w.length != self.model.cfg.window:
            return f"window has {w.length} frames, the model takes {self.model.cfg.window}"
        if w.face_ratio < s.min_face:
            return f"face on {100 * w.face_ratio:.0f}% of frames (< {100 * s.min_face:.0f}%)"
        if w.speech_ratio < s.min_speech:
            return f"speech on {100 * w.speech_ratio:.0f}% of frames (< {100 * s.min_speech:.0f}%)"
        return ""

    @torch.no_grad()
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        """Score each window against its claimed profile's tokens, in one batched pass."""
        reasons = [self.insufficiency(r.window) for r in requests]
        ok = [i for i, r in enumerate(reasons) if not r]
        results: dict[int, Score] = {}
        for i, r in enumerate(reasons):
            if r:
                w = requests[i].window
                results[i] = Score(w.stream, requests[i].profile, w.t0, w.t1, "insufficient", w.face_ratio,
                                   w.speech_ratio, reason=r)
        groups: dict[int, list[int]] = {}  # one batched pass per cohort size (usually one)
        for i in ok:
            groups.setdefault(requests[i].cohort_size, []).append(i)
        for size, idx in groups.items():
            cohorts = [c for i in idx if (c := requests[i].cohort) is not None]
            cohort = torch.stack(cohorts) if cohorts else None
            errs, mouth = self._errors([requests[i].window for i in idx],
                                       torch.stack([requests[i].tokens for i in idx]), cohort)
            for j, i in enumerate(idx):
                w = requests[i].window
                e_sub, e_null = errs[:, :, j, 0], errs[:, :, j, 1]
                ident = float(torch.log(e_sub / e_null).mean())
                tnorm = None
                if size:
                    # the same ratio for each cohort member; T-norm: where the subject sits among them
                    others = torch.log(errs[:, :, j, 3:] / e_null[..., None]).mean(dim=(0, 1))  # (C,)
                    tnorm = float((ident - others.mean()) / others.std().clamp(min=1e-4))
                ident_mouth = float(torch.log(mouth[:, :, j, 0] / mouth[:, :, j, 1]).mean())
                sync = float(torch.log(mouth[:, :, j, 0] / mouth[:, :, j, 2]).mean())
                fit = float(torch.log(mouth[:, :, j, 0].clamp(min=1e-8)).mean())
                st = self.settings
                dist = st.w_identity * ident + st.w_sync * sync + st.w_fit * fit
                results[i] = Score(w.stream, requests[i].profile, w.t0, w.t1, "scored", w.face_ratio,
                                   w.speech_ratio, distance=dist, identity=ident, sync=sync, fit=fit,
                                   identity_mouth=ident_mouth, identity_tnorm=tnorm,
                                   err_subject=float(e_sub.mean()), err_null=float(e_null.mean()))
        return [results[i] for i in range(len(requests))]

    def score_batched(self, requests: list[ScoreRequest], batch: int = 32) -> list[Score]:
        """score() in chunks of ``batch`` windows: bounds memory; a window's score does not
        depend on what else is in its batch."""
        out: list[Score] = []
        for i in range(0, len(requests), batch):
            out += self.score(requests[i : i + batch])
        return out

    def _errors(self, windows: list[Window], tokens: torch.Tensor, cohort: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(times, draws, W, 3 + C) reconstruction errors over all channels and over the mouth
        channels; branches: subject, null, subject with shifted audio, then each of the C
        cohort token sets (``cohort``: (W, C, K, d)) with the true audio."""
        m = self.model
        n_t, n_d = len(self.settings.times), self.settings.draws
        n_w = len(windows)
        x0 = torch.from_numpy(np.stack([w.centered_expression() for w in windows])).to(self.device)
        audio = torch.from_numpy(np.stack([w.audio for w in windows])).to(self.device)
        mask = torch.from_numpy(np.stack([w.observed for w in windows])).to(self.device)  # errors: real frames
        x0 = m.normalize_expression(x0)  # (W, T, D)
        audio_n = m.normalize_audio(audio)
        shifted = m.encode_audio(torch.roll(audio_n, shifts=self._shift, dims=1))
        audio_n = m.encode_audio(audio_n)
        null = m.null_tokens.expand(n_w, -1, -1)
        tokens = tokens.to(self.device)
        # Build the whole batch: (times, draws, branch, W) flattened.
        n_c = 0 if cohort is None else cohort.shape[1]
        n_b = 3 + n_c
        branch_audio = torch.stack([audio_n, audio_n, shifted] + [audio_n] * n_c)  # (B, W, T, d) encoded
        others = [] if cohort is None else list(cohort.to(self.device).transpose(0, 1))  # C x (W, K, d)
        branch_tokens = torch.stack([tokens, null, tokens, *others])  # (B, W, K, d)
        big = n_t * n_d * n_b * n_w
        x0_b = x0.expand(n_t, n_d, n_b, *x0.shape).reshape(big, *x0.shape[1:])
        mask_b = mask.expand(n_t, n_d, n_b, *mask.shape).reshape(big, -1)
        audio_b = branch_audio.expand(n_t, n_d, *branch_audio.shape).reshape(big, *audio_n.shape[1:])
        tok_b = branch_tokens.expand(n_t, n_d, *branch_tokens.shape).reshape(big, *tokens.shape[1:])
        times = torch.tensor(self.settings.times, device=self.device)
        t_b = times.view(n_t, 1, 1, 1).expand(n_t, n_d, n_b, n_w).reshape(big)
        noise_b = self._noise[:, :, None, None].expand(n_t, n_d, n_b, n_w, *self._noise.shape[2:])
        noise_b = noise_b.reshape(big, *x0.shape[1:])
        x_t = add_noise(x0_b, t_b, noise_b)
        x0_hat = m(x_t, t_b, audio_b, tok_b)  # the one batched forward pass
        err = m.window_error(x0_b, x0_hat, mask_b)  # (big,)
        mouth = m.window_error(x0_b, x0_hat, mask_b, m.mouth_weight)

        def arrange(e: torch.Tensor) -> torch.Tensor:
            return e.view(n_t, n_d, n_b, n_w).permute(0, 1, 3, 2)  # (times, draws, W, B)

        return arrange(err), arrange(mouth)
