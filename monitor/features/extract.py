"""Media file -> FeatureTrack: expressions and audio features on the fixed 25 fps timeline.

Resampling by timestamps, not frame counts, by the rules of ``timeline`` (which live
featurising shares): a decoded frame lands on the tick nearest its time, only the first
frame landing on a tick is landmarked, and short runs of ticks that no frame lands on are
interpolated. The track ends one median frame interval after the last decoded frame.
Identity embeddings (face descriptors on sampled ticks, voice embeddings of the speech
before sampled ticks) follow ``identity``'s rules, which live featurising shares too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import MediaError
from expose.monitor.features.audio import tick_audio
from expose.monitor.features.expressions import EXPRESSION_DIM, ExpressionExtractor  # noqa: F401 (bench_features patches it here)
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.identity import IdentityEmbedders, identity_version
from expose.monitor.features.onnx_face import expression_extractor, face_backend
from expose.monitor.features.timeline import FPS, SampleBuffer, TickRows, sample_of
from expose.monitor.features.track import FORMAT_VERSION, FeatureTrack
from expose.monitor.media.reader import AudioChunk, MediaReader, VideoFrame

log = logging.getLogger(__name__)

# Bump when anything that changes extracted values changes; it keys the feature cache.
# 3: tracks record which ticks were observed (not interpolated); 4: identity embeddings
EXTRACTOR_REVISION = 4

Progress = Callable[[float], None]  # called with seconds of media processed so far


@lru_cache(maxsize=8)
def _model_digest(path: str) -> str:
    return sha256_file(Path(path))[:12]


def extractor_version(cfg: FeatureConfig, model_path: Path) -> str:
    """Everything that changes the extracted values, as one string."""
    return (
        f"r{EXTRACTOR_REVISION}-f{FORMAT_VERSION}-side{cfg.max_side}-faces{cfg.num_faces}"
        f"-conf{cfg.min_face_confidence}-model{_model_digest(str(model_path))}"
        + identity_version(cfg, lambda p: _model_digest(str(p)))
        + ("-onnxface" if face_backend(cfg) == "onnx" else "")
        + ("-track" if face_backend(cfg) == "onnx" and cfg.face_crop == "track" else "")
    )


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
    its track's face mask is all False. Raises AssetError when an enabled identity
    embedder's model files are missing.
    """
    identity = IdentityEmbedders.from_config(cfg)
    face_ids: list[np.ndarray] = []
    appearance: list[np.ndarray] = []
    face_ticks: list[int] = []
    rows = TickRows(EXPRESSION_DIM)
    audio = SampleBuffer()
    audio_end = 0
    last_video_t = 0.0
    intervals: list[float] = []
    prev_t: float | None = None
    with MediaReader(source, require_video=True, require_audio=require_audio) as reader, \
            expression_extractor(cfg, model_path) as extractor:
        for item in reader.read(max_side=cfg.max_side):
            if isinstance(item, VideoFrame):
                t = item.time
                if prev_t is not None and len(intervals) < 500:
                    intervals.append(t - prev_t)
                prev_t = last_video_t = t
                tick = rows.tick_for(t)
                if tick is not None:
                    row, face = identity.landmark(extractor, item.image, t, tick)
                    rows.put(tick, row)
                    if face is not None:
                        face_ids.append(face.face)
                        appearance.append(face.appearance)
                        face_ticks.append(tick)
                if progress is not None:
                    progress(t)
            elif isinstance(item, AudioChunk):
                audio.put(item)
                # A chunk clipped at the origin counts at full length towards the end (extra
                # silence that the phone decoder hears): files have always been extracted so.
                audio_end = max(audio_end, max(0, sample_of(item.time)) + len(item.samples))
        has_audio = reader.info.has_audio
    if prev_t is None:
        raise MediaError(f"{source}: no video frame could be decoded")
    header = reader.info.duration
    if header and last_video_t < 0.8 * header - 1.0:
        log.warning("%s: decoded %.1f s of video but the header says %.1f s; the file looks truncated",
                    source, last_video_t, header)
    frame_step = float(np.median(intervals)) if intervals else 1.0 / FPS
    n = max(1, int(round((last_video_t + frame_step) * FPS)))
    video = rows.span(0, n)
    samples = audio.read(0, audio_end)
    if has_audio and require_audio and samples.size == 0:
        raise MediaError(f"{source}: the audio stream holds no decodable samples")
    sound = tick_audio(samples, n)
    # a tick past the track's end (a frame after the last one counted) keeps no descriptor
    kept = [i for i, k in enumerate(face_ticks) if k < n]
    voice_ids, voice_ticks = identity.voice_track(audio, n)
    return FeatureTrack(
        expression=video.expression,
        face_mask=video.face_mask,
        observed=video.observed,
        mel=sound.mel,
        speech=sound.speech,
        phones=sound.phones,
        has_audio=has_audio and samples.size > 0,
        source=str(source),
        media_sha256=media_sha256,
        extractor_version=extractor_version(cfg, model_path),
        face_ids=(np.stack([face_ids[i] for i in kept]) if kept
                  else np.zeros((0, identity.face_dim), dtype=np.float32)),
        face_id_ticks=np.array([face_ticks[i] for i in kept], dtype=np.int64),
        appearance=(np.stack([appearance[i] for i in kept]) if kept
                    else np.zeros((0, identity.appearance_dim), dtype=np.float32)),
        voice_ids=voice_ids,
        voice_id_ticks=voice_ticks,
    )

