"""A WHIP / WebRTC publisher's tracks as a Source (aiortc).

aiortc's receive tracks must be drained continuously or its jitter buffers fill and
the connection degrades, so each track gets a task that always reads and puts the
frame into the stream's bounded DropQueue (the oldest video frame goes when the
featurizer is behind).

Clock: RTP timestamps of the audio and video tracks start at random offsets, and
aiortc does not expose the RTCP sender-report mapping, so each track is anchored at
the arrival time of its first frame and advances by its own timestamps from there
(audio / video skew is then the difference of the two jitter buffers' delays, tens of
milliseconds on a LAN).
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from monitor.media import AUDIO_RATE, AudioChunk, VideoFrame
from monitor.sources import DropQueue, MediaItem

log = logging.getLogger(__name__)

_RESYNC_S = 0.2  # audio sample clock vs RTP time: re-anchor beyond this (packet loss, DTX)


class _TrackClock:
    """Media time of one track: arrival of its first frame + its own timestamps."""

    def __init__(self, origin: float) -> None:
        self._origin = origin
        self._anchor: tuple[int, float] | None = None  # (pts, seconds since origin)

    def time(self, pts: int | None, time_base: Fraction | None) -> float:
        now = time.monotonic() - self._origin
        if pts is None or time_base is None:
            return now
        if self._anchor is None:
            self._anchor = (pts, now)
        p0, t0 = self._anchor
        return t0 + float((pts - p0) * time_base)


class WebRTCSource:
    """Video (and optionally audio) tracks of one peer connection."""

    def __init__(self, description: str, *, max_side: int = 640, queue_items: int = 128) -> None:
        self.description = description
        self._max_side = max_side
        self._queue = DropQueue(queue_items)
        self._tasks: list[asyncio.Task[None]] = []
        self._origin: float | None = None
        self._size: tuple[int, int, int, int] | None = None  # (out w, out h, in w, in h)
        self._last_video_t: float | None = None
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self._audio_clock: float | None = None
        self._open_tracks = 0

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def add_track(self, track: MediaStreamTrack) -> None:
        if track.kind not in ("audio", "video"):
            return
        self._open_tracks += 1
        self._tasks.append(asyncio.create_task(self._drain(track), name=f"drain:{self.description}:{track.kind}"))

    async def recv(self) -> MediaItem:
        return await self._queue.get()

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._queue.close()

    def _origin_now(self) -> float:
        if self._origin is None:
            self._origin = time.monotonic()
        return self._origin

    async def _drain(self, track: MediaStreamTrack) -> None:
        clock = _TrackClock(self._origin_now())
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    item = self._video(frame, clock)
                    if item is not None:
                        self._queue.put_nowait(item)
                elif isinstance(frame, av.AudioFrame):
                    for chunk in self._audio(frame, clock):
                        self._queue.put_nowait(chunk)
        except MediaStreamError:
            pass  # the peer stopped sending
        except Exception:
            log.exception("%s: %s track failed", self.description, track.kind)
        finally:
            self._open_tracks -= 1
            if self._open_tracks <= 0:
                self._queue.close()

    def _video(self, frame: av.VideoFrame, clock: _TrackClock) -> VideoFrame | None:
        t = clock.time(frame.pts, frame.time_base)
        if self._last_video_t is not None and t <= self._last_video_t:
            return None
        self._last_video_t = t
        if self._size is None or (frame.width, frame.height) != self._size[2:]:
            scale = min(1.0, self._max_side / max(frame.width, frame.height))
            w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
            self._size = (w, h, frame.width, frame.height)
        w, h = self._size[0], self._size[1]
        rgb = frame.reformat(width=w, height=h, format="rgb24")
        return VideoFrame(frame.pts, frame.time_base, t, np.ascontiguousarray(rgb.to_ndarray()))

    def _audio(self, frame: av.AudioFrame, clock: _TrackClock) -> list[AudioChunk]:
        t = clock.time(frame.pts, frame.time_base)
        if self._audio_clock is None or abs(self._audio_clock - t) > _RESYNC_S:
            self._audio_clock = t
        out = []
        frame.pts = None  # the resampler would otherwise insist on continuous pts
        for r in self._resampler.resample(frame):
            samples = np.ascontiguousarray(r.to_ndarray().reshape(-1), dtype=np.float32)
            out.append(AudioChunk(self._audio_clock, samples))
            self._audio_clock += len(samples) / AUDIO_RATE
        return out
