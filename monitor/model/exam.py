"""EXAM: the audio-to-expression diffusion denoiser (ExposeAnyone), in one file.

Given a noised window of expression rows x_t, the diffusion time t, the window's
audio features and a set of identity tokens, the network predicts the clean window
x0. Identity tokens are prefix tokens of the transformer: one learned set per
training identity, a learned *null* set for "no identity", and at enrollment a new
set of adapter tokens per subject (the rest of the network frozen).

Everything the network sees is normalised inside this module (expression scale, mel
statistics: buffers learned from the training corpus), so a checkpoint carries all
it needs; the config travels in the safetensors metadata (nanoGPT's ``model_args``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import ExposeError, ModelFileError
from expose.monitor.features.audio import MELS_PER_FRAME, N_MELS
from expose.monitor.features.expressions import EXPRESSION_DIM, MOUTH_CHANNELS
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.windows import AUDIO_DIM
from expose.monitor.model.diffusion import add_noise, timestep_embedding
from expose.monitor.model.score import FusionWeights
from expose.monitor.model.verification import Decision, appearance_digest, check_appearance, resolve_decision

CHECKPOINT_FORMAT = "expose-exam-1"
N_MEL_FEATURES = MELS_PER_FRAME * N_MELS
EXPR_CLAMP = 8.0


@dataclass(frozen=True)
class ModelConfig:
    expr_dim: int = EXPRESSION_DIM
    audio_dim: int = AUDIO_DIM
    window: int = 64  # frames (2.56 s at 25 fps)
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 4
    d_ff: int = 192
    dropout: float = 0.1
    n_id_tokens: int = 4
    n_identities: int = 1
    audio_layers: int = 2
    audio_kernel: int = 5
    mouth_weight: float = 2.0  # loss weight of mouth/jaw blendshapes (they carry speech)


class AudioEncoder(nn.Module):
    """Per-frame audio features -> d_model, with dilated temporal convolutions
    (receptive field ~0.5 s with the defaults) so each frame hears its phonetic context."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.audio_dim, cfg.d_model)
        self.convs = nn.ModuleList(
            nn.Conv1d(cfg.d_model, cfg.d_model, cfg.audio_kernel,
                      padding=(cfg.audio_kernel // 2) * 2**i, dilation=2**i)
            for i in range(cfg.audio_layers)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.proj(audio).transpose(1, 2)  # (B, d, T)
        for conv in self.convs:
            h = h + self.drop(F.gelu(conv(h)))
        return self.norm(h.transpose(1, 2))  # (B, T, d)


class Exam(nn.Module):
    expr_scale: torch.Tensor  # buffers, declared for type checkers
    mel_mean: torch.Tensor
    mel_std: torch.Tensor
    dim_weight: torch.Tensor
    mouth_weight: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k = cfg.d_model, cfg.n_id_tokens
        # normalisation statistics (set from the training corpus before training)
        self.register_buffer("expr_scale", torch.ones(cfg.expr_dim))
        self.register_buffer("mel_mean", torch.zeros(N_MEL_FEATURES))
        self.register_buffer("mel_std", torch.ones(N_MEL_FEATURES))
        weights = torch.ones(cfg.expr_dim)
        weights[torch.from_numpy(MOUTH_CHANNELS[: cfg.expr_dim])] = cfg.mouth_weight
        self.register_buffer("dim_weight", weights / weights.mean())
        # Mouth/jaw channels only: what the audio should explain (used by the sync term).
        self.register_buffer("mouth_weight", (weights > 1).float() / (weights > 1).float().mean().clamp(min=1e-6)
                             if cfg.mouth_weight > 1 else torch.ones(cfg.expr_dim), persistent=False)

        self.id_tokens = nn.Parameter(torch.randn(cfg.n_identities, k, d) * 0.02)
        self.null_tokens = nn.Parameter(torch.randn(k, d) * 0.02)
        self.token_pos = nn.Parameter(torch.randn(k, d) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(cfg.window, d) * 0.02)
        self.expr_in = nn.Linear(cfg.expr_dim, d)
        self.audio_enc = AudioEncoder(cfg)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.expr_dim)

    # ---- normalisation -------------------------------------------------------------
    def normalize_expression(self, centered: torch.Tensor) -> torch.Tensor:
        # Clamp: one wild channel (a landmarker glitch) must not dominate a window's error.
        return (centered / self.expr_scale).clamp(-EXPR_CLAMP, EXPR_CLAMP)

    def normalize_audio(self, audio: torch.Tensor) -> torch.Tensor:
        mel = (audio[..., :N_MEL_FEATURES] - self.mel_mean) / self.mel_std
        return torch.cat([mel, audio[..., N_MEL_FEATURES:]], dim=-1)

    # ---- identity tokens -------------------------------------------------------------
    def tokens_for(self, identity: torch.Tensor) -> torch.Tensor:
        """(B,) identity indices, -1 for the null set -> (B, K, d) tokens."""
        null = self.null_tokens.expand(len(identity), -1, -1)
        known = self.id_tokens[identity.clamp(min=0)]
        return torch.where((identity >= 0)[:, None, None], known, null)

    # ---- the denoiser ----------------------------------------------------------------
    def encode_audio(self, audio_n: torch.Tensor) -> torch.Tensor:
        """(B, T, A) normalised audio -> (B, T, d); computed once, reused across branches."""
        return self.audio_enc(audio_n)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, audio_h: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
        """x_t (B, T, D) normalised noisy expressions, t (B,), audio_h (B, T, d) encoded
        audio, tokens (B, K, d) -> predicted clean x0 (B, T, D)."""
        n_frames = x_t.shape[1]
        temb = self.time_mlp(timestep_embedding(t, self.cfg.d_model))[:, None, :]  # (B, 1, d)
        h = self.expr_in(x_t) + audio_h + self.frame_pos[:n_frames] + temb  # (B, T, d)
        seq = torch.cat([tokens + self.token_pos + temb, h], dim=1)  # (B, K + T, d)
        seq = self.blocks(seq)
        return self.out(self.out_norm(seq[:, self.cfg.n_id_tokens :]))  # (B, T, D)

    def window_error(self, x0: torch.Tensor, x0_hat: torch.Tensor, mask: torch.Tensor,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
        """Masked, dimension-weighted mean squared error per window: (B,)."""
        w = self.dim_weight if weight is None else weight
        se = ((x0_hat - x0) ** 2 * w).mean(dim=-1)  # (B, T)
        m = mask.float()
        return (se * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def denoising_error(self, x0: torch.Tensor, audio_h: torch.Tensor, mask: torch.Tensor,
                        tokens: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise x0 at t with the given noise, reconstruct, return the per-window error (B,).
        ``audio_h`` is the encoded audio (``encode_audio``)."""
        x_t = add_noise(x0, t, noise)
        return self.window_error(x0, self(x_t, t, audio_h, tokens), mask)


# ---- checkpoint I/O (safetensors; config and metadata as JSON in the header) ----------

def save_model(model: Exam, path: Path, meta: dict[str, object]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    header = {"format": CHECKPOINT_FORMAT, "config": json.dumps(asdict(model.cfg)),
              "meta": json.dumps(meta)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)


@dataclass(frozen=True)
class LoadedModel:
    model: Exam
    meta: dict
    sha256: str
    path: Path
    weights: FusionWeights = field(default_factory=FusionWeights)  # meta["score_weights"], validated
    decision: Decision | None = None  # the fused decision made for this checkpoint (model/verification.py)


def load_model(path: Path, decision: str | Path = "none", features: FeatureConfig | None = None) -> LoadedModel:
    """Read a checkpoint and its decision file: ``auto`` takes the shipped decision when it
    was made for this checkpoint (else none: the legacy motion distance), the one with the
    appearance term when ``features`` compute the shipped appearance weights, ``none`` takes
    none, a path takes that file and fails when it was made for another checkpoint. With
    ``features``, a decision's appearance term is checked against them (check_appearance)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ModelFileError(f"{path}: not an EXAM checkpoint (format {header.get('format')!r})")
            cfg = ModelConfig(**json.loads(header["config"]))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        model = Exam(cfg)
        model.load_state_dict(state)
    except ModelFileError:
        raise
    except Exception as err:  # safetensors raises several types for damaged files
        raise ModelFileError(f"{path}: unreadable model file ({str(err).splitlines()[0]})") from None
    model.eval()
    meta = json.loads(header.get("meta", "{}"))
    try:
        weights = FusionWeights.model_validate(meta.get("score_weights") or {})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelFileError(f"{path}: invalid score_weights.{where}: {first['msg']}") from None
    digest = sha256_file(path)
    app_digest = appearance_digest(features)  # hashed once: picks the auto decision, checks the one resolved
    resolved = resolve_decision(decision, digest, app_digest)
    if features is not None:
        check_appearance(resolved, features, app_digest)
    return LoadedModel(model, meta, digest, path, weights, resolved)


def pick_device(name: str) -> torch.device:
    """``auto`` (a GPU when present, else the CPU), ``cpu`` or ``cuda[:N]``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ExposeError(f"device {name!r} was asked for but no CUDA GPU is available (use 'auto' or 'cpu')")
    return torch.device(name)
