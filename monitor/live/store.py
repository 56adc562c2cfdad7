"""SQLite store of the live monitor: events (with ``seq``), alerts, the stream registry.

One file (WAL mode), so alert history, the event log that websocket clients resume
from, and the streams added at run time all survive a restart. Calls are short and
serialised by a lock; the server calls them from the event loop (a local SQLite write
is well under a millisecond).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expose.monitor.alerts.events import Event, EventType, event_from
from expose.monitor.alerts.policy import Alert
from expose.monitor.errors import ExposeError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL, stream TEXT, ts REAL NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, stream TEXT NOT NULL, profile TEXT NOT NULL, status TEXT NOT NULL,
    opened_at REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (opened_at);
CREATE TABLE IF NOT EXISTS streams (name TEXT PRIMARY KEY, body TEXT NOT NULL, added_at REAL NOT NULL);
-- a cluster console's events: the Redis entry id (ms-n) each was read from (live.cluster)
CREATE TABLE IF NOT EXISTS followed (seq INTEGER PRIMARY KEY, ms INTEGER NOT NULL, n INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS followed_by_origin ON followed (ms, n);
"""


CLUSTER_CURSOR = "cluster_events_cursor"  # meta key: the last Redis event id a cluster console stored


def parse_origin(origin: str) -> tuple[int, int]:
    """A Redis stream entry id "MS-N" as two integers (ValueError if it is not one)."""
    ms, sep, n = origin.partition("-")
    if not sep or not ms.isdigit() or not n.isdigit() or len(ms) > 15 or len(n) > 15:
        raise ValueError(f"not a Redis entry id: {origin!r}")
    return int(ms), int(n)


class StoreError(ExposeError):
    """The monitor's SQLite file cannot be opened or is of another schema."""


@dataclass(frozen=True)
class StoredEvent:
    """An event as the store keeps it: the envelope and the body as JSON values."""

    seq: int
    type: EventType
    stream: str | None
    ts: float  # wall clock, epoch seconds
    data: dict[str, Any]
    origin: str | None = None  # a cluster console's: the Redis entry id it was read from

    def event(self) -> Event:
        """The typed message (raises pydantic.ValidationError on a body of another shape)."""
        return event_from(self.seq, self.type, self.stream, self.ts, self.data, self.origin)


class LiveStore:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open the monitor database {self.path}: {err}") from None
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: database schema {row[0]}, this expose uses {SCHEMA_VERSION}")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- events ----------------------------------------------------------------------
    def append_event(self, type: EventType, stream: str | None, data: dict[str, Any],
                     ts: float | None = None) -> StoredEvent:
        ts = time.time() if ts is None else ts
        body = json.dumps(data, separators=(",", ":"), allow_nan=False)
        with self._lock:
            cur = self._db.execute("INSERT INTO events (type, stream, ts, data) VALUES (?, ?, ?, ?)",
                                   (type, stream, ts, body))
            seq = int(cur.lastrowid or 0)
        return StoredEvent(seq, type, stream, ts, data)

    def append_followed(self, type: EventType, stream: str | None, data: dict[str, Any], ts: float,
                        cursor_key: str, cursor: str) -> StoredEvent:
        """An event read from elsewhere (a cluster's Redis events stream), stored together with
        the position it was read at (one transaction): after a crash the console reads on from
        the last stored one, never storing an event twice."""
        body = json.dumps(data, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute("INSERT INTO events (type, stream, ts, data) VALUES (?, ?, ?, ?)",
                                       (type, stream, ts, body))
                ms, n = parse_origin(cursor)
                self._db.execute("INSERT INTO followed (seq, ms, n) VALUES (?, ?, ?)", (cur.lastrowid, ms, n))
                self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                                 (cursor_key, cursor))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return StoredEvent(int(cur.lastrowid or 0), type, stream, ts, data, cursor)

    def seq_at_origin(self, origin: str) -> int:
        """The last event stored from at or before Redis entry id ``origin`` (0: none), so that
        ``?since=ID`` replays what followed it; raises ValueError on a malformed id."""
        ms, n = parse_origin(origin)
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM followed WHERE ms < ? OR (ms = ? AND n <= ?)",
                                   (ms, ms, n)).fetchone()
        return int(row[0] or 0)

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def events_since(self, seq: int, limit: int = 10_000) -> list[StoredEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT e.seq, e.type, e.stream, e.ts, e.data, f.ms, f.n FROM events e LEFT JOIN followed f "
                "ON f.seq = e.seq WHERE e.seq > ? ORDER BY e.seq LIMIT ?", (seq, limit)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], json.loads(r[4]), f"{r[5]}-{r[6]}" if r[5] is not None else None)
                for r in rows]

    def events_after(self, seq: int, limit: int = 10_000) -> list[Event]:
        """The typed events after ``seq`` (what a durable sink replays at start); a stored body
        that no longer reads back is skipped with a warning."""
        out: list[Event] = []
        for e in self.events_since(seq, limit):
            try:
                out.append(e.event())
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                log.warning("event %d does not read back, skipped: %s", e.seq, err)
        return out

    def last_seq(self) -> int:
        with self._lock:
            # AUTOINCREMENT keeps seq increasing across pruning and restarts
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return int(row[0]) if row else 0

    def prune_events(self, keep: int) -> int:
        """Keep the newest ``keep`` events; returns how many were deleted."""
        with self._lock:
            cur = self._db.execute("DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (keep,))
            self._db.execute("DELETE FROM followed WHERE seq < (SELECT MIN(seq) FROM events)")
            return cur.rowcount

    # ---- alerts ----------------------------------------------------------------------
    def put_alert(self, alert: Alert) -> None:
        body = json.dumps(alert.to_dict(), separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._db.execute(
                "INSERT INTO alerts (id, stream, profile, status, opened_at, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, body=excluded.body",
                (alert.id, alert.stream, alert.profile, alert.status, alert.opened_at, body))

    def get_alert(self, alert_id: str) -> Alert | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return Alert.from_dict(json.loads(row[0])) if row else None

    def list_alerts(self, *, status: str | None = None, stream: str | None = None, profile: str | None = None,
                    since: float | None = None, limit: int = 100) -> list[Alert]:
        where: list[str] = []
        args: list[object] = []
        for col, val in (("status", status), ("stream", stream), ("profile", profile)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("opened_at >= ?")
            args.append(since)
        sql = "SELECT body FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY opened_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [Alert.from_dict(json.loads(r[0])) for r in rows]

    def active_alerts(self) -> list[Alert]:
        """Alerts whose episode has not ended (t_end null), oldest first: open when the last
        process stopped or died."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM alerts WHERE json_extract(body, '$.t_end') IS NULL "
                                    "ORDER BY opened_at").fetchall()
        return [Alert.from_dict(json.loads(r[0])) for r in rows]

    # ---- stream registry -------------------------------------------------------------
    def put_stream(self, name: str, spec: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT INTO streams (name, body, added_at) VALUES (?, ?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET body=excluded.body",
                             (name, json.dumps(spec), time.time()))

    def delete_stream(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM streams WHERE name = ?", (name,)).rowcount > 0

    def list_streams(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, body FROM streams ORDER BY added_at").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}
