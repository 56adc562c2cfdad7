"""Scorer: Windows + claimed profiles -> Scores, by diffusion reconstruction (ExposeAnyone).

For each window, the expressions are noised at a few fixed diffusion times with fixed
noise draws and reconstructed three ways: with the subject's tokens, with the null
tokens, and with the subject's tokens but the window's audio shifted in time. All
(window, time, draw, branch) combinations go through the network as ONE batched
forward pass; no iterative sampling. A cohort (below) adds a second pass, on one noise draw.

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
Without a decision, ``distance = w_identity * identity + w_sync * sync + w_fit * fit``. With
one (model/verification.py: the shipped decision file), the identity term is T-normalised
against the nearest training identities, the face and voice verification terms join, and the
distance is their fused value with the term that drove it. Higher means less like the person.

Noise draws are generated once from a fixed seed and shared by every window, so a
window always gets the same score whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from expose.monitor.features.timeline import FPS
from expose.monitor.features.windows import Window
from expose.monitor.model.denoisers import Denoiser, TorchDenoiser
from expose.monitor.model.diffusion import add_noise
from expose.monitor.model.exam import Exam, LoadedModel
from expose.monitor.model.score import Score, ScoreSettings
from expose.monitor.model.verification import Decision, IdentityReferences, appearance_term, face_term, voice_term

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
    # the profile's enrolled face and voice (face and voice terms need a Scorer decision too)
    references: IdentityReferences | None = None
    # the profile's own mean of the fit term (Calibration.fit_mean): the decision fuses fit
    # relative to it, since how well the model explains a face at all differs per person
    fit_centre: float = 0.0

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


@dataclass(frozen=True)
class MotionTerms:
    identity: float
    identity_mouth: float
    sync: float
    fit: float


def motion_terms(errs: torch.Tensor, mouth: torch.Tensor) -> MotionTerms:
    """The motion terms of one window from its reconstruction errors over all channels and
    over the mouth channels, each (times, draws, 3): subject, null, subject with shifted audio."""
    return MotionTerms(
        identity=float(torch.log(errs[..., 0] / errs[..., 1]).mean()),
        identity_mouth=float(torch.log(mouth[..., 0] / mouth[..., 1]).mean()),
        sync=float(torch.log(mouth[..., 0] / mouth[..., 2]).mean()),
        fit=float(torch.log(mouth[..., 0].clamp(min=1e-8)).mean()))


def identity_tnorm(e_sub: torch.Tensor, e_null: torch.Tensor, e_cohort: torch.Tensor) -> float:
    """The identity ratio T-normalised against the cohort's: (subject - mean over members) /
    their spread, all on the noise draws the cohort was run on (``e_cohort``: (times, draws_c,
    C); ``e_sub``, ``e_null``: (times, draws)), so subject and members share their noise."""
    n_d = e_cohort.shape[1]
    sub = torch.log(e_sub[:, :n_d] / e_null[:, :n_d]).mean()
    others = torch.log(e_cohort / e_null[:, :n_d, None]).mean(dim=(0, 1))  # (C,)
    return float((sub - others.mean()) / others.std().clamp(min=1e-4))


@dataclass
class Scorer:
    model: Exam
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    decision: Decision | None = None  # None: the legacy weighted motion distance
    # the network call (model/denoisers.py); None: the Exam module itself (TorchDenoiser). The
    # rest of scoring is the same whatever the backend (model/backends.py: make_scorer)
    denoiser: Denoiser | None = None

    @classmethod
    def of(cls, base: LoadedModel, device: torch.device | None = None) -> Scorer:
        """The scorer a loaded checkpoint is meant to be used with: its fusion weights and decision."""
        return cls(base.model, base.weights.settings(), device or torch.device("cpu"), base.decision)

    def motion_cohort(self, tokens: torch.Tensor, exclude: tuple[int, ...] = ()) -> torch.Tensor | None:
        """The cohort token sets the decision T-normalises a profile's identity term against."""
        if self.decision is None:
            return None
        return nearest_cohort(self.model, tokens, self.decision.spec.motion_cohort, exclude)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        if self.denoiser is None:
            self.denoiser = TorchDenoiser(self.model, self.device)
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
        for idx in groups.values():
            cohorts = [c for i in idx if (c := requests[i].cohort) is not None]
            cohort = torch.stack(cohorts) if cohorts else None
            errs, mouth, cohort_errs = self._errors([requests[i].window for i in idx],
                                                    torch.stack([requests[i].tokens for i in idx]), cohort)
            for j, i in enumerate(idx):
                w = requests[i].window
                e_sub, e_null = errs[:, :, j, 0], errs[:, :, j, 1]
                mt = motion_terms(errs[:, :, j], mouth[:, :, j])
                ident, ident_mouth, sync, fit = mt.identity, mt.identity_mouth, mt.sync, mt.fit
                tnorm = None
                if cohort_errs is not None:
                    tnorm = identity_tnorm(e_sub, e_null, cohort_errs[:, :, j])
                st = self.settings
                dist = st.w_identity * ident + st.w_sync * sync + st.w_fit * fit
                face = voice = app = None
                terms: dict[str, float] = {}
                driver = None
                if self.decision is not None:
                    refs = requests[i].references
                    if refs is not None:
                        face = face_term(w, refs, self.decision.face_cohort, self.decision.spec.min_faces)
                        voice = voice_term(w, refs, self.decision.voice_cohort)
                        if self.decision.appearance is not None:
                            app = appearance_term(w, refs, self.decision.appearance, self.decision.spec.min_faces)
                    fused = self.decision.fuse_terms(tnorm, sync, fit, requests[i].fit_centre,
                                                     face.tnorm if face else None, voice.tnorm if voice else None,
                                                     app)
                    dist, terms, driver = fused.distance, fused.z, fused.driver
                results[i] = Score(w.stream, requests[i].profile, w.t0, w.t1, "scored", w.face_ratio,
                                   w.speech_ratio, distance=dist, identity=ident, sync=sync, fit=fit,
                                   identity_mouth=ident_mouth, identity_tnorm=tnorm,
                                   err_subject=float(e_sub.mean()), err_null=float(e_null.mean()),
                                   face=face.tnorm if face else None, voice=voice.tnorm if voice else None,
                                   face_raw=face.raw if face else None, voice_raw=voice.raw if voice else None,
                                   appearance=app, terms=terms, driver=driver)
        return [results[i] for i in range(len(requests))]

    def score_batched(self, requests: list[ScoreRequest], batch: int = 32) -> list[Score]:
        """score() in chunks of ``batch`` windows: bounds memory; a window's score does not
        depend on what else is in its batch."""
        out: list[Score] = []
        for i in range(0, len(requests), batch):
            out += self.score(requests[i : i + batch])
        return out

    def _errors(self, windows: list[Window], tokens: torch.Tensor, cohort: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reconstruction errors over all channels and over the mouth channels, (times, draws,
        W, 3) for the branches subject, null, subject with shifted audio; and (times,
        cohort_draws, W, C) over all channels for each of the C cohort token sets (``cohort``:
        (W, C, K, d)) with the true audio, on the first ``cohort_draws`` noise draws only (one
        of four by default: a member costs a quarter of a main branch; measured in the model card)."""
        m = self.model
        x0 = m.normalize_expression(torch.from_numpy(np.stack([w.centered_expression() for w in windows])).to(
            self.device))  # (W, T, D)
        audio = m.normalize_audio(torch.from_numpy(np.stack([w.audio for w in windows])).to(self.device))
        mask = torch.from_numpy(np.stack([w.observed for w in windows])).to(self.device)  # errors: real frames
        shifted = m.encode_audio(torch.roll(audio, shifts=self._shift, dims=1))
        audio_n = m.encode_audio(audio)
        tokens = tokens.to(self.device)
        null = m.null_tokens.expand(len(windows), -1, -1)
        errs, mouth = self._pass(x0, mask, [audio_n, audio_n, shifted], [tokens, null, tokens],
                                 self._noise, with_mouth=True)
        cohort_errs = None
        if cohort is not None:
            members = list(cohort.to(self.device).transpose(0, 1))  # C x (W, K, d)
            cohort_errs, _ = self._pass(x0, mask, [audio_n] * len(members), members,
                                        self._noise[:, : self.settings.cohort_draws], with_mouth=False)
        assert mouth is not None
        return errs, mouth, cohort_errs

    def _pass(self, x0: torch.Tensor, mask: torch.Tensor, audio: list[torch.Tensor], tokens: list[torch.Tensor],
              noise: torch.Tensor, with_mouth: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batched forward pass over (times, draws, branch, window); branch b hears
        ``audio[b]`` (W, T, d encoded) with ``tokens[b]`` (W, K, d). ``noise``: (times, draws, T, D).
        Returns errors (times, draws, W, B), and over the mouth channels when asked."""
        m = self.model
        n_t, n_d = noise.shape[:2]
        n_b, n_w = len(audio), x0.shape[0]
        big = n_t * n_d * n_b * n_w
        branch_audio = torch.stack(audio)  # (B, W, T, d)
        branch_tokens = torch.stack(tokens)  # (B, W, K, d)
        x0_b = x0.expand(n_t, n_d, n_b, *x0.shape).reshape(big, *x0.shape[1:])
        mask_b = mask.expand(n_t, n_d, n_b, *mask.shape).reshape(big, -1)
        audio_b = branch_audio.expand(n_t, n_d, *branch_audio.shape).reshape(big, *branch_audio.shape[2:])
        tok_b = branch_tokens.expand(n_t, n_d, *branch_tokens.shape).reshape(big, *branch_tokens.shape[2:])
        times = torch.tensor(self.settings.times, device=self.device)[:n_t]
        t_b = times.view(n_t, 1, 1, 1).expand(n_t, n_d, n_b, n_w).reshape(big)
        noise_b = noise[:, :, None, None].expand(n_t, n_d, n_b, n_w, *noise.shape[2:]).reshape(big, *x0.shape[1:])
        assert self.denoiser is not None
        x0_hat = self.denoiser(add_noise(x0_b, t_b, noise_b), t_b, audio_b, tok_b)  # the one batched forward pass

        def arrange(e: torch.Tensor) -> torch.Tensor:
            return e.view(n_t, n_d, n_b, n_w).permute(0, 1, 3, 2)  # (times, draws, W, B)

        err = arrange(m.window_error(x0_b, x0_hat, mask_b))
        mouth = arrange(m.window_error(x0_b, x0_hat, mask_b, m.mouth_weight)) if with_mouth else None
        return err, mouth
