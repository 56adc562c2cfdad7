"""The profile store: one folder per enrolled subject.

``<root>/<name>/tokens.safetensors`` holds the adapter tokens (K, d_model) and the enrolled
face descriptors (M, 128) and voice embeddings (V, 256) the face and voice terms compare with;
``<root>/<name>/profile.json`` the metadata: base model hash, reference files with
their hashes and durations, calibration statistics, the alert threshold, created
time. Nothing is pickled. Location: ``--profiles DIR``, env ``EXPOSE_PROFILES``, or the
user data dir.

Profiles are biometric data. With a profiles key (``ProfileStore(root, key=...)``; the composition
roots pass ``crypto.configured_key``) both files are written sealed with AES-256-GCM, as
``profile.json.enc`` and ``tokens.safetensors.enc``, bound to the profile's name (profiles/crypto.py);
clear-text profiles still load (``expose profiles encrypt`` seals them). Without a key they are
written in clear, as before. ``delete`` (and replacing a profile) overwrites every file with zeros
before unlinking it; what that cannot reach (SSD wear levelling, snapshots) only the encryption covers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import platformdirs
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from expose.monitor.errors import ExposeError
from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM
from expose.monitor.features.windows import Window
from expose.monitor.model.scorer import Scorer, ScoreRequest
from expose.monitor.model.verification import IdentityReferences
from expose.profiles.crypto import (
    BadSeal,
    NoKey,
    ProfileKey,
    SealError,
    WrongKey,
    erase_tree,
    seal,
    sealed_key_id,
    unseal,
)

# 2: calibration centre/scale and smoothing ratios; 3: the fit term's centre; 4: enrolled face
# descriptors and voice embeddings (tokens.safetensors: face_refs, voice_refs), the decision used
PROFILE_FORMAT = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
META, TOKENS = "profile.json", "tokens.safetensors"  # the file roles; sealed: these names + ".enc"
SEALED = ".enc"


class ProfileError(ExposeError):
    """A profile is missing, invalid, or made for another base model."""


class UnknownProfile(ProfileError):
    """No profile of that name in the store (the HTTP API answers 404)."""


class InvalidProfileName(ProfileError):
    """A name no profile can have (the HTTP API answers 400)."""


class ProfileLocked(ProfileError):
    """An encrypted profile that the configured key (or the lack of one) cannot open."""


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


def encode_profile(profile: Profile) -> tuple[bytes, bytes]:
    """The two files of a profile, as bytes: (profile.json, tokens.safetensors)."""
    tokens = save_tensors({
        "tokens": profile.tokens.detach().cpu().contiguous(),
        "face_refs": torch.from_numpy(np.ascontiguousarray(profile.identity.face, dtype=np.float32)),
        "voice_refs": torch.from_numpy(np.ascontiguousarray(profile.identity.voice, dtype=np.float32)),
        # the appearance embeddings of the face references (0 x 0 without appearance; a file
        # written before they existed has none)
        "app_refs": torch.from_numpy(np.ascontiguousarray(profile.identity.appearance, dtype=np.float32))})
    meta = {k: v for k, v in asdict(profile).items() if k not in ("tokens", "identity")}
    meta["format"] = PROFILE_FORMAT
    return json.dumps(meta, indent=2).encode("utf-8"), tokens


def decode_profile(name: str, meta_bytes: bytes, tokens_bytes: bytes, where: object) -> Profile:
    """The inverse of encode_profile; ``where`` names the profile's location in errors."""
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
        if meta.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"profile {name!r} has format {meta.get('format')}, this version reads "
                               f"{PROFILE_FORMAT}: re-enroll it (expose enroll {name} MEDIA... --force)")
        tensors = load_tensors(tokens_bytes)
        return Profile(
            name=meta["name"], base_model_sha256=meta["base_model_sha256"], created=meta["created"],
            references=[Reference(**r) for r in meta["references"]],
            calibration=Calibration(**meta["calibration"]), enroll=meta.get("enroll", {}),
            tokens=tensors["tokens"],
            identity=IdentityReferences(tensors["face_refs"].numpy(), tensors["voice_refs"].numpy(),
                                        tensors["app_refs"].numpy() if "app_refs" in tensors
                                        else np.zeros((0, 0), np.float32)),
            decision_sha256=meta.get("decision_sha256"),
        )
    except ProfileError:
        raise
    except Exception as err:  # damaged JSON or tensors
        raise ProfileError(f"profile {name!r} in {where} is damaged ({str(err).splitlines()[0]})") from None


