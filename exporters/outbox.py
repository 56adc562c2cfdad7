"""The durable outbox of the webhook sink: one row per delivery, in the monitor's SQLite file.

A row is written (with the sink's cursor, in one transaction) before any attempt, so a
delivery survives a crash or a restart: at-least-once, and the row id is the webhook id the
receiver de-duplicates on. States: pending -> delivered, or pending -> dead (too many
attempts, or refused for good); a dead row can be put back to pending (``retry``).

It opens its own connection to the monitor's file (WAL: readers and writers of the two
connections do not block each other for long) and keeps the same durability setting as the
store: ``synchronous=NORMAL``, a committed row survives a crash of the process (not
necessarily a power cut).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

OutboxState = Literal["pending", "delivered", "dead"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, exporter TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, last_error TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (exporter, state, next_at);
CREATE TABLE IF NOT EXISTS exporter_cursor (exporter TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: str  # the webhook-id header: msg_<exporter>_<seq>
    exporter: str
    seq: int
    body: str
    state: OutboxState
    attempts: int
    next_at: float  # epoch seconds: not attempted before
    created_at: float
    updated_at: float
    last_error: str


_COLS = "id, exporter, seq, body, state, attempts, next_at, created_at, updated_at, last_error"


class Outbox:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def cursor(self, exporter: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT seq FROM exporter_cursor WHERE exporter = ?", (exporter,)).fetchone()
        return int(row[0]) if row else None

    def set_cursor(self, exporter: str, seq: int) -> None:
        with self._lock:
            self._set_cursor(exporter, seq)

    def _set_cursor(self, exporter: str, seq: int) -> None:
        self._db.execute("INSERT INTO exporter_cursor VALUES (?, ?) ON CONFLICT(exporter) DO UPDATE SET "
                         "seq = MAX(seq, excluded.seq)", (exporter, seq))

    def add(self, exporter: str, seq: int, body: str) -> str:
        """Queue a delivery for event ``seq`` and move the cursor to it, in one transaction.
        Adding the same (exporter, seq) again is a no-op (a replay after a crash)."""
        msg_id = f"msg_{exporter}_{seq}"
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(f"INSERT OR IGNORE INTO outbox ({_COLS}) "
                                 "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, '')",
                                 (msg_id, exporter, seq, body, now, now, now))
                self._set_cursor(exporter, seq)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return msg_id

    def due(self, exporter: str, now: float, limit: int = 50) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM outbox WHERE exporter = ? AND state = 'pending' AND "
                                    "next_at <= ? ORDER BY seq LIMIT ?", (exporter, now, limit)).fetchall()
        return [OutboxEntry(*r) for r in rows]

    def next_due(self, exporter: str) -> float | None:
        """When the earliest pending entry may be attempted; None: nothing pending."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM outbox WHERE exporter = ? AND state = 'pending'",
                                   (exporter,)).fetchone()
        return None if row[0] is None else float(row[0])

    def delivered(self, msg_id: str) -> None:
        self._update(msg_id, "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, updated_at = ?, "
                     "last_error = '' WHERE id = ?", time.time())

    def failed(self, msg_id: str, error: str, *, next_at: float | None) -> None:
        """An attempt failed: try again at ``next_at``, or never (None: dead-lettered)."""
        now = time.time()
        with self._lock:
            if next_at is None:
                self._db.execute("UPDATE outbox SET state = 'dead', attempts = attempts + 1, updated_at = ?, "
                                 "last_error = ? WHERE id = ?", (now, error[:500], msg_id))
            else:
                self._db.execute("UPDATE outbox SET attempts = attempts + 1, next_at = ?, updated_at = ?, "
                                 "last_error = ? WHERE id = ?", (next_at, now, error[:500], msg_id))

    def retry(self, exporter: str, msg_id: str) -> bool:
        """Put a dead entry back in the queue (attempts start again); False if there is none."""
        with self._lock:
            cur = self._db.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, updated_at = ? "
                                   "WHERE id = ? AND exporter = ? AND state = 'dead'",
                                   (time.time(), time.time(), msg_id, exporter))
            return cur.rowcount > 0

    def entries(self, exporter: str, state: OutboxState | None = None, limit: int = 100) -> list[OutboxEntry]:
        sql = f"SELECT {_COLS} FROM outbox WHERE exporter = ?" + (" AND state = ?" if state else "")
        args: tuple[object, ...] = (exporter, state) if state else (exporter,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [OutboxEntry(*r) for r in rows]

    def counts(self, exporter: str) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox WHERE exporter = ? GROUP BY state",
                                    (exporter,)).fetchall()
        return {"pending": 0, "delivered": 0, "dead": 0} | {r[0]: int(r[1]) for r in rows}

    def prune_delivered(self, exporter: str, older_than: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM outbox WHERE exporter = ? AND state = 'delivered' AND "
                                    "updated_at < ?", (exporter, older_than)).rowcount

    def _update(self, msg_id: str, sql: str, now: float) -> None:
        with self._lock:
            self._db.execute(sql, (now, msg_id))
