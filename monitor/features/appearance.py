"""Appearance embedding (DiffFake's): a small CNN trained to tell real faces from self-blended
pseudo-fakes (monitor/training/sbi.py, ``expose train-appearance``); its pooled features are
the embedding, in which a manipulated face sits apart from the person's real ones.

Input: the square face crop of ``face_crop`` (the landmark box widened by a margin, so a swap's
blending boundary is inside), resized to the network's size, RGB scaled to [-1, 1]. The
network: a stride-2 stem and stages of two 3x3 convolutions with batch norm and a residual
connection, each halving the resolution, then global average pooling (the embedding) and a
linear real-vs-fake head used only in training. In eval mode (batch norm frozen) the same crop
always gives the same vector, whatever else is in the batch.

Weights are a safetensors file with the network's configuration and training record in its
header (format ``expose-appearance-1``); a file that is missing, unreadable or of another
format is one ``ModelFileError`` line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn

from expose.monitor.errors import ModelFileError

if TYPE_CHECKING:
    from expose.monitor.features.face_id import FaceSample

APPEARANCE_FORMAT = "expose-appearance-1"


def face_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 224, margin: float = 0.25) -> np.ndarray:
    """The (size, size, 3) square around the landmark box, widened by ``margin`` of its side on
    each side (the boundary of a swap must be inside), padded by edge replication at the frame's
    border. The same for real frames and pseudo-fakes: the crop says nothing about the label."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    side = max(float(x1 - x0), float(y1 - y0), 1.0) * (1 + 2 * margin)
    cx, cy = float(x0 + x1) / 2, float(y0 + y1) / 2
    scale = size / side
    m = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], dtype=np.float32)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class AppearanceConfig:
    size: int = 128  # input side in pixels
    margin: float = 0.25  # face_crop's margin
    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels of the stem and of each stage

    def __post_init__(self) -> None:
        if self.size < 16 or len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError("AppearanceConfig needs size >= 16 and at least two positive widths")

    @property
    def dim(self) -> int:
        return self.widths[-1]


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))
        self.body = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return torch.relu(x + self.body(x))


class AppearanceNet(nn.Module):
    """Face crop -> (embedding (B, dim), real-vs-fake logit (B,); > 0 = pseudo-fake)."""

    def __init__(self, cfg: AppearanceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True))
        self.stages = nn.Sequential(*[_Stage(a, b) for a, b in zip(w[:-1], w[1:], strict=True)])
        self.head = nn.Linear(w[-1], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        return e, self.head(e)[:, 0]


def to_input(crops: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(N, S, S, 3) uint8 RGB crops -> (N, 3, S, S) float32 in [-1, 1]."""
    arr = np.ascontiguousarray(np.stack(list(crops)) if not isinstance(crops, np.ndarray) else crops)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"need (N, S, S, 3) uint8 crops, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def save_appearance(net: AppearanceNet, path: Path, meta: dict[str, Any],
                    extra: dict[str, np.ndarray] | None = None) -> None:
    """Write the network's weights (and ``extra`` tensors, e.g. the pair model's) with the
    configuration and ``meta`` in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tensors |= {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in (extra or {}).items()}
    save_file(tensors, str(tmp), metadata={"format": APPEARANCE_FORMAT, "config": json.dumps(asdict(net.cfg)),
                                           "meta": json.dumps(meta)})
    tmp.replace(path)


def load_appearance(path: Path) -> tuple[AppearanceNet, dict[str, Any]]:
    """The network (eval mode) and its training record; ModelFileError (one line) on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"appearance weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != APPEARANCE_FORMAT:
                raise ModelFileError(f"{path}: not appearance weights (format {header.get('format')!r})")
            raw = json.loads(header["config"])
            cfg = AppearanceConfig(**{**raw, "widths": tuple(raw["widths"])})
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("pair.")}  # noqa: SIM118
        net = AppearanceNet(cfg)
        net.load_state_dict(state)
        meta = json.loads(header.get("meta", "{}"))
    except ModelFileError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail in many ways; the user needs one line
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelFileError(f"unreadable appearance weights {path}: {first}") from None
    return net.eval(), meta


def load_score_tensors(path: Path) -> dict[str, np.ndarray]:
    """The ``pair.*`` (DiffFake's pair model) and ``head.*`` (the real-vs-blended head) tensors
    of an appearance weights file: what model/difffake.appearance_score reads."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(("pair.", "head."))}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - one line for any unreadable file
        raise ModelFileError(f"unreadable appearance weights {path}: {str(err).strip()[:200]}") from None


class AppearanceEmbedder:
    """``Embedder[FaceSample]``: face crop -> appearance embedding (dim = the last width)."""

    name = "difffake-sbi"

    def __init__(self, weights: Path) -> None:
        self.net, self.meta = load_appearance(weights)
        self.cfg = self.net.cfg
        self.dim = self.cfg.dim

    def crops(self, items: Sequence[FaceSample]) -> np.ndarray:
        return np.stack([face_crop(s.image, s.landmarks, self.cfg.size, self.cfg.margin) for s in items])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.no_grad():
            return self.net.embed(to_input(crops)).numpy().astype(np.float32)

    def embed(self, items: Sequence[FaceSample]) -> np.ndarray:
        return self.embed_crops(self.crops(items)) if items else np.zeros((0, self.dim), dtype=np.float32)
