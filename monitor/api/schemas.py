"""What the REST API takes and returns: the pydantic models behind /openapi.json.

Request bodies refuse unknown keys. Responses are built from the monitor's values
(StreamView, StreamHealth, Alert, Profile) by the ``of`` constructors; alerts are the
same models the websocket carries (``alerts.events``). docs/live.md's field tables are
generated from these and the websocket models (``api.reference``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from expose.exporters.base import AlertSink, DeliveryCounts
from expose.exporters.outbox import OutboxEntry, OutboxState
from expose.monitor.alerts.events import AlertDetail, AlertSummary, Message, ScoreData
from expose.monitor.alerts.policy import StreamState
from expose.monitor.api.access import AuditEntry
from expose.monitor.live.monitor import StreamView
from expose.monitor.live.runner import SourceKind, StreamHealth
from expose.monitor.live.scoring import ScoringLoop
from expose.monitor.live.watchdog import Phase
from expose.profiles.store import Profile

__all__ = ["AckBody", "AlertDetail", "AlertSummary", "AuditRecord", "CloseBody", "DeliveryCountsInfo", "ErrorBody",
           "ExporterInfo", "Health", "IdleHealth", "OutboxEntryInfo", "ProfileInfo", "ProfileUnreadable",
           "ScoringStats", "StreamHealthInfo", "StreamInfo"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- requests ----------------------------------------------------------------------------

class AckBody(_Body):
    """Acknowledge an open alert."""

    by: str = Field(min_length=1, max_length=200, description="Who acknowledges (operator name or id).")


class CloseBody(_Body):
    """Close an alert that is not closed yet."""

    by: str = Field(min_length=1, max_length=200, description="Who closes the alert.")
    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S",
                        description="Why: e.g. 'confirmed impostor', 'false alarm'.")


# ---- responses ---------------------------------------------------------------------------

class ErrorBody(Message):
    """Any 4xx but 422 (whose detail is FastAPI's list of validation errors)."""

    detail: str = Field(description="What was wrong, in one line.")


class StreamHealthInfo(Message):
    """The source of a stream that runs: its watchdog phase and throughput."""

    name: str = Field(description="Stream name.")
    kind: SourceKind = Field(description="pull: the monitor reads a URL or file; whip: a WebRTC publisher.")
    url: str | None = Field(description="What it pulls; null for WHIP.")
    phase: Phase = Field(description="Watchdog phase.")
    stalled: bool = Field(description="No frame for `live.stall_after_s`.")
    reason: str = Field(description="Why down or failed; empty otherwise.")
    last_frame_age_s: float | None = Field(description="Seconds since the last video frame; null before the first.")
    fps: float = Field(description="Video frames per second over the last 5 s.")
    reconnects: int = Field(description="Restarts within the watchdog's window.")
    dropped_frames: int = Field(description="Video frames dropped by the bounded queue (features fell behind).")
    skipped_windows: int = Field(description="Windows skipped by the feature buffer.")
    behind: bool = Field(description="Frames dropped or windows skipped in the last 10 s: the machine is not "
                         "keeping up with this stream.")
    windows: int = Field(description="Windows cut so far.")
    uptime_s: float = Field(description="Seconds since the runner started.")

    @classmethod
    def of(cls, health: StreamHealth) -> StreamHealthInfo:
        return cls.model_validate(dataclasses.asdict(health))


class IdleHealth(Message):
    """A WHIP stream name that no publisher is on."""

    name: str = Field(description="Stream name.")
    phase: Literal["idle"] = Field(description="No source runs.")


class StreamInfo(Message):
    """A stream: what it watches, whom it checks, how it is doing."""

    name: str = Field(description="Stream name.")
    url: str | None = Field(description="What it pulls; null: a WHIP stream.")
    profile: str | None = Field(description="The claimed profile.")
    state: StreamState = Field(description="Alert-policy state after the last window.")
    health: StreamHealthInfo | None = Field(description="The source's health; null while none runs "
                                            "(a WHIP stream without a publisher).")
    whip_session: str | None = Field(description="The WHIP session id while a publisher is on.")
    last_score: ScoreData | None = Field(description="The last window's score (the websocket `score` "
                                         "message without its envelope).")

    @classmethod
    def of(cls, view: StreamView) -> StreamInfo:
        return cls(name=view.name, url=view.url, profile=view.profile, state=view.state,
                   health=StreamHealthInfo.of(view.health) if view.health is not None else None,
                   whip_session=view.whip_session, last_score=view.last_score)


class ProfileInfo(Message):
    """An enrolled profile."""

    name: str = Field(description="Profile name.")
    created: str = Field(description="When it was enrolled (ISO 8601).")
    threshold: float = Field(description="Single-window distance threshold from its calibration.")
    references: int = Field(description="Reference clips it was enrolled from.")
    base_model: str = Field(description="First 12 hex digits of the base model's SHA-256 it was enrolled with.")
    compatible: bool = Field(description="Enrolled with the model and decision this monitor runs (else it "
                             "cannot be claimed).")
    face_references: int = Field(description="Enrolled face descriptors (0: no face term).")
    voice_references: int = Field(description="Enrolled voice embeddings (0: no voice term).")
    appearance_references: int = Field(0, description="Enrolled appearance embeddings (0: no appearance term).")

    @classmethod
    def of(cls, profile: Profile, base_sha256: str, decision_sha256: str | None = None) -> ProfileInfo:
        return cls(name=profile.name, created=profile.created, threshold=profile.calibration.threshold,
                   references=len(profile.references), base_model=profile.base_model_sha256[:12],
                   compatible=profile.base_model_sha256 == base_sha256
                   and profile.decision_sha256 == decision_sha256,
                   face_references=len(profile.identity.face), voice_references=len(profile.identity.voice),
                   appearance_references=len(profile.identity.appearance))


class ProfileUnreadable(Message):
    """A profile folder that cannot be loaded."""

    name: str = Field(description="Profile name.")
    error: str = Field(description="Why it cannot be loaded.")


class ScoringStats(Message):
    """The scoring loop shared by every stream."""

    pending: int = Field(description="Windows waiting to be scored.")
    batches: int = Field(description="Batched scorer calls so far.")
    dropped: int = Field(description="Windows dropped because the queue was full.")
    last_batch: int = Field(description="Windows in the last batch.")
    last_latency_s: float | None = Field(description="Seconds the last batch took; null before the first.")

    @classmethod
    def of(cls, loop: ScoringLoop) -> ScoringStats:
        return cls(pending=loop.pending, batches=loop.batches, dropped=loop.dropped,
                   last_batch=loop.last_batch_size, last_latency_s=loop.last_latency_s)


class Health(Message):
    """Liveness of the process."""

    status: Literal["ok"] = Field(description="Always ok: an answer means the process is up.")
    version: str = Field(description="expose version.")
    streams: int = Field(description="Streams known to the monitor.")
    scoring: ScoringStats = Field(description="Scoring-loop counters.")
    websocket_clients: int = Field(description="Connected websocket clients.")


class DeliveryCountsInfo(Message):
    """What an exporter has done since the monitor started."""

    delivered: int = Field(description="Events the peer accepted.")
    retried: int = Field(description="Attempts that failed and were (or will be) tried again.")
    dead_lettered: int = Field(description="Given up: too many attempts, or refused for good (a 4xx).")
    dropped: int = Field(description="Lost without a try: a bounded buffer overflowed.")

    @classmethod
    def of(cls, counts: DeliveryCounts) -> DeliveryCountsInfo:
        return cls.model_validate(dataclasses.asdict(counts))


class ExporterInfo(Message):
    """One configured exporter (the websocket hub is not one)."""

    name: str = Field(description="Its label (config `name`, default KIND-N).")
    kind: str = Field(description="jsonl, webhook, syslog or splunk_hec.")
    counts: DeliveryCountsInfo | None = Field(description="Since start; null for a sink that talks to no peer.")
    outbox: dict[OutboxState, int] | None = Field(
        description="Durable outbox rows by state (webhook only; delivered rows are kept 7 days).")

    @classmethod
    def of(cls, sink: AlertSink, kind: str) -> ExporterInfo:
        counts = getattr(sink, "counts", None)
        outbox = getattr(sink, "outbox", None)
        return cls(name=sink.name, kind=kind, counts=DeliveryCountsInfo.of(counts) if counts is not None else None,
                   outbox=outbox.counts(sink.name) if outbox is not None else None)


class OutboxEntryInfo(Message):
    """One webhook delivery in the durable outbox."""

    id: str = Field(description="The webhook-id header (the receiver's idempotency key).")
    seq: int = Field(description="The event's seq.")
    state: OutboxState = Field(description="pending, delivered, or dead (dead-lettered: no more attempts).")
    attempts: int = Field(description="Attempts made.")
    next_at: float = Field(description="Pending: not attempted before this time (epoch seconds).")
    created_at: float = Field(description="When the event was queued (epoch seconds).")
    updated_at: float = Field(description="Last change (epoch seconds).")
    last_error: str = Field(description="Why the last attempt failed; empty after a success.")

    @classmethod
    def of(cls, e: OutboxEntry) -> OutboxEntryInfo:
        return cls.model_validate({k: v for k, v in dataclasses.asdict(e).items() if k in cls.model_fields})


class AuditRecord(Message):
    """One row of the append-only audit log."""

    id: int = Field(description="Increasing id (GET /api/audit?since=ID pages after it).")
    ts: float = Field(description="When (epoch seconds).")
    actor: str = Field(description="Who: the token's name, 'admin (server.token)', or cli:USER.")
    role: str = Field(description="The actor's role; cli for the command line.")
    action: str = Field(description="What: stream.add, stream.remove, alert.acknowledge, alert.close, whip.publish, "
                        "whip.end, exporter.retry, denied, token.create, token.revoke, profile.enroll, "
                        "profile.delete.")
    target: str = Field(description="On what: a stream, alert, token, profile or route.")
    detail: dict[str, Any] = Field(description="The request's particulars (never a secret).")

    @classmethod
    def of(cls, e: AuditEntry) -> AuditRecord:
        return cls.model_validate(dataclasses.asdict(e))
