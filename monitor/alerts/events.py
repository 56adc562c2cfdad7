"""Events: what the monitor tells consoles, as typed messages (pydantic models).

Every message is one flat JSON object: the envelope (``seq``, ``type``, ``stream``,
``ts``) and the fields of its kind. ``Event`` is the discriminated union of all of them
(on ``type``, then on ``action`` for alert and stream events); the websocket, the JSONL
sink and ``expose watch --json`` write ``event.model_dump_json()``, and
``EVENTS.validate_json`` reads any of them back.

The monitor decides a payload (``ScoreData``, ``AlertChange``, ``StreamPhase``, ...);
the store gives it a ``seq`` (monotonically increasing, assigned by SQLite) and keeps
its fields as the event's body, so a websocket client that reconnects with
``?since=SEQ`` gets exactly what it missed, rebuilt by ``event_from``. Heartbeats are
not stored: they carry the latest ``seq`` so a client sees it is up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from expose.monitor.alerts.policy import Alert, AlertStatus, StreamState
from expose.monitor.model.score import Status

EventType = Literal["score", "alert", "stream", "audit", "heartbeat"]
EVENT_TYPES: tuple[str, ...] = ("score", "alert", "stream", "audit", "heartbeat")
# the watchdog's phases (live.watchdog.Phase; alerts may not import live: a test checks they agree)
SourcePhase = Literal["connecting", "live", "down", "ended", "failed"]


class Message(BaseModel):
    """Base of every wire model: immutable, no unknown keys, every field in the output
    schema marked required (a field with a default is still always sent). Fields added
    later have a default, so that events and alerts stored before read back."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_serialization_defaults_required=True)


# ---- alerts as consoles see them ---------------------------------------------------------

class AlertSummary(Message):
    """An alert without its evidence (score series, thumbnail): per-window updates."""

    id: str = Field(description="Alert id (16 hex digits).")
    stream: str = Field(description="The stream it was raised on.")
    profile: str = Field(description="The claimed profile it was raised against.")
    threshold: float = Field(description="The smoothed-distance threshold in force when it opened.")
    opened_at: float = Field(description="When it opened (wall clock, epoch seconds).")
    t_start: float = Field(description="Stream seconds: start of the first window over the threshold.")
    t_end: float | None = Field(description="Stream seconds when the episode cleared; null while it lasts.")
    ended_at: float | None = Field(description="When the episode cleared (epoch seconds); null while it lasts.")
    peak_distance: float = Field(description="Highest window distance in the episode.")
    mean_distance: float = Field(description="Mean window distance in the episode.")
    n_windows: int = Field(ge=1, description="Scored windows in the episode.")
    reasons: dict[str, int] = Field(
        default_factory=dict, description="How many of the episode's windows each term drove (identity, sync, "
        "fit, face, voice, appearance); empty when scored without a decision.")
    explanation: str = Field("", description="The most frequent driver in an analyst's words, e.g. 'face does "
                             "not match the enrolled person'; empty when no window had a driver.")
    status: AlertStatus = Field(description="Lifecycle: open -> acknowledged -> closed.")
    acknowledged_by: str | None = Field(description="Who acknowledged it.")
    acknowledged_at: float | None = Field(description="When (epoch seconds).")
    closed_by: str | None = Field(description="Who closed it.")
    closed_at: float | None = Field(description="When (epoch seconds).")
    close_reason: str | None = Field(description="Why it was closed.")
    active: bool = Field(description="The episode is still going on (t_end is null).")

    @classmethod
    def of(cls, alert: Alert) -> AlertSummary:
        return cls.model_validate(alert.summary())


class AlertDetail(AlertSummary):
    """An alert with its evidence: what the REST API returns and what opened / ended /
    acknowledged / closed events carry."""

    scores: list[tuple[float, float]] = Field(
        description="Evidence: (stream t1, distance) of the episode's windows, at most 600.")
    thumbnail_jpeg: str | None = Field(description="Base64 JPEG of the newest frame with a face.")

    @classmethod
    def of(cls, alert: Alert) -> AlertDetail:
        return cls.model_validate(alert.to_dict())


# ---- payloads: what the monitor decides, before the store gives it a seq -----------------

