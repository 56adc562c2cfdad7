"""The profile store: one folder per enrolled subject.

``<root>/<name>/tokens.safetensors`` holds the adapter tokens (K, d_model) and the enrolled
face descriptors (M, 128) and voice embeddings (V, 256) the face and voice terms compare with;
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
from statistics import NormalDist

import numpy as np
import platformdirs
import torch
from safetensors.torch import load_file, save_file

from expose.monitor.errors import ExposeError
from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM
from expose.monitor.features.windows import Window
from expose.monitor.model.scorer import Scorer, ScoreRequest
from expose.monitor.model.verification import IdentityReferences

# 2: calibration centre/scale and smoothing ratios; 3: the fit term's centre; 4: enrolled face
# descriptors and voice embeddings (tokens.safetensors: face_refs, voice_refs), the decision used
PROFILE_FORMAT = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ProfileError(ExposeError):
    """A profile is missing, invalid, or made for another base model."""


class UnknownProfile(ProfileError):
    """No profile of that name in the store (the HTTP API answers 404)."""


class InvalidProfileName(ProfileError):
    """A name no profile can have (the HTTP API answers 400)."""


def default_root() -> Path:
    if env := os.environ.get("EXPOSE_PROFILES"):
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("expose")) / "profiles"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidProfileName(f"invalid profile name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    return name


@dataclass(frozen=True)
class Reference:
    path: str
    sha256: str
    duration_s: float
    windows: int


@dataclass(frozen=True)
class Calibration:
    """The profile's genuine distribution, from held-out reference windows.

    A window's distance is ``w_identity * identity + w_sync * sync + w_fit * fit``
    (monitor/scorer.py). The identity and fit terms are centred per profile (``center`` =
    w_identity x identity mean + w_fit x fit mean on the calibration windows): how well
    adapter tokens fit, and how well the model reconstructs this person's face at all, are
    properties of each enrollment. The sync term keeps its natural zero (the true audio
    explains the mouth no better than the same audio out of sync): a same-session mean of it
    is optimistic, and centring on it made genuine footage of one person and attacks on
    another incomparable (dev desync AUC 0.82 with it). ``scale`` is the model's genuine
    window spread, the same for every profile.
    """

    n_windows: int
    mean: float  # mean distance of the calibration windows
    std: float  # their spread, floored at the model's genuine spread
    threshold: float  # one window: alert when its distance exceeds this
    target_far: float  # false-alarm rate per (smoothed) window the thresholds aim at
    quantiles: dict[str, float] = field(default_factory=dict)
    center: float = 0.0
    scale: float = 1.0
    identity_mean: float = 0.0  # the identity term's mean on the calibration windows
    fit_mean: float = 0.0  # the fit term's mean on the calibration windows
    # sd of a mean of n consecutive 1-s-hop windows / sd of one window, for n = 1, 2, ...
    smoothing_sd_ratio: list[float] = field(default_factory=lambda: [1.0])

    def alert_threshold(self, smoothing: int) -> float:
        """Threshold for the mean distance of ``smoothing`` consecutive windows (1 s hop) at
        the target false-alarm rate: averaging shrinks the genuine spread, so it sits lower."""
        r = self.smoothing_sd_ratio
        ratio = r[min(max(smoothing, 1), len(r)) - 1]
        return self.mean + NormalDist().inv_cdf(1 - self.target_far) * self.std * ratio


@dataclass(frozen=True)
class Profile:
    name: str
    base_model_sha256: str
    created: str
    references: list[Reference]
    calibration: Calibration
    enroll: dict[str, object]
    tokens: torch.Tensor = field(repr=False)  # (K, d_model)
    identity: IdentityReferences = field(
        default_factory=lambda: IdentityReferences(np.zeros((0, FACE_ID_DIM), np.float32),
                                                   np.zeros((0, VOICE_ID_DIM), np.float32)), repr=False)
    decision_sha256: str | None = None  # the decision file the calibration was made with (None: none)

    def normalized(self, distance: float) -> float:
        """The distance with the profile's centre (identity and fit offsets) removed, in units of the model's
        genuine spread: comparable across profiles (the clip score of `expose eval`)."""
        c = self.calibration
        return (distance - c.center) / max(c.scale, 1e-6)

    def requests(self, windows: list[Window], scorer: Scorer) -> list[ScoreRequest]:
        """Score requests claiming this profile: its tokens, the motion cohort the scorer's
        decision asks for, and its enrolled face and voice."""
        cohort = scorer.motion_cohort(self.tokens)
        return [ScoreRequest(w, self.tokens, self.name, cohort, self.identity, self.calibration.fit_mean)
                for w in windows]

    def check_base(self, model_sha256: str, decision_sha256: str | None = None) -> None:
        if model_sha256 != self.base_model_sha256:
            raise ProfileError(
                f"profile {self.name!r} was enrolled with base model {self.base_model_sha256[:12]}, "
                f"but the loaded model is {model_sha256[:12]}; re-enroll it with this model "
                "(or pass the model it was made with: --model)"
            )
        if (decision_sha256 or None) != self.decision_sha256:
            had = self.decision_sha256[:12] if self.decision_sha256 else "none"
            now = decision_sha256[:12] if decision_sha256 else "none"
            raise ProfileError(f"profile {self.name!r} was calibrated with decision {had}, the loaded one is "
                               f"{now}; re-enroll it (expose enroll {self.name} MEDIA... --force) or set "
                               "model.decision to the one it was made with")


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
        save_file({"tokens": profile.tokens.detach().cpu().contiguous(),
                   "face_refs": torch.from_numpy(np.ascontiguousarray(profile.identity.face, dtype=np.float32)),
                   "voice_refs": torch.from_numpy(np.ascontiguousarray(profile.identity.voice, dtype=np.float32))},
                  str(tmp / "tokens.safetensors"))
        meta = {k: v for k, v in asdict(profile).items() if k not in ("tokens", "identity")}
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
            raise UnknownProfile(f"unknown profile {name!r} in {self.root} (known: {known})")
        try:
            meta = json.loads((d / "profile.json").read_text(encoding="utf-8"))
            if meta.get("format") != PROFILE_FORMAT:
                raise ProfileError(f"profile {name!r} has format {meta.get('format')}, this version reads "
                                   f"{PROFILE_FORMAT}: re-enroll it (expose enroll {name} MEDIA... --force)")
            tensors = load_file(str(d / "tokens.safetensors"))
            return Profile(
                name=meta["name"], base_model_sha256=meta["base_model_sha256"], created=meta["created"],
                references=[Reference(**r) for r in meta["references"]],
                calibration=Calibration(**meta["calibration"]), enroll=meta.get("enroll", {}),
                tokens=tensors["tokens"],
                identity=IdentityReferences(tensors["face_refs"].numpy(), tensors["voice_refs"].numpy()),
                decision_sha256=meta.get("decision_sha256"),
            )
        except ProfileError:
            raise
        except Exception as err:  # damaged JSON or tensors
            raise ProfileError(f"profile {name!r} in {d} is damaged ({str(err).splitlines()[0]})") from None

    def delete(self, name: str) -> None:
        d = self.path(name)
        if not d.is_dir():
            raise UnknownProfile(f"unknown profile {name!r} in {self.root}")
        shutil.rmtree(d)
