"""The one typed configuration tree, loaded once at the composition root.

Sources, in increasing priority: embedded defaults, a TOML file, then ``EXPOSE_*``
environment variables for the values people set per machine (paths, secrets).
Every default works on one machine out of the box.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError, model_validator

from expose.monitor.errors import ConfigError

APP_NAME = "expose"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureConfig(_Strict):
    face_model: Path | None = Field(
        None,
        description="Path to MediaPipe's face_landmarker.task. Unset: env EXPOSE_FACE_MODEL, "
        "then the user cache, then a verified download from the official URL.",
    )
    max_side: int = Field(
        640, ge=128, le=4096,
        description="Frames are downscaled so that their longer side is at most this many "
        "pixels before landmarking (speed; faces in talking-head footage stay large enough).",
    )
    num_faces: int = Field(
        3, ge=1, le=8, description="Faces the landmarker looks for; the primary one is kept."
    )
    min_face_confidence: float = Field(
        0.5, gt=0.0, lt=1.0, description="Face detection / presence confidence threshold."
    )
    face_backend: Literal["mediapipe", "onnx"] = Field(
        "mediapipe",
        description="What runs the face landmarker, offline and live: mediapipe (its own graph per stream, "
        "the reference), or onnx (its networks converted to ONNX, on onnxruntime, cropping as MediaPipe does: "
        "features.onnx_face; blendshapes within ~0.001 of MediaPipe's, bench/face_parity.py; live, one model "
        "per process batched across its streams).",
    )
    face_crop: Literal["detect", "track"] = Field(
        "detect",
        description="With face_backend = onnx, where the landmark network looks: detect (the detector on every "
        "frame, as MediaPipe with num_faces > 1: its values), or track (the previous frame's face, the detector "
        "only when it is lost, as MediaPipe with num_faces = 1: ~0.02 blendshape MAE from MediaPipe, less CPU).",
    )
    face_id_every: int = Field(
        25, ge=0, le=250,
        description="Embed the primary face for face verification on every N-th tick of the 25 fps "
        "timeline (25: one face a second, ~80 ms on one CPU core, 2-3 per scored window); 0 disables "
        "face descriptors.",
    )
    face_embedder: str = Field(
        "dlib-resnet", description="Face verification embedder, by its registry name (features.embedding)."
    )
    face_id_models: Path | None = Field(
        None,
        description="Folder holding the face embedder's model files. Unset: the installed "
        "face-recognition-models package.",
    )
    voice_every: int = Field(
        25, ge=0, le=250,
        description="Embed the preceding speech for voice verification on every N-th tick (25: once a "
        "second); 0 disables voice embeddings.",
    )
    voice_context_s: float = Field(
        6.0, ge=2.0, le=15.0,
        description="Seconds of audio before each voice tick whose speech (VAD-marked ticks) is embedded; "
        "too little speech in it gives an 'insufficient' (NaN) embedding.",
    )
    voice_embedder: str = Field(
        "ge2e", description="Voice verification embedder, by its registry name (features.embedding)."
    )
    appearance_model: str = Field(
        "none",
        description="DiffFake's appearance embedding (is the face real?), computed on the same faces as "
        "the face descriptors: none (off), auto (the weights shipped with expose: "
        "monitor/assets/APPEARANCE_CARD.md), or a weights file from `expose train-appearance`. A decision "
        "with the appearance term needs it on, with the weights it was fitted with; model.decision auto "
        "takes the shipped one with the term when this is auto.",
    )
    voice_model: Path | None = Field(
        None,
        description="Voice embedder weights file. Unset: env EXPOSE_VOICE_MODEL, then the installed "
        "resemblyzer package's pretrained.pt.",
    )


STARTER_MODEL = Path(__file__).parent / "assets" / "exam-small.safetensors"


class ModelSection(_Strict):
    path: Path = Field(
        STARTER_MODEL,
        description="EXAM base model checkpoint (env EXPOSE_MODEL); default: the starter model "
        "shipped with expose (see monitor/assets/MODEL_CARD.md).",
    )
    device: str = Field("auto", description="auto (GPU when present), cpu, or cuda[:N].")
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="What runs the scorer's network call (the same scores within 1e-4; monitor/model/backends.py): "
        "torch, or onnxruntime (the denoiser exported to ONNX, into cache_dir on first use, seconds; "
        "`expose export-onnx` writes it as a file). auto: onnxruntime on a GPU when its CUDA provider is "
        "installed (the gpu extra: onnxruntime-gpu, with IOBinding), else torch there (bf16, CUDA graphs); on "
        "the CPU torch, the faster there as measured (README Performance: bench/scorer_backends.py; onnxruntime "
        "was no faster, and with its memory arena on it keeps gigabytes resident) and exactly the numbers "
        "profiles were calibrated with.",
    )
    decision: str = Field(
        "none",
        description="How the score's terms are fused: none (the motion distance alone; the default this "
        "release, see the README), auto (face and voice verification, cohort normalisation and the fused, "
        "explained decision shipped for the starter model; with features.appearance_model on the shipped "
        "appearance weights, the shipped decision that adds DiffFake's appearance term; none for other "
        "models), or a decision file's path "
        "(bench/fit_decision.py). Profiles must be enrolled with the decision they are scored with.",
    )


class ServerSection(_Strict):
    host: str = Field("127.0.0.1", description="Address `expose serve` listens on (0.0.0.0: all interfaces).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    token: SecretStr | None = Field(
        None, description="Bearer token for WHIP, the REST API and the websocket (env EXPOSE_TOKEN). "
        "Unset: a random token is generated at start and printed.")
    db_path: Path | None = Field(
        None, description="SQLite file for alerts, events and the stream registry "
        "(default: monitor.sqlite3 in the user data dir).")
    max_sdp_bytes: int = Field(65536, ge=1024, description="Largest WHIP offer accepted (413 above).")
    heartbeat_s: float = Field(10.0, gt=0, description="Seconds between websocket heartbeats.")
    rate_limit_per_s: float = Field(20.0, ge=0, description="Requests a second each API token may make on average "
                                    "(a token bucket per token; over it: 429 with Retry-After); 0: no limit.")
    rate_limit_burst: int = Field(100, ge=1, description="Requests a token may make at once before the rate "
                                  "limit applies (the bucket's size).")
    ws_queue: int = Field(1000, ge=10, description="Events buffered per websocket client before it is "
                          "disconnected as too slow (it resumes with ?since=SEQ).")
    events_keep: int = Field(200_000, ge=1000, description="Events kept in the database for replay.")
    ice_host_addresses: list[str] | None = Field(
        None, description="Restrict WebRTC host candidates to these local addresses (e.g. [\"127.0.0.1\"] "
        "for loopback-only use); unset: every non-loopback interface.")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body accepted on any route "
                                "(413 above; WHIP offers are also held to max_sdp_bytes).")
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain, the server's first) to serve HTTPS, WHIP and the websocket "
        "(wss://) over TLS; with tls_key. Unset: plain HTTP (loopback, or behind a TLS-terminating reverse proxy).")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted tls_key (env EXPOSE_TLS_KEY_PASSWORD).")
    cors_origins: list[Annotated[str, StringConstraints(pattern=r"^https?://[^/\s]+$")]] = Field(
        [], description="Browser origins (scheme://host[:port], no path) allowed to call the API from another "
        "site (CORS: GET, POST, DELETE with Authorization). Empty: none; the dashboard is same-origin.")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both server.tls_cert and server.tls_key, or neither")
        return self


class LiveSection(_Strict):
    hop_s: float = Field(1.0, gt=0, le=10, description="Seconds between consecutive windows of a stream.")
    max_batch: int = Field(64, ge=1, description="Most windows scored in one batched call.")
    batch_linger_s: float = Field(0.02, ge=0, le=1, description="Wait this long for more streams' windows "
                                  "before scoring a batch.")
    native_threads: int = Field(1, ge=0, description="Threads of each native thread pool in the monitor "
                                "process: torch's intra-op pool (the scorer) and the OpenBLAS pools of numpy and "
                                "OpenCV. 1: the stream featurizers keep every core busy, and an idle pool thread "
                                "spins waiting for work (2 cores, 2 streams with the decision: 98 % of real time "
                                "at 1, 79-81 % with torch at 1 and OpenBLAS at 2). 0: the libraries' defaults, "
                                "one per core (for a GPU or a scorer-only process).")
    heap_limits: bool = Field(True, description="Cap glibc's malloc arenas at 2 and map blocks over 256 KiB on "
                              "their own (live.heap): RSS then stays flat over hours (30-min soak, 3 streams: +1.3 % "
                              "over the second half; without: +14 %). Costs throughput on a small machine (2 cores, "
                              "the decision with embeddings: 2 streams in one process at 94 % of real time without, "
                              "44 % with; README Performance). false: the faster, growing heap.")
    workers: int = Field(0, ge=0, le=64, description="Worker processes for the pulled streams' ingest and "
                         "features (live.workers): one process uses about one core for features, so N workers let "
                         "N cores work; scoring, alerts and the API stay in the server process. 0: everything in "
                         "one process (the quick start). WHIP streams always run in the server process.")
    queue_items: int = Field(128, ge=8, description="Media items queued per stream; beyond, the oldest "
                             "video frames are dropped and counted.")
    audio_context_s: float = Field(0.5, ge=0, le=5, description="Audio before each window that the speech "
                                   "detector and phone decoder also hear.")
    max_buffer_s: float = Field(20.0, ge=5, description="Per-stream feature buffer (oldest dropped beyond).")
    stall_after_s: float = Field(5.0, gt=0, description="No frame this long: the source is restarted.")
    open_timeout_s: float = Field(15.0, gt=0, description="Connect / read timeout of pull sources.")
    backoff_initial_s: float = Field(1.0, gt=0, description="First reconnect delay (doubles each failure).")
    backoff_max_s: float = Field(30.0, gt=0, description="Cap on the reconnect delay.")
    max_restarts: int = Field(10, ge=0, description="Restarts allowed within restart_window_s before the "
                              "stream is marked failed.")
    restart_window_s: float = Field(600.0, gt=0, description="Window for max_restarts.")


class ClusterSection(_Strict):
    """Many nodes over Redis Streams (monitor/live/cluster.py, docs/live.md "Many nodes"). Unset
    ``redis_url``: one node, no Redis."""

    redis_url: str | None = Field(None, description="Redis server of the cluster (redis:// or rediss://, "
                                  "env EXPOSE_REDIS_URL). Set: `expose serve` is a console whose pulled streams run "
                                  "on `expose node ingest` processes and whose windows are scored by `expose node "
                                  "score` processes, all sharing this Redis. Unset: one node, no Redis.")
    prefix: str = Field("expose", pattern=r"^[A-Za-z0-9_.-]{1,32}$",
                        description="Key prefix: clusters sharing one Redis use different prefixes.")
    heartbeat_s: float = Field(1.0, gt=0, le=10, description="How often an ingest node renews its heartbeat "
                               "and looks for streams to run.")
    node_ttl_s: float = Field(5.0, gt=0, le=120, description="An ingest node silent this long is dead: another "
                              "takes its streams over.")
    claim_idle_s: float = Field(10.0, gt=0, le=600, description="A window read by a scorer but not acknowledged "
                                "for this long (its scorer died) is claimed by another scorer (XAUTOCLAIM).")
    windows_maxlen: int = Field(100_000, ge=1000, description="Windows kept in the windows stream (approximate "
                                "trim): a bound on what a cluster without scorers buffers.")
    events_maxlen: int = Field(1_000_000, ge=1000, description="Events kept in the events stream (approximate "
                               "trim); each console keeps its own history in server.db_path.")


class AlertSection(_Strict):
    smoothing: int = Field(8, ge=1, le=16, description="Scored windows averaged into the smoothed distance "
                           "(the profile's threshold for that mean is lower than for one window).")
    raise_k: int = Field(3, ge=1, description="Raise an alert when k of the last n smoothed windows are over.")
    raise_n: int = Field(5, ge=1, description="n of the k-of-n rule.")
    clear_m: int = Field(3, ge=1, description="End the episode after m smoothed windows in a row under.")


class StreamConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Stream name (URL-safe).")
    url: str | None = Field(None, description="File or FFmpeg URL to pull (rtsp://, http(s)://); unset: a "
                            "WHIP stream that a client publishes to /whip/NAME.")
    profile: str | None = Field(None, description="Claimed profile: who the person on screen says they are.")
    realtime: bool = Field(True, description="Files: play at their own pace, as a live stream would.")
    loop: bool = Field(False, description="Files: start again at the end.")


Severity = Literal["info", "low", "medium", "high", "critical"]
EventKind = Literal["score", "alert", "stream", "audit"]
BodyFormat = Literal["expose", "ocsf"]


class _ExporterBase(_Strict):
    """What every exporter shares: a name and the filter of what it forwards
    (``exporters.base.EventFilter``; each event's severity is ``exporters.base.severity_of``)."""

    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Label in logs, metrics and the API (default: KIND-N, N its place in the list).")
    types: list[EventKind] = Field(["alert"], description="Event types forwarded.")
    min_severity: Severity = Field(
        "medium", description="Least severity forwarded: alert opened = high; ended, acknowledged, closed and a "
        "failed stream = medium; an alert's per-window update and a stream going down = low; the rest = info.")
    streams: list[str] | None = Field(None, description="Only these streams' events (unset: every stream).")


class JsonlExporterConfig(_ExporterBase):
    kind: Literal["jsonl"] = "jsonl"
    path: Path = Field(description="File that events are appended to, one JSON object per line.")
    min_severity: Severity = Field("info", description="Least severity written (default: everything of `types`).")
    format: BodyFormat = Field("expose", description="expose: the event as the websocket sends it; ocsf: an OCSF "
                               "Detection Finding (alert events only; docs/siem.md).")


class WebhookExporterConfig(_ExporterBase):
    kind: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://", description="Where each event is POSTed (JSON body).")
    secret: SecretStr = Field(description="Standard Webhooks signing secret, whsec_ + base64 (see `expose "
                              "webhook-secret`); the receiver verifies the webhook-signature header with it.")
    format: BodyFormat = Field("expose", description="Body: expose (the event) or ocsf (OCSF Detection Finding).")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Per delivery attempt.")
    max_attempts: int = Field(12, ge=1, le=100, description="Attempts before an entry is dead-lettered.")
    backoff_initial_s: float = Field(1.0, gt=0, description="Delay before the first retry; doubles per attempt, "
                                     "with full jitter.")
    backoff_max_s: float = Field(600.0, gt=0, description="Cap on the delay between attempts.")
    ca_file: Path | None = Field(None, description="CA bundle to verify an https receiver (default: the system's).")


class SyslogExporterConfig(_ExporterBase):
    kind: Literal["syslog"] = "syslog"
    host: str = Field(description="Syslog collector address.")
    port: int | None = Field(None, ge=1, le=65535, description="Default 514 (udp, tcp) or 6514 (tls).")
    transport: Literal["udp", "tcp", "tls"] = Field("udp", description="udp (RFC 5426), tcp (RFC 6587 octet "
                                                    "counting) or tls (RFC 5425).")
    facility: int = Field(10, ge=0, le=23, description="Syslog facility (10: authpriv, security messages).")
    app_name: str = Field("expose", pattern=r"^[!-~]{1,48}$", description="RFC 5424 APP-NAME.")
    ca_file: Path | None = Field(None, description="tls: CA bundle that signed the collector's certificate.")
    cert_file: Path | None = Field(None, description="tls: client certificate, when the collector asks for one.")
    key_file: Path | None = Field(None, description="tls: the client certificate's key.")
    server_name: str | None = Field(None, description="tls: name checked in the collector's certificate "
                                    "(default: host).")


class SplunkHecExporterConfig(_ExporterBase):
    kind: Literal["splunk_hec"] = "splunk_hec"
    url: str = Field(pattern=r"^https?://", description="HEC base URL, e.g. https://splunk:8088 (events go to "
                     "/services/collector/event).")
    token: SecretStr = Field(description="HEC token (header Authorization: Splunk TOKEN).")
    index: str | None = Field(None, description="Splunk index (default: the token's).")
    source: str = Field("expose", description="Splunk source field.")
    sourcetype: str = Field("expose:event", description="Splunk sourcetype field.")
    batch_size: int = Field(50, ge=1, le=10_000, description="Events per POST at most.")
    flush_s: float = Field(2.0, gt=0, le=60, description="Longest an event waits for its batch to fill.")
    max_buffer: int = Field(10_000, ge=10, description="Events held while Splunk is unreachable; beyond, the "
                            "oldest are dropped and counted.")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Per POST.")
    ca_file: Path | None = Field(None, description="CA bundle to verify an https HEC endpoint.")


ExporterConfig = Annotated[
    JsonlExporterConfig | WebhookExporterConfig | SyslogExporterConfig | SplunkHecExporterConfig,
    Field(discriminator="kind")]


class Config(_Strict):
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)),
        description="Feature cache and downloaded assets (env EXPOSE_CACHE).",
    )
    profiles_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)) / "profiles",
        description="Profile store (env EXPOSE_PROFILES).",
    )
    profiles_key_file: Path | None = Field(
        None,
        description="File holding the 32-byte key profiles are encrypted with at rest (AES-256-GCM; env "
        "EXPOSE_PROFILES_KEY_FILE; env EXPOSE_PROFILES_KEY, the key itself, overrides it). Make one with "
        "`expose profiles keygen --out FILE`; it must not lie inside profiles_dir. Unset: profiles are "
        "stored in clear text.",
    )
    server: ServerSection = Field(default_factory=ServerSection)
    live: LiveSection = Field(default_factory=LiveSection)
    alerts: AlertSection = Field(default_factory=AlertSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    streams: list[StreamConfig] = Field(default_factory=list, description="Streams watched from the start.")
    exporters: list[ExporterConfig] = Field(default_factory=list, description="Extra alert sinks.")


def load_config(path: Path | None = None) -> Config:
    """Read the TOML file (if any), then apply environment overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    if cache := os.environ.get("EXPOSE_CACHE"):
        data["cache_dir"] = cache
    if profiles := os.environ.get("EXPOSE_PROFILES"):
        data["profiles_dir"] = profiles
    if key_file := os.environ.get("EXPOSE_PROFILES_KEY_FILE"):
        data["profiles_key_file"] = key_file
    if redis_url := os.environ.get("EXPOSE_REDIS_URL"):
        data.setdefault("cluster", {})["redis_url"] = redis_url
    if model := os.environ.get("EXPOSE_MODEL"):
        data.setdefault("model", {})["path"] = model
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")  # a model validator's own message
        raise ConfigError(f"invalid config value {where}: {msg}") from None
