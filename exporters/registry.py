"""Sinks by name: the config's ``[[exporters]]`` entries -> AlertSink objects."""

from __future__ import annotations

from expose.exporters.base import AlertSink
from expose.exporters.jsonl import JsonlSink
from expose.monitor.config import ExporterConfig, JsonlExporterConfig


def build_sinks(configs: list[ExporterConfig]) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    for c in configs:
        if isinstance(c, JsonlExporterConfig):
            sinks.append(JsonlSink(c.path, frozenset(c.types)))
        else:  # pragma: no cover - the config's discriminator admits nothing else
            raise ValueError(f"unknown exporter kind {c.kind!r}")
    return sinks
