"""Webhook sink: each selected event POSTed as JSON, signed per the Standard Webhooks
specification (https://www.standardwebhooks.com), through a durable outbox.

- **Signature**: headers ``webhook-id`` (the idempotency key: ``msg_<exporter>_<seq>``, the
  same on every attempt), ``webhook-timestamp`` (of this attempt) and ``webhook-signature``
  (``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body``), computed by the
  ``standardwebhooks`` package from the ``whsec_`` secret; a receiver verifies with any
  Standard Webhooks library and drops an id it has already seen.
- **At least once**: an event is written to the outbox (``exporters.outbox``, in the
  monitor's SQLite file) before any attempt, together with the sink's cursor; at start the
  monitor replays the stored events after the cursor (those a crash kept from the sink), and
  pending rows are attempted again after a restart.
- **Retries**: a 5xx, 408, 429, a timeout or a refused connection is retried with
  exponential backoff and full jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``),
  or after ``Retry-After`` when the receiver sends one; any other 4xx is not retried. After
  ``max_attempts`` (or a 4xx) the row is dead-lettered, listed by ``GET /api/exporters``
  and re-queued by ``POST /api/exporters/{name}/outbox/{id}/retry``.
- **Order**: rows go out in ``seq`` order, one at a time; while an attempt is waiting for its
  retry the rows behind it wait too (a receiver that is down is not hammered once per row).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from expose.exporters.base import DeliveryCounts, EventFilter, EventLog
from expose.exporters.ocsf import finding
from expose.exporters.outbox import Outbox, OutboxEntry
from expose.monitor import __version__
from expose.monitor.alerts.events import Event
from expose.monitor.config import WebhookExporterConfig

log = logging.getLogger(__name__)

RETRYABLE = frozenset({408, 429})
_CURSOR_EVERY_S = 5.0  # how often the cursor moves over events the filter skips
KEEP_DELIVERED_S = 7 * 86400.0  # delivered rows are kept this long (what was sent, for an audit)


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def backoff_s(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2**(attempt-1))] (attempt counts from 1)."""
    return rng.uniform(0.0, min(cap, initial * 2.0 ** max(0, attempt - 1)))


