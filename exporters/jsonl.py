"""JSON-lines file sink: one event per line, appended (SIEM shippers tail such files)."""

from __future__ import annotations

import logging
from pathlib import Path

from expose.monitor.alerts.events import Event

log = logging.getLogger(__name__)


class JsonlSink:
    def __init__(self, path: Path, types: frozenset[str] = frozenset({"alert"})) -> None:
        self.name = f"jsonl:{path}"
        self.path = Path(path)
        self.types = types
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # line-buffered append: each event reaches the file whole, at once
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    async def send(self, event: Event) -> None:
        if event.type in self.types and not self._file.closed:
            self._file.write(event.model_dump_json() + "\n")

    async def close(self) -> None:
        self._file.close()
