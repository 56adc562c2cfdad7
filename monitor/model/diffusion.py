"""Diffusion math, apart from the network: a DDPM-style variance-preserving forward
process with the cosine schedule (Nichol & Dhariwal, 2021) on continuous time t in [0, 1].

Pure functions on tensors; the network never sees raw t, only an embedding of it.
"""

from __future__ import annotations

import math

import torch

_S = 0.008  # cosine-schedule offset: keeps alpha_bar(0) just below 1
_MAX_T = 0.999  # avoid alpha_bar(1) == 0 (an infinitely noisy sample)


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """Fraction of signal variance kept at time t (1 at t=0, ~0 at t=1)."""
    t = t.clamp(0.0, _MAX_T)
    f = torch.cos((t + _S) / (1 + _S) * math.pi / 2) ** 2
    return f / math.cos(_S / (1 + _S) * math.pi / 2) ** 2


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps; x0, noise (B, T, D), t (B,)."""
    ab = alpha_bar(t).view(-1, *([1] * (x0.dim() - 1)))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) continuous t in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