class ProfileStore:
    """Profiles on disk, one folder each; sealed with ``key`` when one is given (see the module doc)."""

    def __init__(self, root: Path | None = None, key: ProfileKey | bytes | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.key = ProfileKey(key) if isinstance(key, bytes) else key

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    @staticmethod
    def _has_profile(d: Path) -> bool:
        return (d / META).is_file() or (d / (META + SEALED)).is_file()

    def names(self) -> list[str]:
        """Every profile, readable with the configured key or not."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if self._has_profile(p))

    def exists(self, name: str) -> bool:
        return self._has_profile(self.path(name))

    def is_encrypted(self, name: str) -> bool:
        return (self.path(name) / (META + SEALED)).is_file()

    def unencrypted_warning(self) -> str | None:
        """One line on the clear-text profiles in the store and how to seal them (None: there are none);
        `expose enroll` and `expose serve` print it."""
        clear = [n for n in self.names() if not self.is_encrypted(n)]
        if not clear:
            return None
        shown = ", ".join(clear[:5]) + (", ..." if len(clear) > 5 else "")
        how = ("expose profiles encrypt" if self.key is not None else
               "make a key (expose profiles keygen --out FILE, set profiles_key_file), then expose profiles encrypt")
        return f"{len(clear)} profile(s) stored unencrypted in {self.root} ({shown}); to encrypt them: {how}"

    def key_id_of(self, name: str) -> str | None:
        """The id of the key an encrypted profile was sealed with (None: clear text)."""
        if not self.is_encrypted(name):
            return None
        with open(self.path(name) / (META + SEALED), "rb") as f:
            head = f.read(64)
        try:
            return sealed_key_id(head + bytes(16))
        except SealError:
            return None

    def _write(self, name: str, files: dict[str, bytes]) -> Path:
        """Write a profile's files (role -> clear bytes) to ``<name>.tmp``, sealed when there is a key, then
        swap it in; the folder it replaces is erased."""
        d = self.path(name)
        tmp = d.with_name(d.name + ".tmp")
        erase_tree(tmp)
        tmp.mkdir(parents=True)
        for role, data in files.items():
            if self.key is not None:
                (tmp / (role + SEALED)).write_bytes(seal(self.key, data, f"{name}/{role}"))
            else:
                (tmp / role).write_bytes(data)
        if d.exists():
            erase_tree(d)
        tmp.replace(d)
        return d

    def save(self, profile: Profile) -> Path:
        meta, tokens = encode_profile(profile)
        return self._write(profile.name, {META: meta, TOKENS: tokens})

    def _read(self, name: str, role: str) -> bytes:
        d = self.path(name)
        if (d / (role + SEALED)).is_file():
            try:
                return unseal(self.key, (d / (role + SEALED)).read_bytes(), f"{name}/{role}")
            except NoKey as err:
                raise ProfileLocked(f"profile {name!r} is {err}: set EXPOSE_PROFILES_KEY, EXPOSE_PROFILES_KEY_FILE "
                                    "or profiles_key_file in the config") from None
            except WrongKey as err:
                assert self.key is not None
                raise ProfileLocked(f"profile {name!r} was {err} ({self.key.source})") from None
            except BadSeal as err:
                raise ProfileLocked(f"profile {name!r} in {d}: {role}{SEALED} {err}") from None
        return (d / role).read_bytes()

    def read_files(self, name: str) -> tuple[bytes, bytes]:
        """(profile.json, tokens.safetensors) in clear, whichever way they are stored."""
        d = self.path(name)
        if not self._has_profile(d):
            known = ", ".join(self.names()) or "none"
            raise UnknownProfile(f"unknown profile {name!r} in {self.root} (known: {known})")
        try:
            return self._read(name, META), self._read(name, TOKENS)
        except OSError as err:
            raise ProfileError(f"profile {name!r} in {d} is damaged ({err})") from None

    def load(self, name: str) -> Profile:
        d = self.path(name)
        if not self._has_profile(d):
            known = ", ".join(self.names()) or "none"
            raise UnknownProfile(f"unknown profile {name!r} in {self.root} (known: {known})")
        try:
            meta = self._read(name, META)
        except OSError as err:
            raise ProfileError(f"profile {name!r} in {d} is damaged ({err})") from None
        try:
            tokens = self._read(name, TOKENS)
        except OSError:
            tokens = b""  # decode_profile says "re-enroll" for an older format first, else "damaged"
        return decode_profile(name, meta, tokens, d)

    def encrypt(self, name: str) -> bool:
        """Seal a clear-text profile in place with the store's key, byte for byte (its format is not
        checked, so profiles this version cannot load are sealed too); False if it was sealed already."""
        if self.key is None:
            raise ProfileLocked("no profiles key configured: set EXPOSE_PROFILES_KEY, EXPOSE_PROFILES_KEY_FILE or "
                                "profiles_key_file (make one: expose profiles keygen --out FILE)")
        if self.is_encrypted(name):
            return False
        meta, tokens = self.read_files(name)
        self._write(name, {META: meta, TOKENS: tokens})
        return True

    def delete(self, name: str) -> None:
        """Erase a profile: every file overwritten with zeros and fsynced, then unlinked; a leftover
        ``<name>.tmp`` of an interrupted save too. Copies this cannot reach: see erase_file."""
        d = self.path(name)
        tmp = d.with_name(d.name + ".tmp")
        had_tmp = tmp.exists() or tmp.is_symlink()
        erase_tree(tmp)
        if not d.is_dir():
            if had_tmp:
                return
            raise UnknownProfile(f"unknown profile {name!r} in {self.root}")
        erase_tree(d)
