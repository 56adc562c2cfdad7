"""Media -> FeatureTrack: expressions and audio features on one fixed 25 fps timeline.

Resampling by timestamps, not frame counts: a decoded frame at time t belongs to
tick ``k = floor(t * 25 + 0.5)``. Only the first frame landing on a tick is
landmarked (a 50 fps source costs no more than a 25 fps one); ticks that no frame
lands on (sources below 25 fps, VFR gaps) are linearly interpolated from their
neighbours when the gap is short (<= 3 ticks) and both neighbours have a face,
otherwise marked face-absent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import MediaError
from expose.monitor.features.audio import FPS, log_mel, speech_activity
from expose.monitor.features.expressions import EXPRESSION_DIM, ExpressionExtractor
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.phones import phone_posteriors
from expose.monitor.features.track import FORMAT_VERSION, FeatureTrack
from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, MediaReader, VideoFrame

log = logging.getLogger(__name__)

# Bump when anything that changes extracted values changes; it keys the feature cache.
EXTRACTOR_REVISION = 3  # 3: tracks record which ticks were observed (not interpolated)
MAX_INTERPOLATED_GAP = 3

Progress = Callable[[float], None]  # called with seconds of media processed so far


@lru_cache(maxsize=8)
def _model_digest(path: str) -> str:
    return sha256_file(Path(path))[:12]


def extractor_version(cfg: FeatureConfig, model_path: Path) -> str:
    """Everything that changes the extracted values, as one string."""
    return (
        f"r{EXTRACTOR_REVISION}-f{FORMAT_VERSION}-side{cfg.max_side}-faces{cfg.num_faces}"
        f"-conf{cfg.min_face_confidence}-model{_model_digest(str(model_path))}"
    )


@dataclass
class _Timeline:
    """Growing per-tick expression rows while frames stream in."""

    rows: list[np.ndarray | None]
    last_tick: int = -1

    def put(self, tick: int, row: np.ndarray | None) -> None:
        while len(self.rows) < tick:
            self.rows.append(None)  # ticks no frame landed on; filled in finish()
        self.rows.append(row)
        self.last_tick = tick

    def finish(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expression, face_mask, observed): face_mask includes interpolated ticks."""
        rows = (self.rows + [None] * n)[:n]
        expr = np.zeros((n, EXPRESSION_DIM), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        for k, r in enumerate(rows):
            if r is not None:
                expr[k], mask[k] = r, True
        observed = mask.copy()
        interpolate_gaps(expr, mask, [r is None for r in rows])
        return expr, mask, observed


def interpolate_gaps(expr: np.ndarray, mask: np.ndarray, missing: list[bool]) -> None:
    """Fill short runs of ticks with no frame between two ticks that have a face."""
    n, k = len(mask), 0
    while k < n:
        if not missing[k]:
            k += 1
            continue
        start = k
        while k < n and missing[k]:
            k += 1
        before, after = start - 1, k
        if before >= 0 and after < n and mask[before] and mask[after] and k - start <= MAX_INTERPOLATED_GAP:
            for j in range(start, k):
                w = (j - before) / (after - before)
                expr[j] = (1 - w) * expr[before] + w * expr[after]
                mask[j] = True


def extract_track(
    source: str | Path,
    cfg: FeatureConfig,
    model_path: Path,
    *,
    require_audio: bool = True,
    media_sha256: str = "",
    progress: Progress | None = None,
) -> FeatureTrack:
    """Decode ``source`` once and return its FeatureTrack.

    Raises MediaError for unreadable media, media without video, and (when
    ``require_audio``) media without audio. A video with no face is not an error:
    its track's face mask is all False.
    """
    timeline = _Timeline(rows=[])
    audio_parts: list[tuple[int, np.ndarray]] = []
    last_video_t = 0.0
    intervals: list[float] = []
    prev_t: float | None = None
    with MediaReader(source, require_video=True, require_audio=require_audio) as reader, \
            ExpressionExtractor(model_path, cfg.num_faces, cfg.min_face_confidence) as extractor:
        for item in reader.read(max_side=cfg.max_side):
            if isinstance(item, VideoFrame):
                t = item.time
                if prev_t is not None and len(intervals) < 500:
                    intervals.append(t - prev_t)
                prev_t = last_video_t = t
                tick = int(np.floor(t * FPS + 0.5))
                if tick > timeline.last_tick:
                    timeline.put(tick, extractor.process(item.image, t))
                if progress is not None:
                    progress(t)
            elif isinstance(item, AudioChunk):
                audio_parts.append((int(round(item.time * AUDIO_RATE)), item.samples))
        has_audio = reader.info.has_audio
    if prev_t is None:
        raise MediaError(f"{source}: no video frame could be decoded")
    header = reader.info.duration
    if header and last_video_t < 0.8 * header - 1.0:
        log.warning("%s: decoded %.1f s of video but the header says %.1f s; the file looks truncated",
                    source, last_video_t, header)
    frame_step = float(np.median(intervals)) if intervals else 1.0 / FPS
    n = max(1, int(round((last_video_t + frame_step) * FPS)))
    expr, mask, observed = timeline.finish(n)
    samples = _assemble_audio(audio_parts)
    if has_audio and require_audio and samples.size == 0:
        raise MediaError(f"{source}: the audio stream holds no decodable samples")
    return FeatureTrack(
        expression=expr,
        face_mask=mask,
        observed=observed,
        mel=log_mel(samples, n),
        speech=speech_activity(samples, n),
        phones=phone_posteriors(samples, n),
        has_audio=has_audio and samples.size > 0,
        source=str(source),
        media_sha256=media_sha256,
        extractor_version=extractor_version(cfg, model_path),
    )


def _assemble_audio(parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Place chunks at their sample offsets on the timeline (time 0 = sample 0)."""
    if not parts:
        return np.zeros(0, dtype=np.float32)
    end = max(max(0, start) + len(s) for start, s in parts)
    out = np.zeros(end, dtype=np.float32)
    for start, s in parts:
        if start < 0:  # audio that starts before the video origin: drop the lead-in
            s, start = s[-start:], 0
        out[start : start + len(s)] = s
    return out
