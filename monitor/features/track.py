"""FeatureTrack: one media item reduced to aligned 25 fps rows, the Windows cut from it,
and its file format.

File format: an ``.npz`` (no pickle: every member is a plain numeric or unicode
array, loaded with ``allow_pickle=False``) holding the arrays below plus a ``meta``
JSON string with ``format_version``. Readers refuse other versions with a clear error.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expose.monitor.errors import FeatureFileError
from expose.monitor.features.audio import MELS_PER_FRAME, N_MELS, SPEECH_THRESHOLD, audio_rows
from expose.monitor.features.expressions import EXPRESSION_DIM
from expose.monitor.features.identity import FACE_ID_DIM, VOICE_ID_DIM, window_identity
from expose.monitor.features.phones import N_PHONES
from expose.monitor.features.timeline import FPS
from expose.monitor.features.windows import Window

# 3: identity embeddings (face_ids, face_id_ticks, voice_ids, voice_id_ticks); an ``appearance``
# member (one row per face descriptor) came later: a file without it has none, (M, 0)
FORMAT_VERSION = 3


@dataclass(frozen=True)
class FeatureTrack:
    """Aligned per-frame features of one media item on a fixed 25 fps timeline.

    Row k describes time ``k / FPS`` seconds from the media origin.
    """

    expression: np.ndarray = field(repr=False)  # (N, 58) float32: 52 blendshapes + 6 pose
    face_mask: np.ndarray = field(repr=False)  # (N,) bool: a face was found (or interpolated)
    mel: np.ndarray = field(repr=False)  # (N, 4, 80) float32 log-mel; log(1e-10) (silence) when no audio
    speech: np.ndarray = field(repr=False)  # (N,) float32 in [0, 1] speech activity
    has_audio: bool
    source: str = ""  # path or URL, informational
    media_sha256: str = ""  # content hash of a file source ("" for live sources)
    extractor_version: str = ""
    fps: int = FPS
    # (N, 40) float32 phone fractions per frame (monitor.phones); None at construction -> all silence
    phones: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # (N,) bool: a face was landmarked on a frame of this tick (face_mask minus interpolated
    # ticks); reconstruction errors count only these. None at construction -> face_mask
    observed: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # Identity embeddings (features.identity says at which ticks); None at construction -> none.
    # (M, 128) float32 face descriptors of the primary face, at ticks face_id_ticks (M,) int64
    face_ids: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    face_id_ticks: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # (B, 256) float32 voice embeddings of the speech before ticks voice_id_ticks (B,) int64
    # (in [1, N]); a row of NaN: too little speech there
    voice_ids: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    voice_id_ticks: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]
    # (M, Da) float32 DiffFake appearance embeddings of the same faces as face_ids (row i: tick
    # face_id_ticks[i]); (M, 0) when appearance is off. None at construction -> (M, 0)
    appearance: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        n = len(self.face_mask)
        _default_embeddings(self, "face_ids", "face_id_ticks", FACE_ID_DIM)
        _default_embeddings(self, "voice_ids", "voice_id_ticks", VOICE_ID_DIM)
        _check_embeddings("face", self.face_ids, self.face_id_ticks, 0, n - 1)
        _check_embeddings("voice", self.voice_ids, self.voice_id_ticks, 1, n)
        # zero-width means off: it follows the face rows (dataclasses.replace of face_ids alone)
        if self.appearance is None or (self.appearance.ndim == 2 and self.appearance.shape[1] == 0):
            object.__setattr__(self, "appearance", np.zeros((len(self.face_ids), 0), dtype=np.float32))
        if (self.appearance.ndim != 2 or len(self.appearance) != len(self.face_ids)
                or self.appearance.dtype != np.float32):
            raise ValueError(f"FeatureTrack.appearance must be (M, Da) float32 with M = {len(self.face_ids)} "
                             f"(one per face descriptor), got {self.appearance.shape} {self.appearance.dtype}")
        if self.phones is None:
            sil = np.zeros((n, N_PHONES), dtype=np.float32)
            sil[:, 0] = 1.0
            object.__setattr__(self, "phones", sil)
        if self.observed is None:
            object.__setattr__(self, "observed", self.face_mask.copy())
        checks = {
            "expression": (self.expression.shape == (n, EXPRESSION_DIM), np.float32),
            "face_mask": (self.face_mask.shape == (n,), np.bool_),
            "mel": (self.mel.shape == (n, MELS_PER_FRAME, N_MELS), np.float32),
            "speech": (self.speech.shape == (n,), np.float32),
            "phones": (self.phones.shape == (n, N_PHONES), np.float32),
            "observed": (self.observed.shape == (n,), np.bool_),
        }
        for name, (shape_ok, dtype) in checks.items():
            arr = getattr(self, name)
            if not shape_ok or arr.dtype != dtype:
                raise ValueError(f"FeatureTrack.{name}: bad shape/dtype {arr.shape} {arr.dtype} for N={n}")
        if self.fps != FPS:
            raise ValueError(f"FeatureTrack.fps must be {FPS}")
        if (self.observed & ~self.face_mask).any():
            raise ValueError("FeatureTrack.observed must be a subset of face_mask")

    def __len__(self) -> int:
        return len(self.face_mask)

    @property
    def duration(self) -> float:
        return len(self) / self.fps

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.float64) / self.fps

    @property
    def face_ratio(self) -> float:
        return float(self.face_mask.mean()) if len(self) else 0.0

    @property
    def speech_mask(self) -> np.ndarray:
        return self.speech >= SPEECH_THRESHOLD

    @property
    def speech_ratio(self) -> float:
        return float(self.speech_mask.mean()) if len(self) else 0.0

    def audio_rows(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """(len(rows), AUDIO_DIM) float32 audio rows (features.audio.audio_rows) of the given rows."""
        return audio_rows(self.mel[rows], self.phones[rows], self.speech[rows])

    def window(self, start: int, length: int, stream: str = "") -> Window:
        """Rows [start, start + length) as a Window of ``stream`` (default: the track's source)."""
        end = start + length
        if not 0 <= start < end <= len(self):
            raise ValueError(f"window [{start}, {end}) outside a track of {len(self)} frames")
        rows = slice(start, end)
        ids = window_identity(self.face_ids, self.face_id_ticks, self.voice_ids, self.voice_id_ticks, start, end,
                              self.appearance)
        return Window(stream=stream or self.source, t0=start / FPS, t1=end / FPS,
                      expression=self.expression[rows], audio=self.audio_rows(rows),
                      face_mask=self.face_mask[rows], speech=self.speech[rows], observed=self.observed[rows],
                      face_ids=ids.face_ids, face_id_rows=ids.face_id_rows,
                      voice_id=ids.voice_id, voice_id_row=ids.voice_id_row, appearance=ids.appearance)

    def windows(self, lo: int, hi: int, length: int, hop: int, stream: str = "") -> list[Window]:
        """Windows starting every ``hop`` frames in [lo, hi - length]."""
        return [self.window(s, length, stream) for s in range(lo, hi - length + 1, hop)]

    def segment(self, start: int, end: int) -> FeatureTrack:
        """Rows [start, end) as a track of their own (row 0 = old row ``start``)."""
        if not 0 <= start < end <= len(self):
            raise ValueError(f"segment [{start}, {end}) outside a track of {len(self)} frames")
        # Embeddings move with their ticks; a voice embedding keeps the speech it holds from
        # before ``start`` (it was computed on the whole timeline).
        face = (self.face_id_ticks >= start) & (self.face_id_ticks < end)
        voice = (self.voice_id_ticks > start) & (self.voice_id_ticks <= end)
        return dataclasses.replace(
            self, expression=self.expression[start:end], face_mask=self.face_mask[start:end],
            mel=self.mel[start:end], speech=self.speech[start:end], phones=self.phones[start:end],
            observed=self.observed[start:end],
            face_ids=self.face_ids[face], face_id_ticks=self.face_id_ticks[face] - start,
            appearance=self.appearance[face],
            voice_ids=self.voice_ids[voice], voice_id_ticks=self.voice_id_ticks[voice] - start,
            source=f"{self.source}[{start / self.fps:.2f}-{end / self.fps:.2f}s]")

    def thin_face_ids(self, every: int) -> FeatureTrack:
        """Only the face descriptors on ticks that are multiples of ``every``: what extraction at
        ``face_id_every = every`` gives when this track was extracted at a divisor of it (the
        descriptor of a tick depends on that tick's frame alone). Call it before ``segment``."""
        keep = self.face_id_ticks % every == 0
        return dataclasses.replace(self, face_ids=self.face_ids[keep], face_id_ticks=self.face_id_ticks[keep],
                                   appearance=self.appearance[keep])

    def with_audio_of(self, donor: FeatureTrack) -> FeatureTrack:
        """This track's video with ``donor``'s audio (same length, same timeline): the audio
        rows and the voice embeddings, which are computed from the audio alone, so this is what
        re-muxing the two files and extracting would give (evaluation attacks: dubs, desyncs)."""
        if len(donor) != len(self):
            raise ValueError(f"donor has {len(donor)} rows, the track {len(self)}")
        return dataclasses.replace(self, mel=donor.mel, speech=donor.speech, phones=donor.phones,
                                   has_audio=donor.has_audio, voice_ids=donor.voice_ids,
                                   voice_id_ticks=donor.voice_id_ticks,
                                   source=f"{self.source}+audio:{donor.source}")

    def save(self, path: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "fps": self.fps,
            "has_audio": self.has_audio,
            "source": self.source,
            "media_sha256": self.media_sha256,
            "extractor_version": self.extractor_version,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            meta=np.array(json.dumps(meta)),
            expression=self.expression,
            face_mask=self.face_mask,
            mel=self.mel.astype(np.float16),  # log-mel needs no more; halves the cache
            speech=self.speech,
            phones=self.phones.astype(np.float16),
            observed=self.observed,
            face_ids=self.face_ids,
            face_id_ticks=self.face_id_ticks,
            voice_ids=self.voice_ids,  # NaN rows (too little speech) are stored as they are
            voice_id_ticks=self.voice_id_ticks,
            appearance=self.appearance,
        )
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry

    @classmethod
    def load(cls, path: Path) -> FeatureTrack:
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                version = meta.get("format_version")
                if version != FORMAT_VERSION:
                    raise FeatureFileError(
                        f"{path}: feature file format {version}, this expose reads {FORMAT_VERSION}; "
                        "re-extract it with `expose features`"
                    )
                return cls(
                    expression=z["expression"].astype(np.float32),
                    face_mask=z["face_mask"].astype(bool),
                    mel=z["mel"].astype(np.float32),
                    speech=z["speech"].astype(np.float32),
                    phones=z["phones"].astype(np.float32),
                    # files written before it existed: every face row counts as observed
                    observed=(z["observed"] if "observed" in z.files else z["face_mask"]).astype(bool),
                    face_ids=z["face_ids"].astype(np.float32),
                    face_id_ticks=z["face_id_ticks"].astype(np.int64),
                    voice_ids=z["voice_ids"].astype(np.float32),
                    voice_id_ticks=z["voice_id_ticks"].astype(np.int64),
                    appearance=(z["appearance"].astype(np.float32) if "appearance" in z.files
                                else np.zeros((len(z["face_ids"]), 0), np.float32)),
                    has_audio=bool(meta["has_audio"]),
                    source=str(meta.get("source", "")),
                    media_sha256=str(meta.get("media_sha256", "")),
                    extractor_version=str(meta.get("extractor_version", "")),
                    fps=int(meta.get("fps", FPS)),
                )
        except FileNotFoundError:
            raise FeatureFileError(f"{path}: no such feature file") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
            raise FeatureFileError(f"{path}: not a readable feature file ({err})") from None


def _default_embeddings(track: FeatureTrack, vectors: str, ticks: str, dim: int) -> None:
    """None -> no embeddings: (0, dim) float32 and (0,) int64."""
    if getattr(track, vectors) is None:
        object.__setattr__(track, vectors, np.zeros((0, dim), dtype=np.float32))
    if getattr(track, ticks) is None:
        object.__setattr__(track, ticks, np.zeros(0, dtype=np.int64))


def _check_embeddings(what: str, vectors: np.ndarray, ticks: np.ndarray, lo: int, hi: int) -> None:
    """(M, D) float32 vectors at M strictly increasing int64 ticks within [lo, hi]."""
    if vectors.ndim != 2 or vectors.dtype != np.float32 or ticks.shape != (len(vectors),) \
            or ticks.dtype != np.int64:
        raise ValueError(f"FeatureTrack.{what}_ids: need (M, D) float32 vectors and (M,) int64 ticks, "
                         f"got {vectors.shape} {vectors.dtype} and {ticks.shape} {ticks.dtype}")
    if len(ticks) and (ticks[0] < lo or ticks[-1] > hi or (np.diff(ticks) <= 0).any()):
        raise ValueError(f"FeatureTrack.{what}_id_ticks must increase strictly within [{lo}, {hi}]")
