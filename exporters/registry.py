"""Sinks by name: the config's ``[[exporters]]`` entries -> AlertSink objects.

Each kind is one module; this table is the only place that knows them all.
"""

from __future__ import annotations

from pathlib import Path

from expose.exporters.base import AlertSink, EventFilter
from expose.exporters.jsonl import JsonlSink
from expose.monitor.config import (
    ExporterConfig,
    JsonlExporterConfig,
    SplunkHecExporterConfig,
    SyslogExporterConfig,
    WebhookExporterConfig,
)
from expose.monitor.errors import ConfigError


def exporter_names(configs: list[ExporterConfig]) -> list[str]:
    """Each exporter's label: its configured name, else KIND-N (N: its place in the list).
    Labels must be unique: the webhook outbox keys its rows by them."""
    names = [c.name or f"{c.kind}-{i}" for i, c in enumerate(configs)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"exporter names must be unique; repeated: {', '.join(dupes)}")
    return names


def build_sinks(configs: list[ExporterConfig], state_db: Path | str) -> list[AlertSink]:
    """``state_db``: the monitor's SQLite file, where durable sinks keep their outbox. A bad
    exporter setting (a secret that is not whsec_, a missing CA file) is a ConfigError."""
    try:
        return _build(configs, state_db)
    except ValueError as err:
        raise ConfigError(f"exporters: {err}") from None


def _build(configs: list[ExporterConfig], state_db: Path | str) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    for name, c in zip(exporter_names(configs), configs, strict=True):
        f = EventFilter.of(c.types, c.min_severity, c.streams)
        if isinstance(c, JsonlExporterConfig):
            sinks.append(JsonlSink(c.path, f, name=name, format=c.format))
        elif isinstance(c, WebhookExporterConfig):
            from expose.exporters.webhook import WebhookSink

            sinks.append(WebhookSink(c, f, name=name, state_db=state_db))
        elif isinstance(c, SyslogExporterConfig):
            from expose.exporters.syslog import SyslogSink

            sinks.append(SyslogSink(c, f, name=name))
        elif isinstance(c, SplunkHecExporterConfig):
            from expose.exporters.splunk import SplunkHecSink

            sinks.append(SplunkHecSink(c, f, name=name))
        else:  # pragma: no cover - the config's discriminator admits nothing else
            raise ValueError(f"unknown exporter kind {c.kind!r}")
    return sinks
