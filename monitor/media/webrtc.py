"""A WHIP / WebRTC publisher's tracks as a Source (aiortc).

aiortc's receive tracks must be drained continuously or its jitter buffers fill and
the connection degrades, so each track gets a task that always reads and puts the
frame into the stream's bounded DropQueue (the oldest video frame goes when the
featurizer is behind).

Clock: RTP timestamps of the audio and video tracks start at random offsets. What ties
them together is each track's RTCP sender reports (an NTP time of the sender's clock
for one RTP timestamp), which aiortc receives but does not expose: the receiver's RTCP
handler is wrapped to keep the newest report of each track. Once a track has one, its
frames are placed on the sender's clock (one offset to local time for the whole
connection), so audio and video line up as they were captured. Until then (the first
0.5-1.5 s) a track is anchored at the arrival of its first frame; that alone left the
audio about 100 ms late (aiortc's audio jitter buffer holds 4 packets before it plays,
the video one none), which the sync term reads as a desynchronised call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpSrPacket

from expose.monitor.media.reader import AUDIO_RATE, AudioChunk, VideoFrame
from expose.monitor.media.sources import DropQueue, MediaItem

log = logging.getLogger(__name__)

_RESYNC_S = 0.2  # audio sample clock vs RTP time: re-anchor beyond this (packet loss, DTX)


def _ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32


class _SenderClock:
    """Sender NTP seconds -> local media seconds, fixed by the first mapped frame."""

    def __init__(self) -> None:
        self.offset: float | None = None


class _TrackClock:
    """Media time of one track: on the sender's clock once an RTCP sender report has
    come, before that the arrival of its first frame + its own timestamps."""

    def __init__(self, origin: float, sender: _SenderClock) -> None:
        self._origin = origin
        self._sender = sender
        self._anchor: tuple[int, float] | None = None  # (pts, seconds since origin)
        self.report: tuple[float, int] | None = None  # newest sender report: (NTP seconds, frame pts)
        self.mapped = False  # whether the last time came from a sender report

    def time(self, pts: int | None, time_base: Fraction | None) -> float:
        now = time.monotonic() - self._origin
        if pts is None or time_base is None:
            return now
        if self.report is not None:
            ntp, rtp = self.report
            delta = (pts - rtp) % 2**32  # RTP timestamps are 32 bits and wrap; pts count on
            if delta >= 2**31:
                delta -= 2**32
            sender_t = ntp + float(delta * time_base)
            if self._sender.offset is None:
                self._sender.offset = now - sender_t
            self.mapped = True
            return sender_t + self._sender.offset
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
        self._audio_mapped = False
        self._sender = _SenderClock()
        self._open_tracks = 0

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def add_track(self, track: MediaStreamTrack, receiver: RTCRtpReceiver | None = None) -> None:
        """Drain ``track``; with its ``receiver``, line it up by the sender's RTCP reports."""
        if track.kind not in ("audio", "video"):
            return
        self._open_tracks += 1
        clock = _TrackClock(self._origin_now(), self._sender)
        if receiver is not None:
            _keep_sender_reports(receiver, clock)
        self._tasks.append(asyncio.create_task(self._drain(track, clock),
                                               name=f"drain:{self.description}:{track.kind}"))

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

    async def _drain(self, track: MediaStreamTrack, clock: _TrackClock) -> None:
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
        return VideoFrame(frame.pts, frame.time_base, t, np.ascontiguousarray(rgb.to_ndarray()), arrived=time.time())

    def _audio(self, frame: av.AudioFrame, clock: _TrackClock) -> list[AudioChunk]:
        t = clock.time(frame.pts, frame.time_base)
        if self._audio_clock is None or abs(self._audio_clock - t) > _RESYNC_S or clock.mapped != self._audio_mapped:
            self._audio_clock = t  # (re-)anchor, also when the track moves onto the sender's clock
            self._audio_mapped = clock.mapped
        out = []
        frame.pts = None  # the resampler would otherwise insist on continuous pts
        for r in self._resampler.resample(frame):
            samples = np.ascontiguousarray(r.to_ndarray().reshape(-1), dtype=np.float32)
            out.append(AudioChunk(self._audio_clock, samples))
            self._audio_clock += len(samples) / AUDIO_RATE
        return out


def _keep_sender_reports(receiver: RTCRtpReceiver, clock: _TrackClock) -> None:
    """Wrap the receiver's RTCP handler (aiortc looks it up on the instance for every
    packet) to keep the newest sender report for ``clock``. aiortc hands out frame pts
    as RTP timestamp minus the track's first one (its private TimestampMapper), so the
    report's RTP timestamp is moved into that frame. Without the mapper (another aiortc
    version) reports are ignored and the track stays anchored at arrival."""
    handle = receiver._handle_rtcp_packet
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    if mapper is None or not hasattr(mapper, "_origin"):
        log.warning("this aiortc version hides its RTP timestamp origin: WebRTC audio/video are "
                    "aligned by arrival only")
        return

    async def handle_and_keep(packet: object) -> None:
        origin = mapper._origin
        if isinstance(packet, RtcpSrPacket) and origin is not None:
            clock.report = (_ntp_seconds(packet.sender_info.ntp_timestamp),
                            (packet.sender_info.rtp_timestamp - origin) % 2**32)
        await handle(packet)  # type: ignore[arg-type]

    receiver._handle_rtcp_packet = handle_and_keep  # type: ignore[method-assign]
