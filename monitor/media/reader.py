"""Media input through PyAV: files and any FFmpeg URL -> timestamped video and 16 kHz audio.

One pass demuxes both streams; video frames come out as C-contiguous RGB arrays
(PyAV returns padded rows for some widths, which MediaPipe silently misreads),
downscaled so the longer side is at most ``max_side``; audio comes out resampled to
16 kHz mono float32. Times are seconds from the media's origin (the earliest start of
the selected streams), so audio and video share one clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from expose.monitor.errors import MediaError

log = logging.getLogger(__name__)

AUDIO_RATE = 16_000
_NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "srt://", "udp://")


@dataclass(frozen=True)
class VideoFrame:
    """One decoded picture. ``time`` is seconds from the media origin."""

    pts: int | None
    time_base: Fraction | None
    time: float
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB, C-contiguous
    # wall clock (epoch s) when a live source handed the frame on; None for file reads. The
    # windows it completes carry it, so a score's latency counts from the frame, not the window.
    arrived: float | None = None

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"VideoFrame.image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if not img.flags.c_contiguous:
            raise ValueError("VideoFrame.image must be C-contiguous")


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive mono samples at 16 kHz; ``time`` is the first sample's time."""

    time: float
    samples: np.ndarray = field(repr=False)  # (N,) float32 in [-1, 1]

    def __post_init__(self) -> None:
        if self.samples.ndim != 1 or self.samples.dtype != np.float32:
            raise ValueError("AudioChunk.samples must be 1-D float32")


@dataclass(frozen=True)
class MediaInfo:
    url: str
    has_video: bool
    has_audio: bool
    duration: float | None  # seconds, from the container header when it has one
    width: int | None
    height: int | None
    fps: float | None  # average rate from the header; informational only


def is_network_url(url: str) -> bool:
    return url.lower().startswith(_NETWORK_SCHEMES)


def _open_options(url: str) -> dict[str, str]:
    if url.lower().startswith(("rtsp://", "rtsps://")):
        # TCP avoids UDP loss behind NAT. No "nobuffer" / "low_delay": with them FFmpeg's
        # H.264 decoder returned no frame at all from a real RTSP server (B-frame stream).
        return {"rtsp_transport": "tcp"}
    return {}


def _scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    # Even sizes keep swscale on its fast paths.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


class MediaReader:
    """Context manager over one opened media source.

    ``require_video`` / ``require_audio`` make a missing stream a clear MediaError at
    open time rather than an empty result later.
    """

    def __init__(
        self,
        url: str | Path,
        *,
        require_video: bool = True,
        require_audio: bool = False,
        want_audio: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.url = str(url)
        if not is_network_url(self.url):
            p = Path(self.url)
            if not p.exists():
                raise MediaError(f"{self.url}: no such file")
            if p.is_dir():
                raise MediaError(f"{self.url}: is a directory, expected a media file")
            if p.stat().st_size == 0:
                raise MediaError(f"{self.url}: file is empty")
        try:
            self._container: Any = av.open(
                self.url, options=_open_options(self.url), timeout=(timeout, timeout)
            )
        except av.error.FFmpegError as err:
            raise MediaError(f"{self.url}: cannot open as media ({_reason(err)})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise MediaError(f"{self.url}: cannot open ({err})") from None
        c = self._container
        self._video = c.streams.video[0] if c.streams.video else None
        self._audio = c.streams.audio[0] if (c.streams.audio and want_audio) else None
        if self._video is None and require_video:
            kind = "audio-only" if c.streams.audio else "without video"  # before close()
            self.close()
            raise MediaError(f"{self.url}: has no video stream ({kind} media); a face video is needed")
        if not c.streams.audio and require_audio:
            self.close()
            raise MediaError(f"{self.url}: has no audio stream; speech is needed for this command")
        if self._video is None and self._audio is None:
            self.close()
            raise MediaError(f"{self.url}: has neither a video nor an audio stream")
        if self._video is not None:
            self._video.thread_type = "AUTO"
        vs = self._video
        self.info = MediaInfo(
            url=self.url,
            has_video=vs is not None,
            has_audio=bool(c.streams.audio),
            duration=float(c.duration / av.time_base) if c.duration else None,
            width=vs.codec_context.width if vs is not None else None,
            height=vs.codec_context.height if vs is not None else None,
            fps=float(vs.average_rate) if vs is not None and vs.average_rate else None,
        )

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # closing a half-broken container must not mask the real error
        with contextlib.suppress(Exception):
            self._container.close()

    def _origin(self) -> float | None:
        starts = [
            float(s.start_time * s.time_base)
            for s in (self._video, self._audio)
            if s is not None and s.start_time is not None and s.time_base is not None
        ]
        return min(starts) if starts else None

    def read(self, max_side: int = 640) -> Iterator[VideoFrame | AudioChunk]:
        """Yield frames and audio chunks in decode order.

        A decode error after some media was read ends the stream with a warning (a
        truncated file still gives what it holds); one before anything was read
        raises MediaError.
        """
        streams = [s for s in (self._video, self._audio) if s is not None]
        resampler = (
            av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE) if self._audio else None
        )
        origin = self._origin()
        audio_clock: float | None = None  # time of the next resampled sample
        last_video_t: float | None = None
        size: tuple[int, int] | None = None
        produced = 0
        try:
            for packet in self._container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        t = frame.time
                        if t is None:  # missing pts: step by the nominal rate
                            step = 1.0 / (self.info.fps or 25.0)
                            t = (last_video_t + step) if last_video_t is not None else 0.0
                        else:
                            if origin is None:
                                origin = t
                            t -= origin
                        if last_video_t is not None and t <= last_video_t:
                            continue  # duplicated / reordered timestamps
                        last_video_t = t
                        if size is None:
                            size = _scaled_size(frame.width, frame.height, max_side)
                        rgb = frame.reformat(width=size[0], height=size[1], format="rgb24")
                        img = np.ascontiguousarray(rgb.to_ndarray())
                        produced += 1
                        yield VideoFrame(frame.pts, frame.time_base, t, img)
                    elif isinstance(frame, av.AudioFrame) and resampler is not None:
                        if audio_clock is None:
                            t0 = frame.time if frame.time is not None else 0.0
                            if origin is None:
                                origin = t0
                            audio_clock = t0 - origin
                        for out in resampler.resample(frame):
                            chunk = _to_mono(out)
                            produced += 1
                            yield AudioChunk(audio_clock, chunk)
                            audio_clock += len(chunk) / AUDIO_RATE
            if resampler is not None and audio_clock is not None:
                for out in resampler.resample(None):
                    chunk = _to_mono(out)
                    yield AudioChunk(audio_clock, chunk)
                    audio_clock += len(chunk) / AUDIO_RATE
        except av.error.FFmpegError as err:
            if produced == 0:
                raise MediaError(f"{self.url}: cannot decode ({_reason(err)})") from None
            log.warning("%s: decoding stopped early (%s); using what was read", self.url, _reason(err))


def _to_mono(frame: av.AudioFrame) -> np.ndarray:
    arr = frame.to_ndarray()  # (1, N) for packed mono float
    return np.ascontiguousarray(arr.reshape(-1), dtype=np.float32)


def _reason(err: Exception) -> str:
    msg = getattr(err, "strerror", None) or str(err)
    return str(msg).splitlines()[0] if msg else type(err).__name__
