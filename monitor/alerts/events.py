"""Events: what the monitor tells consoles, in one typed shape.

Every event the store keeps has a ``seq`` (monotonically increasing, assigned by the
SQLite store), so a websocket client that reconnects with ``?since=SEQ`` gets exactly
what it missed. Heartbeats are not stored: they carry the latest ``seq`` so a client
sees it is up to date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

EventType = Literal["score", "alert", "stream", "heartbeat"]
EVENT_TYPES: tuple[str, ...] = ("score", "alert", "stream", "heartbeat")


@dataclass(frozen=True)
class Event:
    seq: int
    type: EventType
    stream: str | None  # None for process-wide events (heartbeats)
    ts: float  # wall clock, epoch seconds
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "stream": self.stream, "ts": self.ts, **self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
