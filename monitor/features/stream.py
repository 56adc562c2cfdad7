"""Live features: media items of one stream -> Windows, on the same 25 fps timeline as files.

The tick rule, the first-frame-per-tick landmarking, the short-gap interpolation, the
placing of audio samples and the audio rows of a span of ticks are those of offline
extraction (``timeline``, ``audio``), so a live window equals the offline window at the
same start. Audio rows are computed per window from a rolling sample buffer, over the
window's span plus some context: the mel frames are then bit-for-bit the offline ones;
the VAD and the phone decoder see less context than a whole file gives them, so those
rows are close rather than identical.

Buffers are bounded: past ``max_buffer_s`` the oldest rows / samples are dropped and
counted (a stalled audio or video side must not grow memory), and windows whose start
fell out of the buffer are skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from expose.monitor.features.audio import tick_audio
from expose.monitor.features.expressions import EXPRESSION_DIM, ExpressionExtractor
from expose.monitor.features.timeline import FPS, INTERPOLATION_REACH, SAMPLES_PER_FRAME, SampleBuffer, TickRows
from expose.monitor.features.windows import Window
from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, VideoFrame

log = logging.getLogger(__name__)

_EDGE = INTERPOLATION_REACH  # ticks beyond a window that decide its interpolation


@dataclass(frozen=True)
class LiveFeatureSettings:
    window: int = 64  # frames; take it from the model (model.cfg.window)
    hop: int = FPS  # frames between window starts
    audio_context_s: float = 0.5  # audio before a window that the VAD / phone decoder also hear
    audio_max_lag_s: float = 1.0  # emit with silent audio once audio lags video by this much
    max_buffer_s: float = 20.0  # per side (video rows, audio samples)

    def __post_init__(self) -> None:
        if self.window < 1 or self.hop < 1:
            raise ValueError("window and hop must be at least one frame")
        if self.max_buffer_s * FPS < self.window + 2 * _EDGE + self.audio_context_s * FPS + 2:
            raise ValueError("max_buffer_s is too short to hold one window with its context")


@dataclass(frozen=True)
class FeaturizerStats:
    video_frames: int
    landmarked: int  # frames that got a tick of their own
    audio_samples: int
    windows: int
    skipped_windows: int  # window starts lost to buffer overflow
    dropped_ticks: int
    dropped_samples: int
    last_video_time: float | None
    last_audio_time: float | None


class StreamFeaturizer:
    """Push VideoFrame / AudioChunk items of one stream; get Windows as they complete.

    Item times are seconds from the source's origin (tick 0 = time 0), as MediaReader
    gives them. Not thread-safe: one owner (the stream's worker) calls ``push`` / ``finish``.
    """

    def __init__(self, stream: str, extractor: ExpressionExtractor,
                 settings: LiveFeatureSettings = LiveFeatureSettings(), time_offset: float = 0.0) -> None:
        self.stream = stream
        # Added to window times: a reconnected source restarts its media clock at 0, the
        # stream's clock goes on.
        self.time_offset = time_offset
        self.settings = settings
        self._extractor = extractor
        self._pre = max(1, int(round(settings.audio_context_s * FPS)))  # context frames before
        self._post = 1  # one frame after covers the last frame's mel windows (+-27.5 ms)
        self._rows = TickRows(EXPRESSION_DIM)
        self._audio = SampleBuffer()
        self._next_start = 0
        self._video_frames = self._landmarked = self._audio_samples = 0
        self._windows = self._skipped = self._dropped_ticks = self._dropped_samples = 0
        self._last_video_t: float | None = None
        self.last_face_image: np.ndarray | None = None  # newest frame with a face (thumbnails)
        self._max_ticks = int(settings.max_buffer_s * FPS)

    # ---- input ---------------------------------------------------------------------
    def push(self, item: VideoFrame | AudioChunk) -> list[Window]:
        if isinstance(item, VideoFrame):
            self._push_video(item)
        else:
            self._push_audio(item)
        return self._ready(final=False)

    def finish(self) -> list[Window]:
        """End of stream: emit the windows that the media received so far fills."""
        return self._ready(final=True)

    def _push_video(self, frame: VideoFrame) -> None:
        self._video_frames += 1
        self._last_video_t = frame.time
        tick = self._rows.tick_for(frame.time)
        if tick is None:
            return  # a later frame on a tick already landmarked (50 fps sources)
        row = self._extractor.process(frame.image, frame.time)
        self._landmarked += 1
        if row is not None:
            self.last_face_image = frame.image
        self._rows.put(tick, row)
        if len(self._rows) > self._max_ticks:
            self._dropped_ticks += self._rows.drop_before(self._rows.end - self._max_ticks)
            self._skip_to(self._rows.base + _EDGE)

    def _push_audio(self, chunk: AudioChunk) -> None:
        self._audio_samples += len(chunk.samples)
        self._audio.put(chunk)
        limit = int(self.settings.max_buffer_s * AUDIO_RATE)
        if len(self._audio) > limit:
            self._dropped_samples += self._audio.drop_before(self._audio.end - limit)

    def _skip_to(self, first_tick: int) -> None:
        """Move the next window start onto the hop grid at or after ``first_tick``."""
        hop = self.settings.hop
        if self._next_start < first_tick:
            new = -(-first_tick // hop) * hop
            self._skipped += (new - self._next_start) // hop
            self._next_start = new

    # ---- output --------------------------------------------------------------------
    def _ready(self, final: bool) -> list[Window]:
        out = []
        while True:
            w = self._try_window(final)
            if w is None:
                break
            out.append(w)
        return out

    def _try_window(self, final: bool) -> Window | None:
        s, t = self._next_start, self.settings.window
        e = s + t
        if final:
            if self._rows.end < e:
                return None
        elif self._rows.end < e + _EDGE:
            return None  # a short gap at the end may still be filled by frames to come
        if s < self._rows.base:
            self._skip_to(self._rows.base)
            return self._try_window(final)
        need = (e + self._post) * SAMPLES_PER_FRAME
        if not final and self._audio.end < need:
            lag = self._rows.end / FPS - self._audio.end / AUDIO_RATE
            if lag < self.settings.audio_max_lag_s:
                return None  # audio is on its way; past the lag limit its absence reads as silence
        w = Window(stream=self.stream, t0=self.time_offset + s / FPS, t1=self.time_offset + e / FPS,
                   **self._video_rows(s, e), **self._audio_rows(s, e))
        self._windows += 1
        self._next_start = s + self.settings.hop
        self._trim()
        return w

    def _video_rows(self, s: int, e: int) -> dict[str, np.ndarray]:
        v = self._rows.span(s, e, context=_EDGE)
        return {"expression": v.expression, "face_mask": v.face_mask, "observed": v.observed}

    def _audio_rows(self, s: int, e: int) -> dict[str, np.ndarray]:
        pre = min(self._pre, s)
        f0, f1 = s - pre, e + self._post
        sound = tick_audio(self._audio.ticks(f0, f1), f1 - f0)
        rows = slice(pre, pre + e - s)
        return {"audio": sound.rows(rows), "speech": sound.speech[rows]}

    def _trim(self) -> None:
        """Forget what no future window needs (its edge ticks and audio context)."""
        self._rows.drop_before(self._next_start - _EDGE)
        self._audio.drop_before((self._next_start - self._pre) * SAMPLES_PER_FRAME)

    def stats(self) -> FeaturizerStats:
        return FeaturizerStats(
            video_frames=self._video_frames, landmarked=self._landmarked, audio_samples=self._audio_samples,
            windows=self._windows, skipped_windows=self._skipped, dropped_ticks=self._dropped_ticks,
            dropped_samples=self._dropped_samples, last_video_time=self._last_video_t,
            last_audio_time=self._audio.end / AUDIO_RATE if self._audio_samples else None,
        )
