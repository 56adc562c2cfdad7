"""Live sources behind one small interface: ``await source.recv()`` -> VideoFrame | AudioChunk.

Like aiortc's ``MediaStreamTrack.recv()``: the end of the stream is an exception
(``EndOfStream``), and a failure is a ``MediaError`` with a one-line reason. Times are
seconds from the source's own origin (sample 0 / tick 0 = time 0).

``PullSource`` decodes files and FFmpeg URLs (rtsp, http(s)/HLS, ...) with PyAV in a
worker thread feeding a bounded queue, as aiortc's MediaPlayer does. Live media never
waits for a slow consumer: when the queue is full the oldest *video* frame is dropped
and counted (audio is small and a hole in it would read as silence). A file read as
fast as possible is the exception: its producer waits for space instead.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Protocol

from expose.monitor.errors import MediaError
from expose.monitor.media.reader import AudioChunk, MediaReader, VideoFrame, is_network_url

log = logging.getLogger(__name__)

MediaItem = VideoFrame | AudioChunk


class EndOfStream(Exception):
    """The source has no more media (aiortc's MediaStreamError)."""


class Source(Protocol):
    """What a stream runner reads from."""

    description: str

    async def recv(self) -> MediaItem: ...

    def stop(self) -> None: ...

    @property
    def dropped(self) -> int: ...


class DropQueue:
    """Bounded FIFO of media items on the event loop; full -> drop the oldest video frame.

    ``close(error)`` ends it: ``get`` raises EndOfStream (or the error) once it is empty.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 2:
            raise ValueError("DropQueue needs room for at least two items")
        self.maxsize = maxsize
        self._items: collections.deque[MediaItem] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: Exception | None = None
        self.dropped = 0  # video frames dropped because the consumer was behind

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: MediaItem) -> None:
        if self._closed:
            return
        if len(self._items) >= self.maxsize:
            self._drop_one()
        self._items.append(item)
        self._wake()

    def _drop_one(self) -> None:
        for i, old in enumerate(self._items):
            if isinstance(old, VideoFrame):
                del self._items[i]
                self.dropped += 1
                return
        self._items.popleft()  # only audio queued: the consumer is far behind anyway

    def close(self, error: Exception | None = None) -> None:
        self._closed = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> MediaItem:
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise EndOfStream
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


class PullSource:
    """A file or URL decoded by PyAV in a thread.

    ``realtime``: files are paced to their timestamps, as a live stream would deliver
    them (network sources always arrive at their own pace); otherwise a file is read as
    fast as the consumer takes it.
    """

    def __init__(self, url: str, *, realtime: bool = True, max_side: int = 640,
                 timeout_s: float = 10.0, queue_items: int = 64) -> None:
        self.url = url
        self.description = url
        self._live = is_network_url(url)
        self._pace = realtime and not self._live
        self._blocking = not realtime and not self._live
        self._max_side = max_side
        self._timeout = timeout_s
        self._queue = DropQueue(queue_items)
        self._space = threading.Semaphore(queue_items) if self._blocking else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def start(self) -> None:
        """Open and decode in a worker thread; call from the event loop."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._worker, name=f"decode:{self.url[-40:]}", daemon=True)
        self._thread.start()

    async def recv(self) -> MediaItem:
        if self._thread is None:
            self.start()
        item = await self._queue.get()
        if self._space is not None:
            self._space.release()
        return item

    def stop(self) -> None:
        """Ask the decode thread to finish; it closes the container (bounded by the read timeout)."""
        self._stop.set()
        if self._space is not None:
            self._space.release()  # unblock a producer waiting for space
        self._queue.close()

    # ---- worker thread ---------------------------------------------------------------
    def _deliver(self, item: MediaItem | None, error: Exception | None = None) -> None:
        assert self._loop is not None
        try:
            if item is None:
                self._loop.call_soon_threadsafe(self._queue.close, error)
            else:
                if isinstance(item, VideoFrame):
                    item = dataclasses.replace(item, arrived=time.time())
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _worker(self) -> None:
        error: Exception | None = None
        try:
            with MediaReader(self.url, require_video=True, timeout=self._timeout) as reader:
                t_start: float | None = None
                for item in reader.read(max_side=self._max_side):
                    if self._stop.is_set():
                        break
                    if self._pace:
                        now = time.monotonic()
                        if t_start is None:
                            t_start = now - item.time
                        delay = t_start + item.time - now
                        if delay > 0 and self._stop.wait(delay):
                            break
                    if self._space is not None:
                        while not self._space.acquire(timeout=0.5):
                            if self._stop.is_set():
                                return
                        if self._stop.is_set():
                            return
                    self._deliver(item)
        except MediaError as err:
            error = err
        except Exception as err:  # a decoder bug must end this source, not the process
            log.exception("%s: decoder thread failed", self.url)
            error = MediaError(f"{self.url}: decoding failed ({type(err).__name__}: {err})")
        if not self._stop.is_set():
            self._deliver(None, error)
