"""The profile store: one folder per enrolled subject.

``<root>/<name>/tokens.safetensors`` holds the adapter tokens (K, d_model);
``<root>/<name>/profile.json`` the metadata: base model hash, reference files with
their hashes and durations, calibration statistics, the alert threshold, created
time. Nothing is pickled. Location: ``--profiles DIR``, env ``EXPOSE_PROFILES``, or the
user data dir.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import load_file, save_file

from monitor.errors import ExposeError

PROFILE_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProfileError(ExposeError):
    """A profile is missing, invalid, or made for another base model."""


def default_root() -> Path:
    if env := os.environ.get("EXPOSE_PROFILES"):
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("expose")) / "profiles"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ProfileError(f"invalid profile name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    return name


@dataclass(frozen=True)
class Reference:
    path: str
    sha256: str
    duration_s: float
    windows: int


@dataclass(frozen=True)
class Calibration:
    """Identity distances of held-out genuine reference windows."""

    n_windows: int
    mean: float
    std: float
    threshold: float  # alert when a window's distance exceeds this
    target_far: float  # false-alarm rate per window the threshold aims at
    quantiles: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    base_model_sha256: str
    created: str
    references: list[Reference]
    calibration: Calibration
    enroll: dict[str, object]
    tokens: torch.Tensor = field(repr=False)  # (K, d_model)

    def normalized(self, distance: float) -> float:
        """Distance in units of the genuine spread above the genuine mean (a z-score)."""
        return (distance - self.calibration.mean) / max(self.calibration.std, 1e-6)

    def check_base(self, model_sha256: str) -> None:
        if model_sha256 != self.base_model_sha256:
            raise ProfileError(
                f"profile {self.name!r} was enrolled with base model {self.base_model_sha256[:12]}, "
                f"but the loaded model is {model_sha256[:12]}; re-enroll it with this model "
                "(or pass the model it was made with: --model)"
            )


class ProfileStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "profile.json").is_file())

    def exists(self, name: str) -> bool:
        return (self.path(name) / "profile.json").is_file()

    def save(self, profile: Profile) -> Path:
        d = self.path(profile.name)
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({"tokens": profile.tokens.detach().cpu().contiguous()}, str(tmp / "tokens.safetensors"))
        meta = {k: v for k, v in asdict(profile).items() if k != "tokens"}
        meta["format"] = PROFILE_FORMAT
        (tmp / "profile.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if d.exists():
            shutil.rmtree(d)
        tmp.replace(d)
        return d

    def load(self, name: str) -> Profile:
        d = self.path(name)
        if not (d / "profile.json").is_file():
            known = ", ".join(self.names()) or "none"
            raise ProfileError(f"unknown profile {name!r} in {self.root} (known: {known})")
        try:
            meta = json.loads((d / "profile.json").read_text(encoding="utf-8"))
            if meta.get("format") != PROFILE_FORMAT:
                raise ProfileError(f"profile {name!r}: format {meta.get('format')}, expected {PROFILE_FORMAT}")
            tokens = load_file(str(d / "tokens.safetensors"))["tokens"]
            return Profile(
                name=meta["name"], base_model_sha256=meta["base_model_sha256"], created=meta["created"],
                references=[Reference(**r) for r in meta["references"]],
                calibration=Calibration(**meta["calibration"]), enroll=meta.get("enroll", {}),
                tokens=tokens,
            )
        except ProfileError:
            raise
        except Exception as err:  # damaged JSON or tensors
            raise ProfileError(f"profile {name!r} in {d} is damaged ({str(err).splitlines()[0]})") from None

    def delete(self, name: str) -> None:
        d = self.path(name)
        if not d.is_dir():
            raise ProfileError(f"unknown profile {name!r} in {self.root}")
        shutil.rmtree(d)