class WebhookSink:
    def __init__(self, cfg: WebhookExporterConfig, filter: EventFilter, *, name: str,
                 state_db: Path | str) -> None:
        self.name = name
        self.cfg = cfg
        self.filter = filter
        self.counts = DeliveryCounts()
        try:
            self._signer = Webhook(cfg.secret.get_secret_value())
        except Exception:
            raise ValueError(f"exporter {name}: the webhook secret must be whsec_ followed by base64 "
                             "(generate one with `expose webhook-secret`)") from None
        if cfg.ca_file is not None and not Path(cfg.ca_file).is_file():
            raise ValueError(f"exporter {name}: ca_file {cfg.ca_file} not found")
        self.outbox = Outbox(state_db)
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._skipped_seq = 0  # newest event the filter skipped, not yet in the cursor
        self._cursor_at = 0.0
        self._pruned_at = 0.0

    # ---- the sink interface ----------------------------------------------------------
    async def start(self, log_: EventLog) -> None:
        """Replay the stored events after the cursor, then start delivering."""
        cursor = self.outbox.cursor(self.name)
        if cursor is None:  # a new exporter starts with the events from now on
            self.outbox.set_cursor(self.name, log_.last_seq())
        else:
            replayed = 0
            while page := await asyncio.to_thread(log_.events_after, cursor, 1000):
                for event in page:
                    replayed += self._take(event)
                cursor = page[-1].seq
            self.outbox.set_cursor(self.name, cursor)
            if replayed:
                log.info("exporter %s: %d events a restart kept from it are queued", self.name, replayed)
        self._ensure_task()

    async def send(self, event: Event) -> None:
        if self._take(event):
            self._ensure_task()
            self._wake.set()

    def wake(self) -> None:
        """Look at the outbox now (an entry was re-queued from the API)."""
        self._ensure_task()
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._skipped_seq:
            self.outbox.set_cursor(self.name, self._skipped_seq)
        if self._client is not None:
            await self._client.aclose()
        self.outbox.close()

    # ---- queueing --------------------------------------------------------------------
    def body(self, event: Event) -> str | None:
        """The JSON body for an event, or None when the format has none for it (ocsf: non-alerts)."""
        if self.cfg.format == "ocsf":
            f = finding(event)
            return None if f is None else json.dumps(f, separators=(",", ":"))
        return event.model_dump_json()

    def _take(self, event: Event) -> int:
        body = self.body(event) if self.filter.accepts(event) else None
        if body is None:
            self._skipped_seq = event.seq
            if time.monotonic() - self._cursor_at > _CURSOR_EVERY_S:
                self.outbox.set_cursor(self.name, event.seq)
                self._cursor_at, self._skipped_seq = time.monotonic(), 0
            return 0
        self.outbox.add(self.name, event.seq, body)
        return 1

    # ---- delivery --------------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._deliver_loop(), name=f"webhook:{self.name}")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.cfg.ca_file is not None:
                verify = ssl.create_default_context(cafile=str(self.cfg.ca_file))
            self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, verify=verify, follow_redirects=False,
                                             headers={"User-Agent": f"expose/{__version__}"})
        return self._client

    async def _deliver_loop(self) -> None:
        hold_until = 0.0  # after a failed attempt, nothing goes out before its retry time
        while True:
            now = time.time()
            if now < hold_until:
                await asyncio.sleep(hold_until - now)
                continue
            due = self.outbox.due(self.name, now)
            if not due:
                if now - self._pruned_at > 3600:
                    self.outbox.prune_delivered(self.name, now - KEEP_DELIVERED_S)
                    self._pruned_at = now
                nxt = self.outbox.next_due(self.name)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if nxt is None else max(0.05, nxt - now))
                continue
            for entry in due:
                retry_at = await self._attempt(entry)
                if retry_at is not None:
                    hold_until = retry_at  # the rows behind a failing one wait for its retry
                    break

    async def _attempt(self, entry: OutboxEntry) -> float | None:
        """One POST. None when the row is settled (delivered or dead), else when to retry it."""
        now = time.time()
        headers = {"content-type": "application/json", "webhook-id": entry.id,
                   "webhook-timestamp": str(int(now)),
                   "webhook-signature": self._signer.sign(entry.id, datetime.fromtimestamp(now, UTC), entry.body)}
        retry_in: float | None = None
        try:
            resp = await self._http().post(self.cfg.url, content=entry.body.encode(), headers=headers)
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}".strip().rstrip(":")
        else:
            if 200 <= resp.status_code < 300:
                self.outbox.delivered(entry.id)
                self.counts.delivered += 1
                return None
            error = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code not in RETRYABLE:
                self._dead(entry, f"{error}: refused, not retried")
                return None
            retry_in = retry_after_s(resp.headers.get("retry-after"), now)
        attempts = entry.attempts + 1
        if attempts >= self.cfg.max_attempts:
            self._dead(entry, f"{error} (attempt {attempts} of {self.cfg.max_attempts})")
            return None
        if retry_in is None:
            retry_in = backoff_s(attempts, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self._rng)
        retry_at = time.time() + retry_in
        self.outbox.failed(entry.id, error, next_at=retry_at)
        self.counts.retried += 1
        log.info("exporter %s: %s failed (%s), retry in %.1f s", self.name, entry.id, error, retry_in)
        return retry_at

    def _dead(self, entry: OutboxEntry, error: str) -> None:
        self.outbox.failed(entry.id, error, next_at=None)
        self.counts.dead_lettered += 1
        log.warning("exporter %s: %s dead-lettered: %s", self.name, entry.id, error)
