"""Splunk HTTP Event Collector sink: selected events POSTed in batches to
``/services/collector/event`` with ``Authorization: Splunk <token>``.

Each HEC event carries, in ``event``, what a Splunk user of a meeting-deepfake detector reads:
``verdict`` (authentic / artificial / inconclusive), ``score`` (probability-like, 0.5 at the
alert threshold; ``exporters.base.assess``), ``stream``, ``profile`` (who the person claims
to be), ``participant`` (the stream: one stream carries one participant's camera and
microphone), ``window`` (``t0``/``t1`` in stream seconds), plus the event's type, action,
severity, seq, alert id and explanation; ``time`` is the event's wall clock.

A batch goes out when it holds ``batch_size`` events or its oldest has waited ``flush_s``.
While Splunk is unreachable (or answers 5xx / 408 / 429 / 503) the batch is kept and
retried with exponential backoff and jitter (``Retry-After`` honoured); events keep queueing
in a bounded buffer (``max_buffer``; beyond it the oldest are dropped and counted). Another
4xx (a bad token, a malformed event) drops the batch as dead-lettered, logged with Splunk's
answer. Unlike the webhook this sink has no durable outbox: a crash loses what was still
buffered (the alerts themselves are in the monitor's database and its JSONL/webhook exports).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from expose.exporters.base import DeliveryCounts, EventFilter, assess, severity_of
from expose.exporters.webhook import RETRYABLE, backoff_s, retry_after_s
from expose.monitor import __version__
from expose.monitor.alerts.events import AlertChangeEvent, AlertUpdateEvent, Event
from expose.monitor.config import SplunkHecExporterConfig

log = logging.getLogger(__name__)

HEC_PATH = "/services/collector/event"


def hec_event(event: Event, cfg: SplunkHecExporterConfig, host: str) -> dict[str, Any]:
    """One HEC event object for an expose event."""
    a = assess(event)
    body: dict[str, Any] = {
        "verdict": a.verdict if a else None, "score": a.score if a else None,
        "stream": event.stream, "participant": event.stream, "profile": a.profile if a else None,
        "window": {"t0": a.t0, "t1": a.t1} if a else None,
        "type": event.type, "action": getattr(event, "action", None), "severity": severity_of(event),
        "seq": event.seq, "product": "expose", "version": __version__,
    }
    if isinstance(event, AlertChangeEvent | AlertUpdateEvent):
        body |= {"alert_id": event.alert.id, "status": event.alert.status, "explanation": event.alert.explanation,
                 "reasons": event.alert.reasons, "threshold": event.alert.threshold,
                 "peak_distance": event.alert.peak_distance, "n_windows": event.alert.n_windows}
    else:
        body |= {"details": event.data}
    out: dict[str, Any] = {"time": round(event.ts, 3), "host": host, "source": cfg.source,
                           "sourcetype": cfg.sourcetype, "event": body}
    if cfg.index:
        out["index"] = cfg.index
    return out


class SplunkHecSink:
    def __init__(self, cfg: SplunkHecExporterConfig, filter: EventFilter, *, name: str) -> None:
        if cfg.ca_file is not None and not Path(cfg.ca_file).is_file():
            raise ValueError(f"exporter {name}: ca_file {cfg.ca_file} not found")
        self.name = name
        self.cfg = cfg
        self.filter = filter
        self.counts = DeliveryCounts()
        self.url = cfg.url.rstrip("/") + HEC_PATH
        self._host = socket.gethostname()
        # (number, queued at (monotonic), the event's JSON); numbers let a batch be removed after
        # its POST even if overflow dropped some of it meanwhile
        self._buffer: deque[tuple[int, float, str]] = deque()
        self._n = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._rng = random.Random()
        self._closing = False

    async def send(self, event: Event) -> None:
        if not self.filter.accepts(event):
            return
        if len(self._buffer) >= self.cfg.max_buffer:
            self._buffer.popleft()
            self.counts.dropped += 1
        self._n += 1
        self._buffer.append((self._n, time.monotonic(),
                             json.dumps(hec_event(event, self.cfg, self._host), separators=(",", ":"))))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"splunk:{self.name}")
        if len(self._buffer) >= self.cfg.batch_size:
            self._wake.set()

    async def close(self) -> None:
        """Flush what is buffered (one try per batch, at most a few seconds), then stop."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        deadline = time.monotonic() + min(5.0, self.cfg.timeout_s)
        while self._buffer and time.monotonic() < deadline:
            if await self._post_batch() is not None:
                break
        if self._client is not None:
            await self._client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.cfg.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(self.cfg.ca_file))
            self._client = httpx.AsyncClient(
                timeout=self.cfg.timeout_s, verify=verify,
                headers={"Authorization": f"Splunk {self.cfg.token.get_secret_value()}",
                         "User-Agent": f"expose/{__version__}"})
        return self._client

    async def _run(self) -> None:
        failures = 0
        while self._buffer:
            oldest = self._buffer[0][1]
            wait = oldest + self.cfg.flush_s - time.monotonic()
            if len(self._buffer) < self.cfg.batch_size and wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            retry_in = await self._post_batch()
            if retry_in is None:
                failures = 0
                continue
            failures += 1
            await asyncio.sleep(retry_in if retry_in > 0 else backoff_s(failures, 1.0, 60.0, self._rng))

    async def _post_batch(self) -> float | None:
        """POST the oldest batch. None: settled (sent, or dropped for good); else seconds to
        wait before retrying it (0: use the backoff)."""
        head = list(self._buffer)[: self.cfg.batch_size]
        batch, last = [body for _, _, body in head], head[-1][0]
        try:
            resp = await self._http().post(self.url, content="\n".join(batch).encode())
        except httpx.HTTPError as err:
            self.counts.retried += len(batch)
            log.info("exporter %s: HEC unreachable (%s); %d events wait", self.name, err, len(self._buffer))
            return 0.0
        if 200 <= resp.status_code < 300:
            self._pop(last)
            self.counts.delivered += len(batch)
            return None
        if resp.status_code >= 500 or resp.status_code in RETRYABLE:
            self.counts.retried += len(batch)
            return retry_after_s(resp.headers.get("retry-after"), time.time()) or 0.0
        self._pop(last)
        self.counts.dead_lettered += len(batch)
        log.error("exporter %s: HEC refused %d events: HTTP %d %s", self.name, len(batch), resp.status_code,
                  resp.text[:300])
        return None

    def _pop(self, last: int) -> None:
        while self._buffer and self._buffer[0][0] <= last:
            self._buffer.popleft()
