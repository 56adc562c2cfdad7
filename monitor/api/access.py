"""Who may do what: API tokens with roles, per-token rate limits, and the append-only audit log.

- **Roles.** ``viewer`` reads streams, profiles, alerts, the websocket and /metrics;
  ``analyst`` also acknowledges and closes alerts; ``admin`` does everything, streams and
  exporters included; ``ingest`` only publishes WHIP streams, optionally one stream name.
  Each route names the permission it needs (``ROUTES``); ``ROLE_GRANTS`` says which roles
  hold it; docs/live.md's table is generated from both (``permission_table``).
- **Tokens** look like ``exp_<id>.<secret>``. Only the SHA-256 of the secret is stored (in
  the monitor's SQLite file), with the role, an optional stream, an optional expiry and the
  revocation time; they are created, listed and revoked with ``expose tokens``. A secret
  of 32 random bytes needs no slow hash: nobody can guess it from its SHA-256. The token of
  the quick start (``server.token`` / ``EXPOSE_TOKEN`` / the one generated at start) stays,
  as the admin token ``config``.
- **Rate limits.** A token bucket per token (``server.rate_limit_per_s``, burst
  ``server.rate_limit_burst``): over it, 429 with Retry-After.
- **Audit.** Every change made through the API or the CLI (streams, alerts, WHIP sessions,
  tokens, profiles) is one row of an append-only table (SQLite triggers refuse UPDATE and
  DELETE), with who, which role, what, on what, and when; the server also publishes each one
  as an ``audit`` event, so exporters and consoles get them like alerts.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from expose.monitor.errors import ExposeError

Role = Literal["viewer", "analyst", "admin", "ingest"]
ROLES: tuple[Role, ...] = ("viewer", "analyst", "admin", "ingest")
Permission = Literal["read", "triage", "admin", "ingest"]
ROLE_GRANTS: dict[Role, frozenset[Permission]] = {
    "viewer": frozenset({"read"}),
    "analyst": frozenset({"read", "triage"}),
    "admin": frozenset({"read", "triage", "admin", "ingest"}),
    "ingest": frozenset({"ingest"}),
}
# (method, path) -> the permission the route needs; every route of the app but /healthz, the
# dashboard's static files and the OpenAPI docs is here (tests/live/test_access.py checks)
ROUTES: dict[tuple[str, str], Permission] = {
    ("POST", "/whip/{stream}"): "ingest",
    ("DELETE", "/whip/{stream}/{session}"): "ingest",
    ("GET", "/api/streams"): "read",
    ("POST", "/api/streams"): "admin",
    ("GET", "/api/streams/{name}"): "read",
    ("GET", "/api/streams/{name}/health"): "read",
    ("DELETE", "/api/streams/{name}"): "admin",
    ("GET", "/api/profiles"): "read",
    ("GET", "/api/alerts"): "read",
    ("GET", "/api/alerts/{alert_id}"): "read",
    ("POST", "/api/alerts/{alert_id}/ack"): "triage",
    ("POST", "/api/alerts/{alert_id}/close"): "triage",
    ("GET", "/api/exporters"): "admin",
    ("GET", "/api/exporters/{name}/outbox"): "admin",
    ("POST", "/api/exporters/{name}/outbox/{entry_id}/retry"): "admin",
    ("GET", "/api/audit"): "admin",
    ("GET", "/metrics"): "read",
    ("WS", "/ws"): "read",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, stream TEXT, secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class AccessError(ExposeError):
    """A token that does not open the door: missing, malformed, unknown, revoked, expired (401)."""


class Forbidden(ExposeError):
    """A valid token whose role lacks the permission, or an ingest token for another stream (403)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a stored token, or the configured admin token (id ``config``)."""

    id: str
    name: str
    role: Role
    stream: str | None = None  # ingest: the only stream it may publish to

    def allows(self, permission: Permission) -> bool:
        return permission in ROLE_GRANTS[self.role]


CONFIG_PRINCIPAL = Principal("config", "admin (server.token)", "admin")


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    stream: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    role: str
    action: str
    target: str
    detail: dict[str, Any]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class AccessStore:
    """Tokens and the audit log, in the monitor's SQLite file (a connection of its own)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ExposeError(f"cannot open the monitor database {self.path}: {err}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- tokens ----------------------------------------------------------------------
    def create(self, name: str, role: Role, *, stream: str | None = None,
               expires_in_s: float | None = None) -> tuple[TokenInfo, str]:
        """A new token; returns it and its secret string (shown once, never stored)."""
        if role not in ROLES:
            raise ExposeError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        if stream is not None and role != "ingest":
            raise ExposeError("only an ingest token can be limited to a stream")
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        info = TokenInfo(token_id, name, role, stream, now, now + expires_in_s if expires_in_s else None, None)
        with self._lock:
            self._db.execute("INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                             (token_id, name, role, stream, _sha256(secret), now, info.expires_at))
        return info, f"exp_{token_id}.{secret}"

    def tokens(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._db.execute("SELECT id, name, role, stream, created_at, expires_at, revoked_at "
                                    "FROM api_tokens ORDER BY created_at").fetchall()
        return [TokenInfo(*r) for r in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        with self._lock:
            n = self._db.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                 (time.time(), token_id)).rowcount
        found = next((t for t in self.tokens() if t.id == token_id), None)
        if found is None:
            raise ExposeError(f"no token with id {token_id!r} (expose tokens list)")
        if n == 0:
            raise ExposeError(f"token {token_id} was already revoked")
        return found

    def authenticate(self, supplied: str | None, config_token: str) -> Principal:
        """The caller behind a bearer token; AccessError (401) with the reason otherwise."""
        if not supplied:
            raise AccessError("missing bearer token")
        if secrets.compare_digest(supplied.encode(), config_token.encode()):
            return CONFIG_PRINCIPAL
        if not supplied.startswith("exp_") or "." not in supplied:
            raise AccessError("wrong token")
        token_id, secret = supplied[4:].split(".", 1)
        with self._lock:
            row = self._db.execute("SELECT name, role, stream, secret_sha256, expires_at, revoked_at FROM api_tokens "
                                   "WHERE id = ?", (token_id,)).fetchone()
        if row is None or not secrets.compare_digest(row[3], _sha256(secret)):
            raise AccessError("wrong token")
        if row[5] is not None:
            raise AccessError("token revoked")
        if row[4] is not None and row[4] <= time.time():
            raise AccessError("token expired")
        return Principal(token_id, row[0], row[1], row[2])

    # ---- audit -----------------------------------------------------------------------
    def audit(self, who: Principal | str, action: str, target: str, **detail: Any) -> AuditEntry:
        actor, role = (who.name, who.role) if isinstance(who, Principal) else (who, "cli")
        ts = time.time()
        body = json.dumps(detail, separators=(",", ":"), default=str)
        with self._lock:
            cur = self._db.execute("INSERT INTO audit (ts, actor, role, action, target, detail) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (ts, actor, role, action, target, body))
        return AuditEntry(int(cur.lastrowid or 0), ts, actor, role, action, target, detail)

    def audit_log(self, *, since_id: int = 0, limit: int = 100) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute("SELECT id, ts, actor, role, action, target, detail FROM audit WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (since_id, limit)).fetchall()
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]


@dataclass
class RateLimiter:
    """A token bucket per principal: ``rate`` requests a second, bursts of ``burst``."""

    rate: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # id -> (tokens, at)

    def wait_s(self, key: str, now: float | None = None) -> float:
        """0 when the request may go (and takes a token); else seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def permission_table() -> str:
    """docs/live.md's table: each route and the roles that may call it."""
    lines = ["| permission | route | " + " | ".join(ROLES) + " |", "|---|---|" + "---|" * len(ROLES)]
    for (method, path), perm in ROUTES.items():
        cells = ["yes" if perm in ROLE_GRANTS[r] else "-" for r in ROLES]
        lines.append(f"| {perm} | `{method} {path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