class ScoreData(Message):
    """One window of a stream, scored or insufficient."""

    event_type: ClassVar[EventType] = "score"
    profile: str | None = Field(description="The claimed profile; null: none claimed.")
    t0: float = Field(description="Window start, stream seconds.")
    t1: float = Field(description="Window end, stream seconds.")
    status: Status = Field(description="insufficient: too little face or speech to score (distance etc. are null).")
    distance: float | None = Field(description="The window's distance from the claimed profile.")
    smoothed: float | None = Field(description="Mean distance of the last `alerts.smoothing` scored windows.")
    threshold: float | None = Field(description="The threshold the smoothed distance was compared with.")
    z: float | None = Field(description="(distance - profile's centre) / the model's genuine spread.")
    identity: float | None = Field(description="The score's identity term (monitor/model/scorer.py).")
    sync: float | None = Field(description="The score's audio-visual sync term.")
    fit: float | None = Field(description="The score's fit term: a raw log error, compare it with the "
                              "profile's fit_mean.")
    face: float | None = Field(
        None, description="Face verification: distance of the window's faces to the enrolled face, T-normalised "
        "against other people's (about 0: as far as a stranger; negative: closer). Null: too few faces sampled, "
        "no face enrolled, or no decision.")
    voice: float | None = Field(
        None, description="Voice verification: distance of the window's voice to the enrolled voice, "
        "T-normalised like `face`. Null: too little speech, no voice enrolled, or no decision.")
    appearance: float | None = Field(
        None, description="DiffFake's appearance check, by the decision's appearance score: how unlike real "
        "same-person pairs the differences between the window's faces and the enrolled ones are (pair: the pair "
        "model's mean negative log-likelihood), or the appearance network's real-vs-blended logit on the faces "
        "(head; head_centred: less the enrolled faces' mean). Higher: looks manipulated. Null: the decision has "
        "no appearance term, or too few faces.")
    terms: dict[str, float] = Field(
        default_factory=dict, description="Each fused term standardised on genuine footage from other "
        "recordings (0: typical of genuine; higher: less like the person); empty without a decision.")
    driver: str | None = Field(None, description="The term with the most evidence of an attack (the decision's "
                               "evidence lines; without them, the largest standardised value). Null when "
                               "insufficient or scored without a decision.")
    explanation: str = Field("", description="The driver in an analyst's words, e.g. 'voice does not match the "
                             "enrolled person'; empty when there is no driver.")
    face_ratio: float = Field(description="Share of the window's frames with a face.")
    speech_ratio: float = Field(description="Share of the window with speech.")
    reason: str = Field(description="Why insufficient, e.g. 'face on 0% of frames (< 60%)'; empty when scored.")
    state: StreamState = Field(description="The stream's state after this window.")
    latency_s: float = Field(description="Seconds from the window being ready to its score.")
    frame_latency_s: float | None = Field(
        None, description="Seconds from the arrival of the video frame that completed the window (taken from "
        "the source or the WebRTC track) to this score: what a console waits for, featuring included. Null for "
        "windows of a file read offline.")
    alert_id: str | None = Field(description="The alert in progress on this stream, if any.")


class AlertChange(Message):
    """An alert opened, ended, was acknowledged or closed: the whole alert."""

    event_type: ClassVar[EventType] = "alert"
    action: Literal["opened", "ended", "acknowledged", "closed"] = Field(description="What happened to it.")
    alert: AlertDetail = Field(description="The alert after the change.")


class AlertUpdate(Message):
    """An episode goes on: sent once per window, without the evidence again."""

    event_type: ClassVar[EventType] = "alert"
    action: Literal["updated"] = Field(description="The episode took one more window.")
    alert: AlertSummary = Field(description="Peak, mean and window count so far.")


class StreamAdded(Message):
    """A stream was added (from the config, the API, or a WHIP publisher on a new name)."""

    event_type: ClassVar[EventType] = "stream"
    action: Literal["added"] = Field(description="The stream exists from now on.")
    url: str | None = Field(description="What it pulls; null: a WHIP stream.")
    profile: str | None = Field(description="Its claimed profile.")


class StreamRemoved(Message):
    """A stream was removed (DELETE /api/streams/{name})."""

    event_type: ClassVar[EventType] = "stream"
    action: Literal["removed"] = Field(description="The stream is gone.")


class StreamPhase(Message):
    """The source's watchdog phase changed."""

    event_type: ClassVar[EventType] = "stream"
    action: Literal["phase"] = Field(description="The source changed phase.")
    phase: SourcePhase = Field(description="The new phase.")
    reason: str = Field(description="Why down or failed; empty otherwise.")
    reconnects: int = Field(ge=0, description="Restarts within the watchdog's window.")


class StreamPublishing(Message):
    """A WHIP publisher started a session on the stream."""

    event_type: ClassVar[EventType] = "stream"
    action: Literal["publishing"] = Field(description="A publisher is on.")
    session: str = Field(description="The WHIP session id (the last part of its Location).")
    profile: str = Field(description="The profile the publisher claims.")


