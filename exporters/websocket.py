"""Websocket fan-out: every connected console gets every event, through a bounded queue.

A console that cannot keep up is not waited for: its queue overflows, it is marked
``lagging`` and its connection is closed; it reconnects with ``?since=SEQ`` and the
store replays what it missed.
"""

from __future__ import annotations

import asyncio
import logging

from expose.monitor.alerts.events import Event

log = logging.getLogger(__name__)


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.lagging = False

    def offer(self, event: Event) -> None:
        if self.lagging:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagging = True
            # wake the reader so it notices and closes
            self.queue.get_nowait()
            self.queue.put_nowait(event)


class WebsocketHub:
    name = "websocket"

    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size

    def subscribe(self) -> Subscription:
        sub = Subscription(self._queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def clients(self) -> int:
        return len(self._subs)

    async def send(self, event: Event) -> None:
        for sub in list(self._subs):
            sub.offer(event)

    async def close(self) -> None:
        self._subs.clear()
