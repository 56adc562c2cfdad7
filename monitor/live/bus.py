"""The Redis side of a cluster (live.cluster): key names, the wire format of windows and
events, and the few Redis calls each role makes. Everything that crosses Redis is checked on
the way in: a window or event that does not decode is set aside (``{prefix}:windows:dead``)
with the reason, never retried forever and never crashing the reader.

Keys under ``{prefix}`` (cluster.prefix):

==========================  ======  ===========================================================
``windows``                 stream  one entry per window: ``meta`` (JSON) + ``arrays`` (.npz,
                                    no pickles); consumer group ``scorers``
``windows:dead``            stream  entries that did not decode, with ``why``
``events``                  stream  one entry per event: ``type``, ``stream``, ``ts``, ``data``
                                    (JSON), and on alert events the whole alert (``alert``)
``streams``                 hash    stream name -> StreamConfig JSON: the pulled streams to run
``assign``                  hash    stream name -> the ingest node running it
``node:{id}``               string  an ingest node's heartbeat (expires after node_ttl_s)
``health`` / ``thumb``      hash    stream name -> StreamHealth JSON / newest face thumbnail
``clock``                   hash    stream name -> {"t1", "at"}: where its stream clock is
``policy:{stream}``         string  the stream's alert-policy state and last scored t1
``stats``                   hash    counters (stale windows, dead letters)
==========================  ======  ===========================================================
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import redis

from expose.monitor.alerts.policy import PolicyState
from expose.monitor.config import ClusterSection, StreamConfig
from expose.monitor.errors import ExposeError
from expose.monitor.features.windows import Window

GROUP = "scorers"
_ARRAYS = ("expression", "audio", "face_mask", "speech", "observed", "face_ids", "face_id_rows")


class ClusterError(ExposeError):
    """Redis cannot be reached or refused a call."""


class BadEntry(ValueError):
    """A Redis entry that is not what the reader expects (its reason is the message)."""


# ---- wire format -----------------------------------------------------------------------

def encode_window(w: Window, profile: str | None) -> dict[str, bytes]:
    meta = {"stream": w.stream, "t0": w.t0, "t1": w.t1, "profile": profile, "voice_id_row": w.voice_id_row,
            "ready_at": w.ready_at}
    buf = io.BytesIO()
    arrays = {k: getattr(w, k) for k in _ARRAYS}
    if w.voice_id is not None:
        arrays["voice_id"] = w.voice_id
    if w.appearance.shape[1]:  # zero-width (off) is what a Window defaults to
        arrays["appearance"] = w.appearance
    np.savez(buf, **arrays)
    return {"meta": json.dumps(meta).encode(), "arrays": buf.getvalue()}


def decode_window(fields: Mapping[bytes, bytes]) -> tuple[Window, str | None]:
    """The window and its claimed profile; raises BadEntry on anything malformed."""
    try:
        meta = json.loads(fields[b"meta"])
        with np.load(io.BytesIO(fields[b"arrays"]), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise BadEntry(f"window arrays missing: {', '.join(missing)}")
        profile = meta.get("profile")
        if profile is not None and not isinstance(profile, str):
            raise BadEntry("window profile is not a string")
        w = Window(stream=str(meta["stream"]), t0=float(meta["t0"]), t1=float(meta["t1"]),
                   voice_id=arrays.pop("voice_id", None), voice_id_row=meta.get("voice_id_row"),
                   ready_at=meta.get("ready_at"), **arrays)
        return w, profile
    except BadEntry:
        raise
    except (KeyError, TypeError, ValueError, OSError, EOFError, AttributeError, zipfile.BadZipFile) as err:
        # json, the .npz reader (a .npy has no files: AttributeError) and Window's own checks
        raise BadEntry(f"window does not decode: {type(err).__name__}: {err}") from None


def event_fields(type: str, stream: str | None, data: dict[str, Any], alert: dict[str, Any] | None = None,
                 ts: float | None = None) -> dict[str, str]:
    fields = {"type": type, "stream": stream or "", "ts": repr(time.time() if ts is None else ts),
              "data": json.dumps(data, separators=(",", ":"), allow_nan=False)}
    if alert is not None:
        fields["alert"] = json.dumps(alert, separators=(",", ":"), allow_nan=False)
    return fields


@dataclasses.dataclass(frozen=True)
class BusEvent:
    id: str  # the Redis entry id
    type: str
    stream: str | None
    ts: float
    data: dict[str, Any]
    alert: dict[str, Any] | None


def decode_event(entry_id: bytes, fields: Mapping[bytes, bytes]) -> BusEvent:
    try:
        alert = fields.get(b"alert")
        return BusEvent(entry_id.decode(), fields[b"type"].decode(), fields[b"stream"].decode() or None,
                        float(fields[b"ts"]), json.loads(fields[b"data"]),
                        json.loads(alert) if alert is not None else None)
    except (KeyError, ValueError, UnicodeDecodeError) as err:
        raise BadEntry(f"event does not decode: {type(err).__name__}: {err}") from None


# ---- the bus --------------------------------------------------------------------------

class Bus:
    """One Redis connection pool (thread-safe) and the cluster's keys."""

    def __init__(self, section: ClusterSection) -> None:
        if not section.redis_url:
            raise ClusterError("cluster.redis_url is not set")
        self.section = section
        p = section.prefix
        self.k_windows, self.k_dead, self.k_events = f"{p}:windows", f"{p}:windows:dead", f"{p}:events"
        self.k_streams, self.k_assign, self.k_health = f"{p}:streams", f"{p}:assign", f"{p}:health"
        self.k_thumb, self.k_clock, self.k_stats = f"{p}:thumb", f"{p}:clock", f"{p}:stats"
        self._node_prefix = f"{p}:node:"
        try:
            # Any: redis-py types replies for either decode_responses; this client never decodes
            # (windows are binary), so every reply is bytes
            self.r: Any = redis.Redis.from_url(section.redis_url, socket_connect_timeout=5, socket_timeout=30,
                                          health_check_interval=30)
            self.r.ping()
        except (redis.RedisError, ValueError) as err:
            raise ClusterError(f"cannot reach Redis at {section.redis_url}: {err}") from None

    def close(self) -> None:
        self.r.close()

    def policy_key(self, stream: str) -> str:
        return f"{self.section.prefix}:policy:{stream}"

    # ---- stream registry and assignment ------------------------------------------------
    def register_stream(self, spec: StreamConfig) -> None:
        self.r.hset(self.k_streams, spec.name, spec.model_dump_json())

    def unregister_stream(self, name: str) -> None:
        pipe = self.r.pipeline()
        for key in (self.k_streams, self.k_assign, self.k_health, self.k_thumb):
            pipe.hdel(key, name)
        pipe.delete(self.policy_key(name))  # a stream added again under the name starts a fresh policy
        pipe.execute()

    def reset_policy(self, name: str) -> None:
        """A new WHIP session on ``name``: its stream clock starts at 0 again, so does its policy."""
        self.r.delete(self.policy_key(name))

    def streams(self) -> dict[str, StreamConfig]:
        out: dict[str, StreamConfig] = {}
        for name, body in self.r.hgetall(self.k_streams).items():
            try:
                out[name.decode()] = StreamConfig.model_validate_json(body)
            except ValueError:
                continue  # a bad registration must not stop the others (its registrar validated it)
        return out

    def assignments(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.k_assign).items()}

    def claim_stream(self, name: str, expected: str | None, node: str) -> bool:
        """Take ``name`` over for ``node`` if it is still assigned to ``expected`` (None: to
        nobody): two nodes racing for a dead node's stream, one wins."""
        return self._swap_assignment(name, expected, node)

    def release_stream(self, name: str, node: str) -> bool:
        """Give ``name`` back (unassigned) if ``node`` still runs it: for another node to take."""
        return self._swap_assignment(name, node, None)

    def _swap_assignment(self, name: str, expected: str | None, new: str | None) -> bool:
        """Compare-and-set on ``name``'s assignment (None: unassigned); False if it was not
        ``expected`` or changed meanwhile."""
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(self.k_assign)
                now = pipe.hget(self.k_assign, name)
                if (now.decode() if now is not None else None) != expected:
                    return False
                pipe.multi()
                if new is None:
                    pipe.hdel(self.k_assign, name)
                else:
                    pipe.hset(self.k_assign, name, new)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def heartbeat(self, node: str, info: dict[str, Any]) -> None:
        self.r.set(self._node_prefix + node, json.dumps(info), px=int(self.section.node_ttl_s * 1000))

    def drop_node(self, node: str) -> None:
        self.r.delete(self._node_prefix + node)

    def alive_nodes(self) -> set[str]:
        n = len(self._node_prefix)
        return {k.decode()[n:] for k in self.r.scan_iter(match=self._node_prefix + "*", count=1000)}

    # ---- what ingest nodes report --------------------------------------------------------
    def put_window(self, window: Window, profile: str | None) -> str:
        entry_id: bytes = self.r.xadd(self.k_windows, encode_window(window, profile),
                                      maxlen=self.section.windows_maxlen, approximate=True)
        self.r.hset(self.k_clock, window.stream, json.dumps({"t1": window.t1, "at": time.time()}))
        return entry_id.decode()

    def clock(self, stream: str) -> float:
        """Where a stream taken over goes on: its last window's end, plus the time since."""
        raw = self.r.hget(self.k_clock, stream)
        if raw is None:
            return 0.0
        c = json.loads(raw)
        return float(c["t1"]) + max(0.0, time.time() - float(c["at"]))

    def report(self, runners: Mapping[str, Any]) -> None:
        """The health (with the frames taken) and newest thumbnail of the streams this process
        runs (StreamRunners, by name): what consoles show and scorers' alerts carry."""
        health = {n: dataclasses.asdict(r.health()) | {"frames": r.frames_received} for n, r in runners.items()}
        thumbs = {n: t for n, r in runners.items() if (t := r.thumbnail()) is not None}
        self.put_health(health, thumbs)

    def put_health(self, health: dict[str, dict[str, Any]], thumbs: dict[str, str]) -> None:
        pipe = self.r.pipeline()
        if health:
            pipe.hset(self.k_health, mapping={k: json.dumps(v) for k, v in health.items()})
        if thumbs:
            pipe.hset(self.k_thumb, mapping=thumbs)
        pipe.execute()

    def healths(self) -> dict[str, dict[str, Any]]:
        return {k.decode(): json.loads(v) for k, v in self.r.hgetall(self.k_health).items()}

    def thumbnail(self, stream: str) -> str | None:
        raw = self.r.hget(self.k_thumb, stream)
        return raw.decode() if raw is not None else None

    # ---- events ----------------------------------------------------------------------
    def put_event(self, type: str, stream: str | None, data: dict[str, Any],
                  alert: dict[str, Any] | None = None) -> None:
        self.r.xadd(self.k_events, event_fields(type, stream, data, alert),
                    maxlen=self.section.events_maxlen, approximate=True)

    def read_events(self, after: str, *, count: int = 500, block_ms: int = 1000) -> list[tuple[bytes, Any]]:
        got = self.r.xread({self.k_events: after}, count=count, block=block_ms)
        return list(got[0][1]) if got else []

    # ---- the scorers' group ---------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.k_windows, GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def read_windows(self, consumer: str, *, count: int, block_ms: int) -> list[tuple[bytes, Any]]:
        """Windows of dead consumers idle past claim_idle_s first (XAUTOCLAIM), then new ones."""
        idle_ms = int(self.section.claim_idle_s * 1000)
        claimed = self.r.xautoclaim(self.k_windows, GROUP, consumer, idle_ms, start_id="0-0", count=count)
        entries = [e for e in claimed[1] if e and e[1]]  # trimmed entries come back empty
        if entries:
            return entries
        got = self.r.xreadgroup(GROUP, consumer, {self.k_windows: ">"}, count=count, block=block_ms)
        return list(got[0][1]) if got else []

    def dead_letter(self, entry_id: bytes, fields: Mapping[bytes, bytes], why: str) -> None:
        pipe = self.r.pipeline()
        pipe.xadd(self.k_dead, {**fields, b"why": why.encode(), b"id": entry_id}, maxlen=10_000, approximate=True)
        pipe.xack(self.k_windows, GROUP, entry_id)
        pipe.hincrby(self.k_stats, "dead_windows", 1)
        pipe.execute()

    def pending(self) -> int:
        info = self.r.xpending(self.k_windows, GROUP)
        return int(info["pending"])

    # ---- policy state --------------------------------------------------------------------
    @staticmethod
    def decode_policy(raw: bytes | None) -> tuple[PolicyState, float]:
        """The state and the last scored window's t1 (-inf: none yet)."""
        if raw is None:
            return PolicyState(), float("-inf")
        d = json.loads(raw)
        return PolicyState.from_dict(d["state"]), float(d["last_t1"])

    @staticmethod
    def encode_policy(state: PolicyState, last_t1: float) -> str:
        return json.dumps({"state": state.to_dict(), "last_t1": last_t1}, allow_nan=False)
