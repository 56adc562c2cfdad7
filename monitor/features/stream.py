"""Live features: media items of one stream -> Windows, on the same 25 fps timeline as files.

The tick rule, the first-frame-per-tick landmarking and the short-gap interpolation are
those of ``features.extract`` (offline), so a live window equals the offline window at
the same start. Audio rows are computed per window from a rolling sample buffer, over
the window's span plus some context: the mel frames are then bit-for-bit the offline
ones; the VAD and the phone decoder see less context than a whole file gives them,
so those rows are close rather than identical.

Buffers are bounded: past ``max_buffer_s`` the oldest rows / samples are dropped and
counted (a stalled audio or video side must not grow memory), and windows whose start
fell out of the buffer are skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from expose.monitor.features.audio import FPS, log_mel, speech_activity
from expose.monitor.features.expressions import EXPRESSION_DIM, ExpressionExtractor
from expose.monitor.features.extract import MAX_INTERPOLATED_GAP, interpolate_gaps
from expose.monitor.features.phones import phone_posteriors
from expose.monitor.features.windows import Window
from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, VideoFrame

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = AUDIO_RATE // FPS  # 640
_EDGE = MAX_INTERPOLATED_GAP + 1  # ticks beyond a window that decide its interpolation


@dataclass(frozen=True)
class LiveFeatureSettings:
    window: int = 64  # frames; take it from the model (model.cfg.window)
    hop: int = 25  # frames between window starts
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
        # video: rows[k - tick_base] for tick k; None = no face or no frame on that tick
        self._rows: list[np.ndarray | None] = []
        self._tick_base = 0
        self._last_tick = -1
        # audio: samples[i - sample_base] for absolute sample i (sample 0 = time 0)
        self._audio = np.zeros(0, dtype=np.float32)
        self._sample_base = 0
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
        tick = int(np.floor(frame.time * FPS + 0.5))
        if tick <= self._last_tick:
            return  # a later frame on a tick already landmarked (50 fps sources)
        row = self._extractor.process(frame.image, frame.time)
        self._landmarked += 1
        if row is not None:
            self.last_face_image = frame.image
        if tick < self._tick_base:
            return  # behind the buffer (cannot happen with increasing times)
        while self._tick_base + len(self._rows) < tick:
            self._rows.append(None)
        self._rows.append(row)
        self._last_tick = tick
        if len(self._rows) > self._max_ticks:
            self._drop_ticks(len(self._rows) - self._max_ticks)

    def _push_audio(self, chunk: AudioChunk) -> None:
        s = chunk.samples
        self._audio_samples += len(s)
        start = int(round(chunk.time * AUDIO_RATE))
        if start < 0:  # audio before the media origin: drop the lead-in, as offline
            s, start = s[-start:], 0
        end = self._sample_base + len(self._audio)
        rel = start - self._sample_base
        if rel < 0:
            s, rel = s[-rel:], 0  # already trimmed away
        if start >= end:
            self._audio = np.concatenate([self._audio, np.zeros(start - end, np.float32), s])
        else:  # overlap: the later chunk wins, as offline
            head = self._audio[:rel]
            tail = self._audio[rel + len(s):]
            self._audio = np.concatenate([head, s, tail])
        limit = int(self.settings.max_buffer_s * AUDIO_RATE)
        if len(self._audio) > limit:
            n = len(self._audio) - limit
            self._audio = self._audio[n:]
            self._sample_base += n
            self._dropped_samples += n

    def _drop_ticks(self, n: int) -> None:
        del self._rows[:n]
        self._tick_base += n
        self._dropped_ticks += n
        self._skip_to(self._tick_base + _EDGE)

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
            if self._last_tick + 1 < e:
                return None
        elif self._last_tick < e - 1 + _EDGE:
            return None  # a short gap at the end may still be filled by frames to come
        if s < self._tick_base:
            self._skip_to(self._tick_base)
            return self._try_window(final)
        audio_end = self._sample_base + len(self._audio)
        need = (e + self._post) * SAMPLES_PER_FRAME
        if not final and audio_end < need:
            lag = (self._last_tick + 1) / FPS - audio_end / AUDIO_RATE
            if lag < self.settings.audio_max_lag_s:
                return None  # audio is on its way; past the lag limit its absence reads as silence
        w = Window(stream=self.stream, t0=self.time_offset + s / FPS, t1=self.time_offset + e / FPS,
                   **self._video_rows(s, e), **self._audio_rows(s, e))
        self._windows += 1
        self._next_start = s + self.settings.hop
        self._trim()
        return w

    def _video_rows(self, s: int, e: int) -> dict[str, np.ndarray]:
        lo, hi = max(self._tick_base, s - _EDGE), min(self._last_tick + 1, e + _EDGE)
        n = hi - lo
        expr = np.zeros((n, EXPRESSION_DIM), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        missing = []
        for i in range(n):
            r = self._rows[lo + i - self._tick_base]
            missing.append(r is None)
            if r is not None:
                expr[i], mask[i] = r, True
        observed = mask.copy()
        interpolate_gaps(expr, mask, missing)
        a, b = s - lo, e - lo
        return {"expression": expr[a:b], "face_mask": mask[a:b], "observed": observed[a:b]}

    def _audio_rows(self, s: int, e: int) -> dict[str, np.ndarray]:
        pre = min(self._pre, s)
        f0, f1 = s - pre, e + self._post
        a0, a1 = f0 * SAMPLES_PER_FRAME, f1 * SAMPLES_PER_FRAME
        span = np.zeros(a1 - a0, dtype=np.float32)
        lo, hi = max(a0, self._sample_base), min(a1, self._sample_base + len(self._audio))
        if hi > lo:
            span[lo - a0 : hi - a0] = self._audio[lo - self._sample_base : hi - self._sample_base]
        n, t = f1 - f0, e - s
        mel = log_mel(span, n)[pre : pre + t]
        speech = speech_activity(span, n)[pre : pre + t]
        phones = phone_posteriors(span, n)[pre : pre + t]
        audio = np.concatenate([mel.reshape(t, -1), phones, speech[:, None]], axis=1).astype(np.float32)
        return {"audio": audio, "speech": speech}

    def _trim(self) -> None:
        """Forget what no future window needs (its edge ticks and audio context)."""
        keep_tick = self._next_start - _EDGE
        if keep_tick > self._tick_base:
            n = min(keep_tick - self._tick_base, len(self._rows))
            del self._rows[:n]
            self._tick_base += n
        keep_sample = (self._next_start - self._pre) * SAMPLES_PER_FRAME
        if keep_sample > self._sample_base:
            n = min(keep_sample - self._sample_base, len(self._audio))
            self._audio = self._audio[n:]
            self._sample_base += n

    def stats(self) -> FeaturizerStats:
        audio_end = self._sample_base + len(self._audio)
        return FeaturizerStats(
            video_frames=self._video_frames, landmarked=self._landmarked, audio_samples=self._audio_samples,
            windows=self._windows, skipped_windows=self._skipped, dropped_ticks=self._dropped_ticks,
            dropped_samples=self._dropped_samples, last_video_time=self._last_video_t,
            last_audio_time=audio_end / AUDIO_RATE if self._audio_samples else None,
        )
