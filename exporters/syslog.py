"""Syslog sink: each event as one RFC 5424 message whose MSG is a CEF record, sent over UDP
(RFC 5426), TCP (RFC 6587 octet counting) or TLS (RFC 5425).

Design
------
``send`` only filters, formats and appends the message to a bounded in-memory queue
(``max_queue``, 10 000 by default; when it is full the oldest message is dropped and counted
in ``counts.dropped``), so a slow or absent collector never stalls the event loop. One
background task, started on the first ``send``, drains the queue in order:

* udp: one datagram per message, cut to 2048 bytes (RFC 5426 §3.2: receivers SHOULD take
  2048 octets; longer datagrams risk IP fragmentation and silent loss). The CEF extension
  puts the long free texts (explanation, msg) last, so a cut loses those first. UDP has no
  feedback: ``delivered`` counts datagrams handed to the kernel.
* tcp / tls: ``LEN SP MSG`` frames (octet counting, so a message may hold any byte). A write
  that fails (peer closed or reset, a 10 s stall) counts one ``retried``; the sink closes
  the connection, waits (0.5 s, doubling up to 30 s), reconnects and sends the same message
  again. ``delivered`` counts messages written to the socket: neither RFC 6587 nor RFC 5425
  has an application acknowledgement, so a message written just before the collector dies
  may be lost without an error (the sink checks for the peer's close before each write,
  which narrows that window to messages in flight at the moment of the crash).
* tls verifies the collector's certificate and name by default (``ca_file``, else the
  system's CAs; ``server_name``, else ``host``); ``cert_file``/``key_file`` give a client
  certificate.

``close`` waits up to 2 s for the queue to drain, then closes the connection; what is still
queued then is counted as dropped. A bad config (tls file missing or unreadable, a file
option on a non-tls transport) raises ValueError at construction.

The RFC 5424 message
--------------------
``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [expose@32473 seq="N" stream="S"] CEF...``

* PRI = facility * 8 + severity; the expose severity (``exporters.base.severity_of``) maps
  to the syslog one: critical 2 (Critical), high 3 (Error), medium 4 (Warning), low 5
  (Notice), info 6 (Informational).
* TIMESTAMP: the event's ``ts``, UTC, milliseconds (``2026-12-01T22:50:51.123Z``).
* HOSTNAME: ``socket.gethostname()``; PROCID: the process id; APP-NAME: ``app_name``.
* MSGID: the event type and action, e.g. ``alert.opened``, ``stream.phase``, ``score``
  (the same string is the CEF signature id).
* SD: one element, ``expose@32473`` (32473: the private enterprise number RFC 5612 reserves
  for documentation), with the event ``seq`` and its ``stream``, escaped per §6.3.3.
* MSG: the CEF record, UTF-8 without a BOM.

CEF
---
``CEF:0|expose|expose|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION``: header fields escape
``\\`` and ``|`` (line breaks become spaces); extension values escape ``\\``, ``=`` and line
breaks (``\\n``, ``\\r``). CEF severity: info 1, low 3, medium 5, high 8, critical 10.

==========  ===============  ===============================  ===========================  =====================
key         label            alert events                     score events                 stream events
==========  ===============  ===============================  ===========================  =====================
rt                           event time (epoch ms)            event time                   event time
cat                          ``alert``                        ``score``                    ``stream``
act                          action (opened, updated, ...)    status (scored/insufficient) action (added, phase..)
externalId                   alert id
cs1         claimedProfile   profile                          profile                      profile (added, publ.)
cs2         stream           stream                           stream                       stream
cs3         verdict          ``assess`` verdict               ``assess`` verdict
cfp1        score            ``assess`` score (0..1)          ``assess`` score
cfp2        distance         mean distance of the episode     smoothed distance
cfp3        peakDistance /   peak distance                    window distance
            windowDistance
cfp4        threshold        threshold                        threshold
cn1         seq              event seq                        event seq                    event seq
cn2         windows          windows in the episode
cn3         reconnects                                                                     reconnects (phase)
start                        opened_at (epoch ms)
end                          ended_at (epoch ms), if ended
suser                        acknowledged_by / closed_by
cs4         explanation      explanation                      explanation
cs5         reason           close reason                     why insufficient             why down/failed
cs6         drivers/session  windows per driver (``face:3``)  the window's driver          WHIP session
outcome                                                                                    phase (phase events)
request                                                                                    url (added)
msg                          a sentence for a person          a sentence                   a sentence
==========  ===============  ===============================  ===========================  =====================

Keys without a value (null, empty, not finite) are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import ssl
from collections import deque
from datetime import UTC, datetime
from typing import Any

from expose.exporters.base import DeliveryCounts, EventFilter, assess, severity_of
from expose.monitor import __version__
from expose.monitor.alerts.events import (
    AlertChangeEvent,
    AlertUpdateEvent,
    AuditEvent,
    Event,
    ScoreEvent,
    StreamAddedEvent,
    StreamPhaseEvent,
    StreamPublishingEvent,
    StreamUnpublishedEvent,
)
from expose.monitor.config import Severity, SyslogExporterConfig

log = logging.getLogger(__name__)

SYSLOG_SEVERITY: dict[Severity, int] = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
CEF_SEVERITY: dict[Severity, int] = {"critical": 10, "high": 8, "medium": 5, "low": 3, "info": 1}
SD_ID = "expose@32473"
UDP_MAX_BYTES = 2048  # RFC 5426 §3.2
MAX_QUEUE = 10_000
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
FLUSH_S = 2.0
DEFAULT_PORT = {"udp": 514, "tcp": 514, "tls": 6514}

_NAMES = {
    "alert.opened": "Impersonation suspected",
    "alert.updated": "Impersonation episode goes on",
    "alert.ended": "Impersonation episode ended",
    "alert.acknowledged": "Impersonation alert acknowledged",
    "alert.closed": "Impersonation alert closed",
    "stream.added": "Stream added",
    "stream.removed": "Stream removed",
    "stream.phase": "Stream phase changed",
    "stream.publishing": "WHIP publisher started",
    "stream.unpublished": "WHIP publisher ended",
    "heartbeat": "Heartbeat",
}


# ---- escaping and framing ----------------------------------------------------------------

def cef_header_escape(value: str) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped; a line break would end the record for
    line-based receivers, so it becomes a space."""
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def cef_value_escape(value: str) -> str:
    """A CEF extension value: ``\\``, ``=`` escaped, line breaks written as ``\\n`` / ``\\r``."""
    value = value.replace("\\", "\\\\").replace("=", "\\=")
    return value.replace("\r", "\\r").replace("\n", "\\n")


