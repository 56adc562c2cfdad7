"""Identity embeddings on the 25 fps timeline: which ticks get a face descriptor or a voice
embedding, and how each is computed. Offline extraction (``extract``) and live featurising
(``stream``) both go through this module, so a live window carries the descriptors and the
voice embedding that the offline window at the same start carries, bit for bit.

Face: tick k gets a descriptor when ``k % face_every == 0``, a frame landed on it (the first
frame of the tick, the one that is landmarked) and the landmarker found a face: the frame is
landmarked with ``ExpressionExtractor.observe`` (same expression row as ``process``) and the
primary face is embedded (``FaceSample(frame, landmarks)``). Interpolated ticks get none:
there is no frame to crop.

Voice: tick k gets an embedding when ``k % voice_every == 0`` and k > 0: the speech in the
``voice_context`` ticks before it, ticks [max(0, k - C), k). Which ticks are speech is decided
by the VAD run over that span alone (``audio.speech_activity``), not taken from the track's
speech rows: a whole-file VAD and a live window's VAD start in different states, so their
marks differ slightly, while the span's own samples are the same offline and live. Too little
speech (the embedder's ``embed_speech`` gives None) is a row of NaN: ``insufficient``, never
a vector that could read as a match.

Appearance (DiffFake, ``features.appearance_model``): the same face ticks and the same
``FaceSample`` also get an appearance embedding (features/appearance.py), one row per face
descriptor, so the two arrays share their ticks. It needs the face side on.

A window [s, e) carries the face descriptors (and appearance embeddings) of ticks in [s, e)
and the voice embedding of the last voice tick at or before e (``window_identity``),
positions given relative to s.

The embedders are imported and built only when enabled (``IdentityEmbedders.from_config``):
dlib and torch are not loaded by a process whose config turns both off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import AssetError, ConfigError
from expose.monitor.features.audio import speech_activity
from expose.monitor.features.embedding import Embedder, IsolatedEmbedder, create_embedder
from expose.monitor.features.timeline import FPS, SampleBuffer

if TYPE_CHECKING:
    from expose.monitor.features.expressions import ExpressionExtractor

# The built-in embedders' sizes (face_id.DESCRIPTOR_DIM, voice_id.DIM), the shape of the
# empty arrays a track or window holds when an embedding is off; defined here so that the
# value types need not import dlib or torch.
FACE_ID_DIM = 128
VOICE_ID_DIM = 256
# DiffFake's appearance weights shipped with expose (features.appearance_model = "auto")
STARTER_APPEARANCE = Path(__file__).resolve().parents[1] / "assets" / "appearance-small.safetensors"


def appearance_weights(cfg: FeatureConfig) -> Path | None:
    """The appearance weights ``features.appearance_model`` names: None for "none", the shipped
    file for "auto", else that path; AssetError (one line) when the file is not there."""
    setting = cfg.appearance_model
    if setting == "none":
        return None
    path = STARTER_APPEARANCE if setting == "auto" else Path(setting).expanduser()
    if not path.is_file():
        what = "the shipped appearance weights" if setting == "auto" else "appearance weights"
        raise AssetError(f"{what} not found: {path} (features.appearance_model)")
    return path


@runtime_checkable
class SpeechEmbedder(Protocol):
    """What the voice side needs from a voice embedder (``voice_id.VoiceEncoder`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_speech(self, samples: np.ndarray) -> np.ndarray | None:
        """(dim,) float32 embedding of 16 kHz speech samples, None when too little speech."""
        ...


@dataclass(frozen=True)
class IdentitySettings:
    """Which ticks get identity embeddings (0 disables a side)."""

    face_every: int = 0  # ticks between face descriptors
    voice_every: int = 0  # ticks between voice embeddings
    voice_context: int = 6 * FPS  # ticks of audio before a voice tick that are embedded

    def __post_init__(self) -> None:
        if self.face_every < 0 or self.voice_every < 0 or self.voice_context < 1:
            raise ValueError("face_every, voice_every must be >= 0 and voice_context >= 1")

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> IdentitySettings:
        return cls(face_every=cfg.face_id_every, voice_every=cfg.voice_every,
                   voice_context=max(1, int(round(cfg.voice_context_s * FPS))))

    def face_tick(self, tick: int) -> bool:
        return self.face_every > 0 and tick % self.face_every == 0

    def voice_ticks(self, n: int) -> range:
        """The voice ticks of a track of ``n`` ticks (its end, tick n, included)."""
        return range(self.voice_every, n + 1, self.voice_every) if self.voice_every else range(0)

    def voice_tick_for_end(self, end: int) -> int | None:
        """The last voice tick at or before ``end`` (a window's end), None if there is none."""
        if not self.voice_every or end < self.voice_every:
            return None
        return end // self.voice_every * self.voice_every

    def voice_span(self, tick: int) -> tuple[int, int]:
        """Ticks [a, tick) whose speech the embedding at ``tick`` holds."""
        return max(0, tick - self.voice_context), tick


def identity_version(cfg: FeatureConfig, digest: Callable[[Path], str]) -> str:
    """The part of the extractor version that the identity embeddings add: their rates and
    embedders, with ``digest`` of the built-in embedders' model files (a plug-in embedder
    is keyed by its name); "" when both are off, so such tracks need no dlib or torch."""
    s = IdentitySettings.from_config(cfg)
    out = ""
    if s.face_every:
        out += f"-faceid{s.face_every}{cfg.face_embedder}"
        if cfg.face_embedder == "dlib-resnet":
            from expose.monitor.features.face_id import resolve_face_id_models  # loads dlib

            out += digest(resolve_face_id_models(cfg.face_id_models).descriptor)
    if s.voice_every:
        out += f"-voiceid{s.voice_every}x{s.voice_context}{cfg.voice_embedder}"
        if cfg.voice_embedder == "ge2e":
            from expose.monitor.features.voice_id import find_voice_weights  # loads torch

            out += digest(find_voice_weights(cfg.voice_model))
    if (weights := appearance_weights(cfg)) is not None:
        out += f"-app{digest(weights)}"
    return out


class IdentityEmbedders:
    """The settings and the embedders they need; one per stream or extraction (the
    embedders are not thread-safe)."""

    def __init__(self, settings: IdentitySettings, face: Embedder[Any] | None = None,
                 voice: SpeechEmbedder | None = None, appearance: Embedder[Any] | None = None) -> None:
        if settings.face_every and face is None:
            raise ValueError("face descriptors are enabled but no face embedder is given")
        if settings.voice_every and voice is None:
            raise ValueError("voice embeddings are enabled but no voice embedder is given")
        if appearance is not None and not settings.face_every:
            raise ValueError("appearance embeddings need the face side (face_id_every > 0)")
        self.settings = settings
        self.face_embedder = face if settings.face_every else None
        self.voice_embedder = voice if settings.voice_every else None
        self.appearance_embedder = appearance

    @classmethod
    def from_config(cls, cfg: FeatureConfig, isolate_face: bool = False) -> IdentityEmbedders:
        """Build the configured embedders by registry name (AssetError / ConfigError when
        their files or names are wrong); none for a disabled side. ``isolate_face``: the
        face embedder runs in the shared worker process (``embedding.IsolatedEmbedder``),
        which a process featurizing several streams on threads needs (dlib holds the GIL)."""
        settings = IdentitySettings.from_config(cfg)
        face = voice = None
        if settings.face_every:
            options = {} if cfg.face_id_models is None else {"models_dir": cfg.face_id_models}
            face = (IsolatedEmbedder("face", cfg.face_embedder, **options) if isolate_face
                    else create_embedder("face", cfg.face_embedder, **options))
        if settings.voice_every:
            options = {} if cfg.voice_model is None else {"weights": cfg.voice_model}
            built = create_embedder("voice", cfg.voice_embedder, **options)
            if not isinstance(built, SpeechEmbedder):
                raise TypeError(f"voice embedder {cfg.voice_embedder!r} has no embed_speech method")
            voice = built
        appearance = None
        if (weights := appearance_weights(cfg)) is not None:
            if not settings.face_every:
                raise ConfigError("features.appearance_model needs face descriptors on (features.face_id_every > 0)")
            appearance = create_embedder("appearance", "difffake-sbi", weights=weights)
        return cls(settings, face, voice, appearance)

    @classmethod
    def disabled(cls) -> IdentityEmbedders:
        return cls(IdentitySettings())

    # ---- face ----------------------------------------------------------------------
    def landmark(self, extractor: ExpressionExtractor, image: np.ndarray, time_s: float,
                 tick: int) -> tuple[np.ndarray | None, FaceEmbeddings | None]:
        """Landmark the frame that fills ``tick``: (expression row or None, the face's
        embeddings or None). The one landmarking call per tick, offline and live."""
        if self.face_embedder is None or not self.settings.face_tick(tick):
            return extractor.process(image, time_s), None
        seen = extractor.observe(image, time_s)
        if seen is None:
            return None, None
        # imported here: face_id loads dlib, which a process with faces off never needs
        from expose.monitor.features.face_id import FaceSample

        sample = [FaceSample(image, seen.landmarks)]
        face = np.asarray(self.face_embedder.embed(sample)[0], dtype=np.float32)
        app = (np.zeros(0, dtype=np.float32) if self.appearance_embedder is None
               else np.asarray(self.appearance_embedder.embed(sample)[0], dtype=np.float32))
        return seen.expression, FaceEmbeddings(face, app)

    @property
    def face_dim(self) -> int:
        return self.face_embedder.dim if self.face_embedder is not None else FACE_ID_DIM

    @property
    def appearance_dim(self) -> int:
        """0 when appearance embeddings are off: the (M, 0) arrays tracks and windows then hold."""
        return self.appearance_embedder.dim if self.appearance_embedder is not None else 0

    # ---- voice ---------------------------------------------------------------------
    @property
    def voice_dim(self) -> int:
        return self.voice_embedder.dim if self.voice_embedder is not None else VOICE_ID_DIM

    def voice_at(self, audio: SampleBuffer, tick: int) -> np.ndarray:
        """(dim,) float32 embedding of the speech before voice tick ``tick`` in ``audio``;
        NaN when there is too little speech."""
        if self.voice_embedder is None:
            raise RuntimeError("voice embeddings are disabled")
        # imported here: voice_id loads torch, which a process with voice off never needs
        from expose.monitor.features.voice_id import speech_only

        a, b = self.settings.voice_span(tick)
        samples = audio.ticks(a, b)
        speech = speech_activity(samples, b - a)  # the span's own VAD: see the module docstring
        vector = self.voice_embedder.embed_speech(speech_only(samples, speech))
        if vector is None:
            return np.full(self.voice_embedder.dim, np.nan, dtype=np.float32)
        return np.asarray(vector, dtype=np.float32)

    def voice_track(self, audio: SampleBuffer, n: int) -> tuple[np.ndarray, np.ndarray]:
        """((B, dim) float32 embeddings, (B,) int64 ticks) at every voice tick of a track
        of ``n`` ticks whose samples ``audio`` holds."""
        ticks = np.array(list(self.settings.voice_ticks(n)), dtype=np.int64)
        if self.voice_embedder is None or not len(ticks):
            return np.zeros((0, self.voice_dim), dtype=np.float32), ticks
        return np.stack([self.voice_at(audio, int(k)) for k in ticks]), ticks


@dataclass(frozen=True)
class FaceEmbeddings:
    """What one landmarked face tick yields: its face descriptor and its appearance embedding
    ((0,) when appearance is off)."""

    face: np.ndarray  # (D,) float32
    appearance: np.ndarray  # (Da,) float32


@dataclass(frozen=True)
class WindowIdentity:
    """The identity embeddings a window [s, e) carries, positions relative to s."""

    face_ids: np.ndarray = field(repr=False)  # (M, D) float32: descriptors of ticks in [s, e)
    face_id_rows: np.ndarray = field(repr=False)  # (M,) int64: their rows in the window
    voice_id: np.ndarray | None = field(repr=False)  # (D,) float32, NaN: too little speech; None: none
    voice_id_row: int | None  # the voice tick - s: the embedding holds the speech before this row
    appearance: np.ndarray = field(repr=False)  # (M, Da) float32: the same ticks' appearance embeddings


def window_identity(face_ids: np.ndarray, face_ticks: np.ndarray, voice_ids: np.ndarray,
                    voice_ticks: np.ndarray, s: int, e: int, appearance: np.ndarray | None = None,
                    ) -> WindowIdentity:
    """What window [s, e) carries of a timeline's identity embeddings (ticks ascending):
    the one slicing rule for ``FeatureTrack.window`` and live windows. ``appearance``: rows
    aligned with ``face_ids`` (None: none, (M, 0))."""
    sel = (face_ticks >= s) & (face_ticks < e)
    j = int(np.searchsorted(voice_ticks, e, side="right")) - 1
    app = np.zeros((len(face_ids), 0), dtype=np.float32) if appearance is None else appearance
    return WindowIdentity(
        face_ids=face_ids[sel], face_id_rows=(face_ticks[sel] - s).astype(np.int64),
        voice_id=voice_ids[j] if j >= 0 else None, voice_id_row=int(voice_ticks[j]) - s if j >= 0 else None,
        appearance=app[sel])
