"""The one interface every alert sink implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from expose.monitor.alerts.events import Event


@runtime_checkable
class AlertSink(Protocol):
    """Receives every event the monitor publishes, in ``seq`` order, on the event loop.

    ``send`` must not block the loop for long: a sink that talks to a slow peer
    buffers (bounded) and drops or disconnects, it never stalls ingest.
    """

    name: str

    async def send(self, event: Event) -> None: ...

    async def close(self) -> None: ...