def sd_escape(value: str) -> str:
    """An RFC 5424 PARAM-VALUE (§6.3.3): ``"``, ``\\`` and ``]`` escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 §3.4.1 octet counting (also RFC 5425): ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d %s" % (len(message), message)


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes, not cutting a UTF-8 sequence or a CEF escape in two."""
    if len(data) <= limit:
        return data
    text = data[:limit].decode("utf-8", errors="ignore")
    trailing = len(text) - len(text.rstrip("\\"))
    if trailing % 2:  # a lone backslash would escape whatever the receiver appends
        text = text[:-1]
    return text.encode("utf-8")


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``; else ``-``."""
    value = "".join(c if "!" <= c <= "~" else "-" for c in value)[:limit]
    return value or "-"


# ---- the message -------------------------------------------------------------------------

def signature(event: Event) -> str:
    """``type.action`` (``alert.opened``, ``stream.phase``), or the type alone (``score``)."""
    action = getattr(event, "action", None)
    return f"{event.type}.{action}" if action else event.type


def _ms(ts: float | None) -> int | None:
    return int(round(ts * 1000)) if ts is not None and math.isfinite(ts) else None


def _num(x: float | None) -> str | None:
    if x is None or not math.isfinite(x):
        return None
    return f"{x:.6f}".rstrip("0").rstrip(".") or "0"


def cef_fields(event: Event) -> list[tuple[str, Any]]:
    """The extension's (key, value) pairs in order (None values are left out later); the
    long free texts come last, so a UDP cut loses them first."""
    f: list[tuple[str, Any]] = [("rt", _ms(event.ts)), ("cat", event.type)]
    verdict = assess(event)
    if isinstance(event, AlertChangeEvent | AlertUpdateEvent):
        a = event.alert
        who = {"acknowledged": a.acknowledged_by, "closed": a.closed_by}.get(event.action)
        sentence = f"the person on stream '{a.stream}' is not '{a.profile}'"
        f += [
            ("act", event.action), ("externalId", a.id),
            ("cs1Label", "claimedProfile"), ("cs1", a.profile),
            ("cs2Label", "stream"), ("cs2", a.stream),
            ("cs3Label", "verdict"), ("cs3", verdict.verdict if verdict else None),
            ("cfp1Label", "score"), ("cfp1", _num(verdict.score) if verdict else None),
            ("cfp2Label", "distance"), ("cfp2", _num(a.mean_distance)),
            ("cfp3Label", "peakDistance"), ("cfp3", _num(a.peak_distance)),
            ("cfp4Label", "threshold"), ("cfp4", _num(a.threshold)),
            ("cn1Label", "seq"), ("cn1", event.seq),
            ("cn2Label", "windows"), ("cn2", a.n_windows),
            ("start", _ms(a.opened_at)), ("end", _ms(a.ended_at)),
            ("suser", who),
            ("cs5Label", "reason"), ("cs5", a.close_reason if event.action == "closed" else None),
            ("cs6Label", "drivers"), ("cs6", ",".join(f"{k}:{v}" for k, v in sorted(a.reasons.items()))),
            ("cs4Label", "explanation"), ("cs4", a.explanation),
            ("msg", f"{_NAMES[signature(event)]}: {sentence}" + (f"; {a.explanation}" if a.explanation else "")),
        ]
    elif isinstance(event, ScoreEvent):
        f += [
            ("act", event.status),
            ("cs1Label", "claimedProfile"), ("cs1", event.profile),
            ("cs2Label", "stream"), ("cs2", event.stream),
            ("cs3Label", "verdict"), ("cs3", verdict.verdict if verdict else None),
            ("cfp1Label", "score"), ("cfp1", _num(verdict.score) if verdict else None),
            ("cfp2Label", "distance"), ("cfp2", _num(event.smoothed)),
            ("cfp3Label", "windowDistance"), ("cfp3", _num(event.distance)),
            ("cfp4Label", "threshold"), ("cfp4", _num(event.threshold)),
            ("cn1Label", "seq"), ("cn1", event.seq),
            ("cs5Label", "reason"), ("cs5", event.reason),
            ("cs6Label", "drivers"), ("cs6", event.driver),
            ("cs4Label", "explanation"), ("cs4", event.explanation),
            ("msg", f"window {event.t0:.1f}-{event.t1:.1f} s of stream '{event.stream}': "
                    + (verdict.verdict if verdict else event.status)),
        ]
    elif isinstance(event, AuditEvent):
        f += [("act", event.action), ("suser", event.actor), ("cs1Label", "role"), ("cs1", event.role),
              ("cs2Label", "target"), ("cs2", event.target), ("cn1Label", "seq"), ("cn1", event.seq),
              ("msg", f"{event.actor} ({event.role}): {event.action} {event.target}")]
    else:
        action = getattr(event, "action", None)
        f += [("act", action), ("cs2Label", "stream"), ("cs2", event.stream), ("cn1Label", "seq"),
              ("cn1", event.seq)]
        if isinstance(event, StreamAddedEvent | StreamPublishingEvent):
            f += [("cs1Label", "claimedProfile"), ("cs1", event.profile)]
        if isinstance(event, StreamAddedEvent):
            f += [("request", event.url)]
        if isinstance(event, StreamPhaseEvent):
            f += [("outcome", event.phase), ("cn3Label", "reconnects"), ("cn3", event.reconnects),
                  ("cs5Label", "reason"), ("cs5", event.reason)]
        if isinstance(event, StreamPublishingEvent | StreamUnpublishedEvent):
            f += [("cs6Label", "session"), ("cs6", event.session)]
        detail = f" {event.phase}" if isinstance(event, StreamPhaseEvent) else ""
        f += [("msg", f"stream '{event.stream}': {action or event.type}{detail}")]
    return f


def cef(event: Event) -> str:
    """The event as one CEF record."""
    sev = severity_of(event)
    sig = signature(event)
    name = _NAMES.get(sig, "Window scored" if isinstance(event, ScoreEvent) else sig)
    # a label whose value is absent goes too: the pair is "xLabel" + "x"
    fields = [(k, v) for k, v in cef_fields(event) if v is not None and v != ""]
    keys = {k for k, _ in fields}
    fields = [(k, v) for k, v in fields if not k.endswith("Label") or k[: -len("Label")] in keys]
    header = "|".join(cef_header_escape(h) for h in ("expose", "expose", __version__, sig, name))
    ext = " ".join(f"{k}={cef_value_escape(str(v))}" for k, v in fields)
    return f"CEF:0|{header}|{CEF_SEVERITY[sev]}|{ext}"


def rfc5424(event: Event, *, facility: int, app_name: str, hostname: str, procid: int) -> bytes:
    """The event as one RFC 5424 message (no framing)."""
    pri = facility * 8 + SYSLOG_SEVERITY[severity_of(event)]
    ms = _ms(event.ts) or 0
    stamp = f"{datetime.fromtimestamp(ms // 1000, UTC):%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"
    params = f'seq="{event.seq}"' + (f' stream="{sd_escape(event.stream)}"' if event.stream is not None else "")
    head = (f"<{pri}>1 {stamp} {_printable(hostname, 255)} {_printable(app_name, 48)} {_printable(str(procid), 128)} "
            f"{_printable(signature(event), 32)} [{SD_ID} {params}] ")
    return (head + cef(event)).encode("utf-8")


# ---- the sink ----------------------------------------------------------------------------

def _tls_context(c: SyslogExporterConfig) -> ssl.SSLContext:
    for what, path in (("ca_file", c.ca_file), ("cert_file", c.cert_file), ("key_file", c.key_file)):
        if path is not None and not path.is_file():
            raise ValueError(f"syslog exporter: {what} {path} is not a file")
    if c.key_file is not None and c.cert_file is None:
        raise ValueError("syslog exporter: key_file needs cert_file")
    try:
        # verify the collector (CERT_REQUIRED, host name checked): default, not optional
        ctx = ssl.create_default_context(cafile=str(c.ca_file) if c.ca_file else None)
        if c.cert_file is not None:
            ctx.load_cert_chain(str(c.cert_file), str(c.key_file) if c.key_file else None)
    except (ssl.SSLError, OSError) as err:
        raise ValueError(f"syslog exporter: cannot load the TLS files: {err}") from None
    return ctx


class SyslogSink:
    def __init__(self, config: SyslogExporterConfig, filter: EventFilter | None = None, *, name: str | None = None,
                 max_queue: int = MAX_QUEUE) -> None:
        if not config.host.strip():
            raise ValueError("syslog exporter: host is empty")
        self.config = config
        self.port = config.port or DEFAULT_PORT[config.transport]
        self.name = name or f"syslog:{config.host}:{self.port}"
        self.filter = filter or EventFilter()
        self.counts = DeliveryCounts()
        self.max_queue = max_queue
        self._ssl: ssl.SSLContext | None = None
        if config.transport == "tls":
            self._ssl = _tls_context(config)
        elif config.ca_file or config.cert_file or config.key_file or config.server_name:
            raise ValueError(f"syslog exporter: ca_file, cert_file, key_file and server_name need transport "
                             f"tls, not {config.transport}")
        self._hostname = socket.gethostname()
        self._procid = os.getpid()
        self._queue: deque[bytes] = deque()
        self._current: bytes | None = None  # taken from the queue, not yet written
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None  # tcp, tls
        self._dgram: asyncio.DatagramTransport | None = None

    def format(self, event: Event) -> bytes:
        """The event's RFC 5424 message as this sink sends it (UDP: cut; TCP/TLS: framed)."""
        msg = rfc5424(event, facility=self.config.facility, app_name=self.config.app_name,
                      hostname=self._hostname, procid=self._procid)
        return truncate_utf8(msg, UDP_MAX_BYTES) if self.config.transport == "udp" else octet_frame(msg)

    async def send(self, event: Event) -> None:
        if self._closed or not self.filter.accepts(event):
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.counts.dropped += 1
        self._queue.append(self.format(event))
        self._idle.clear()
        self._wakeup.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"syslog sink {self.name}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), FLUSH_S)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lost = len(self._queue) + (self._current is not None)
        if lost:
            log.warning("%s: closed with %d message(s) undelivered", self.name, lost)
            self.counts.dropped += lost
            self._queue.clear()
            self._current = None
        await self._disconnect()

    async def _run(self) -> None:
        delay = BACKOFF_INITIAL_S
        failing = False
        while True:
            if self._current is None:
                while not self._queue:
                    self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                self._current = self._queue.popleft()
            try:
                await self._write(self._current)
            except Exception as err:  # OSError (ssl.SSLError, ConnectionError), TimeoutError; a bug too
                self.counts.retried += 1
                if not failing:
                    log.warning("%s: cannot send to %s:%d (%s); retrying", self.name, self.config.host, self.port,
                                str(err) or type(err).__name__, exc_info=not isinstance(err, OSError | TimeoutError))
                failing = True
                await self._disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            if failing:
                log.info("%s: sending to %s:%d again", self.name, self.config.host, self.port)
                failing = False
            delay = BACKOFF_INITIAL_S
            self.counts.delivered += 1
            self._current = None

    async def _write(self, data: bytes) -> None:
        if self.config.transport == "udp":
            if self._dgram is None:
                loop = asyncio.get_running_loop()
                self._dgram, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(self.config.host, self.port))
            self._dgram.sendto(data)  # no feedback: an ICMP refusal goes to the protocol, ignored
            return
        if self._conn is None:
            self._conn = await asyncio.wait_for(asyncio.open_connection(
                self.config.host, self.port, ssl=self._ssl,
                server_hostname=(self.config.server_name or self.config.host) if self._ssl else None),
                CONNECT_TIMEOUT_S)
        reader, writer = self._conn
        # a collector that went away has sent FIN: writing into that socket would "succeed"
        # and lose the message, so check before each write
        if reader.at_eof() or reader.exception() is not None or writer.is_closing():
            raise ConnectionResetError("the collector closed the connection")
        writer.write(data)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    async def _disconnect(self) -> None:
        if self._dgram is not None:
            self._dgram.close()
            self._dgram = None
        conn, self._conn = self._conn, None
        if conn is not None:
            writer = conn[1]
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
