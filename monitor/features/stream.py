"""Live features: media items of one stream -> Windows, on the same 25 fps timeline as files.

The tick rule, the first-frame-per-tick landmarking, the short-gap interpolation, the
placing of audio samples and the audio rows of a span of ticks are those of offline
extraction (``timeline``, ``audio``), so a live window equals the offline window at the
same start. Audio rows are computed per window from a rolling sample buffer, over the
window's span plus some context: the mel frames are then bit-for-bit the offline ones;
the VAD and the phone decoder see less context than a whole file gives them, so those
rows are close rather than identical.

Identity embeddings follow ``identity``'s rules: a face descriptor for a sampled tick whose
frame shows a face, computed as the frame is landmarked; a window's voice embedding from the
sample buffer once the window is emitted (the buffer then holds the voice context too). Both
take the same inputs as offline (the same frame; the same samples, run through a VAD of
their own span), so they equal the offline ones exactly (as with the mel rows, a window
emitted before its audio arrived, past ``audio_max_lag_s``, hears silence there). Cost: they run on the stream's
worker thread, in line with the landmarker (no second thread to coordinate, nothing to
reorder): ~80 ms per face descriptor (5 a second by default: ~0.4 s of CPU per second of
video) and ~15 ms per second of speech in the voice context per window (~0.1 s per
window at 6 s of context). Until the live benchmark says otherwise, a stream that needs
them off passes no ``identity`` (the default).

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
from expose.monitor.features.identity import IdentityEmbedders, WindowIdentity, window_identity
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
                 settings: LiveFeatureSettings = LiveFeatureSettings(), time_offset: float = 0.0,
                 identity: IdentityEmbedders | None = None) -> None:
        """``identity``: the embedders for face descriptors / voice embeddings in the windows
        (``IdentityEmbedders.from_config``); None: windows carry none."""
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
        self._identity = identity or IdentityEmbedders.disabled()
        ids = self._identity.settings
        if ids.voice_every and settings.max_buffer_s * FPS < (
                settings.window + ids.voice_context + ids.voice_every + settings.audio_max_lag_s * FPS):
            raise ValueError("max_buffer_s is too short to hold a window's voice context")
        self._face_ticks: list[int] = []  # ticks of the face descriptors held, ascending
        self._face_ids: list[np.ndarray] = []
        self._appearance: list[np.ndarray] = []  # one per face descriptor ((0,) when off)
        self._voice: tuple[int, np.ndarray] | None = None  # the last voice embedding: (tick, vector)
        self._last_arrival: float | None = None  # VideoFrame.arrived of the newest frame pushed

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
        self._last_arrival = frame.arrived
        self._last_video_t = frame.time
        tick = self._rows.tick_for(frame.time)
        if tick is None:
            return  # a later frame on a tick already landmarked (50 fps sources)
        row, face = self._identity.landmark(self._extractor, frame.image, frame.time, tick)
        self._landmarked += 1
        if row is not None:
            self.last_face_image = frame.image
        self._rows.put(tick, row)
        if face is not None:
            self._face_ticks.append(tick)
            self._face_ids.append(face.face)
            self._appearance.append(face.appearance)
        if len(self._rows) > self._max_ticks:
            self._dropped_ticks += self._rows.drop_before(self._rows.end - self._max_ticks)
            self._skip_to(self._rows.base + _EDGE)
            self._drop_face_ids(self._rows.base)

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
        v, a, ids = self._rows.span(s, e, context=_EDGE), self._audio_rows(s, e), self._window_identity(s, e)
        w = Window(stream=self.stream, t0=self.time_offset + s / FPS, t1=self.time_offset + e / FPS,
                   expression=v.expression, face_mask=v.face_mask, observed=v.observed,
                   audio=a["audio"], speech=a["speech"],
                   face_ids=ids.face_ids, face_id_rows=ids.face_id_rows,
                   voice_id=ids.voice_id, voice_id_row=ids.voice_id_row, appearance=ids.appearance,
                   ready_at=self._last_arrival)
        self._windows += 1
        self._next_start = s + self.settings.hop
        self._trim()
        return w

    def _audio_rows(self, s: int, e: int) -> dict[str, np.ndarray]:
        pre = min(self._pre, s)
        f0, f1 = s - pre, e + self._post
        sound = tick_audio(self._audio.ticks(f0, f1), f1 - f0)
        rows = slice(pre, pre + e - s)
        return {"audio": sound.rows(rows), "speech": sound.speech[rows]}

    def _window_identity(self, s: int, e: int) -> WindowIdentity:
        dim = self._identity.face_dim
        faces = np.stack(self._face_ids) if self._face_ids else np.zeros((0, dim), dtype=np.float32)
        app = (np.stack(self._appearance) if self._appearance
               else np.zeros((0, self._identity.appearance_dim), dtype=np.float32))
        voice_ticks, voices = np.zeros(0, dtype=np.int64), np.zeros((0, self._identity.voice_dim), dtype=np.float32)
        k = self._identity.settings.voice_tick_for_end(e)
        if k is not None:
            if self._voice is None or self._voice[0] != k:  # windows closer than voice_every share one
                self._voice = (k, self._identity.voice_at(self._audio, k))
            voice_ticks, voices = np.array([k], dtype=np.int64), self._voice[1][None, :]
        return window_identity(faces, np.array(self._face_ticks, dtype=np.int64), voices, voice_ticks, s, e, app)

    def _drop_face_ids(self, tick: int) -> None:
        n = int(np.searchsorted(self._face_ticks, tick))
        del self._face_ticks[:n], self._face_ids[:n], self._appearance[:n]

    def _trim(self) -> None:
        """Forget what no future window needs (its edge ticks, audio and voice context, and
        the face descriptors before it)."""
        self._rows.drop_before(self._next_start - _EDGE)
        self._drop_face_ids(self._next_start)
        keep = self._next_start - self._pre
        k = self._identity.settings.voice_tick_for_end(self._next_start + self.settings.window)
        if k is not None:
            keep = min(keep, self._identity.settings.voice_span(k)[0])
        self._audio.drop_before(keep * SAMPLES_PER_FRAME)

    def stats(self) -> FeaturizerStats:
        return FeaturizerStats(
            video_frames=self._video_frames, landmarked=self._landmarked, audio_samples=self._audio_samples,
            windows=self._windows, skipped_windows=self._skipped, dropped_ticks=self._dropped_ticks,
            dropped_samples=self._dropped_samples, last_video_time=self._last_video_t,
            last_audio_time=self._audio.end / AUDIO_RATE if self._audio_samples else None,
        )
