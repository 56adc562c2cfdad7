"""JSON-lines file sink: one event per line, appended (SIEM shippers tail such files)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from expose.exporters.base import EventFilter
from expose.exporters.ocsf import finding
from expose.monitor.alerts.events import Event
from expose.monitor.config import BodyFormat

log = logging.getLogger(__name__)


class JsonlSink:
    def __init__(self, path: Path, filter: EventFilter | None = None, *, name: str | None = None,
                 format: BodyFormat = "expose") -> None:
        self.name = name or f"jsonl:{path}"
        self.path = Path(path)
        self.filter = filter or EventFilter(min_severity="info")
        self.format = format
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # line-buffered append: each event reaches the file whole, at once
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    async def send(self, event: Event) -> None:
        if self._file.closed or not self.filter.accepts(event):
            return
        if self.format == "ocsf":
            body = finding(event)
            if body is not None:
                self._file.write(json.dumps(body, separators=(",", ":")) + "\n")
        else:
            self._file.write(event.model_dump_json() + "\n")

    async def close(self) -> None:
        self._file.close()