class StreamUnpublished(Message):
    """A WHIP session ended (DELETE, or the publisher went away)."""

    event_type: ClassVar[EventType] = "stream"
    action: Literal["unpublished"] = Field(description="The publisher is gone.")
    session: str = Field(description="The WHIP session id that ended.")


class AuditData(Message):
    """A change someone made (through the API or the CLI): a row of the append-only audit log
    (api.access), published as it is written."""

    event_type: ClassVar[EventType] = "audit"
    audit_id: int = Field(ge=1, description="The audit row's id (increasing).")
    actor: str = Field(description="Who: the token's name, 'admin (server.token)', or cli:USER.")
    role: str = Field(description="The actor's role (viewer, analyst, admin, ingest; cli for the command line).")
    action: str = Field(description="What, e.g. stream.add, alert.acknowledge, token.revoke, profile.delete.")
    target: str = Field(description="On what: a stream, alert, token or profile name / id.")
    detail: dict[str, Any] = Field(description="The request's particulars (never a secret).")


EventPayload = (ScoreData | AlertChange | AlertUpdate | StreamAdded | StreamRemoved | StreamPhase
                | StreamPublishing | StreamUnpublished | AuditData)


# ---- events: a payload with its envelope -------------------------------------------------

class Envelope(Message):
    """The fields every message has."""

    seq: int = Field(ge=0, description="Event sequence number (SQLite AUTOINCREMENT): increases with every "
                     "event, across the monitor and its restarts; a heartbeat's is the newest one sent.")
    type: EventType = Field(description="The kind of message.")
    stream: str | None = Field(description="The stream it is about; null for heartbeats.")
    ts: float = Field(description="Wall clock, epoch seconds.")
    origin: str | None = Field(None, description="In a cluster (cluster.redis_url): the event's entry id in the "
                               "cluster's Redis events stream, the same on every console (`?since=` takes it); "
                               "null on one node and for heartbeats.")

    @property
    def data(self) -> dict[str, Any]:
        """The fields other than the envelope's, as JSON values (for sinks that print them)."""
        return self.model_dump(mode="json", exclude=set(Envelope.model_fields))

    def to_json(self) -> str:
        return self.model_dump_json()


class ScoreEvent(ScoreData, Envelope):
    type: Literal["score"] = "score"
    stream: str


class AlertChangeEvent(AlertChange, Envelope):
    type: Literal["alert"] = "alert"
    stream: str


class AlertUpdateEvent(AlertUpdate, Envelope):
    type: Literal["alert"] = "alert"
    stream: str


class StreamAddedEvent(StreamAdded, Envelope):
    type: Literal["stream"] = "stream"
    stream: str


class StreamRemovedEvent(StreamRemoved, Envelope):
    type: Literal["stream"] = "stream"
    stream: str


class StreamPhaseEvent(StreamPhase, Envelope):
    type: Literal["stream"] = "stream"
    stream: str


class StreamPublishingEvent(StreamPublishing, Envelope):
    type: Literal["stream"] = "stream"
    stream: str


class StreamUnpublishedEvent(StreamUnpublished, Envelope):
    type: Literal["stream"] = "stream"
    stream: str


class AuditEvent(AuditData, Envelope):
    type: Literal["audit"] = "audit"
    stream: str | None = Field(None, description="The stream the change was about; null for others.")


class HeartbeatEvent(Envelope):
    """Sent right after connecting and every `server.heartbeat_s`; not stored."""

    type: Literal["heartbeat"] = "heartbeat"
    stream: None = Field(None, description="Always null.")
    streams: dict[str, StreamState] = Field(description="The state of every stream, by name.")


AlertEvent = Annotated[AlertChangeEvent | AlertUpdateEvent, Field(discriminator="action")]
StreamEvent = Annotated[StreamAddedEvent | StreamRemovedEvent | StreamPhaseEvent | StreamPublishingEvent
                        | StreamUnpublishedEvent, Field(discriminator="action")]
Event = Annotated[ScoreEvent | AlertEvent | StreamEvent | AuditEvent | HeartbeatEvent, Field(discriminator="type")]
EVENTS: TypeAdapter[Event] = TypeAdapter(Event)


def event_from(seq: int, type: str, stream: str | None, ts: float, data: Mapping[str, Any],
               origin: str | None = None) -> Event:
    """The typed event from its stored parts (a store row, or a payload just stored)."""
    return EVENTS.validate_python({"seq": seq, "type": type, "stream": stream, "ts": ts, "origin": origin, **data})
