"""Composition root of `expose serve`: build every part once from the config, in order.

Read as a list of steps (Frigate's app.py): assets, model + scorer, profile store,
SQLite store, sinks, the monitor, the HTTP app, the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import uvicorn
from fastapi import FastAPI

from expose.exporters.base import AlertSink
from expose.exporters.registry import build_sinks
from expose.exporters.websocket import WebsocketHub
from expose.monitor.api.app import create_app
from expose.monitor.config import APP_NAME, Config, ServerSection
from expose.monitor.errors import ConfigError
from expose.monitor.features.face_model import resolve_face_model
from expose.monitor.live.monitor import LiveMonitor
from expose.monitor.live.runner import limit_native_threads, stream_settings
from expose.monitor.live.store import LiveStore
from expose.monitor.media.whip import limit_host_candidates
from expose.monitor.model.exam import LoadedModel, load_model
from expose.monitor.model.scorer import Scorer
from expose.profiles.crypto import configured_key
from expose.profiles.store import ProfileStore

log = logging.getLogger(__name__)

TOKEN_ENV = "EXPOSE_TOKEN"
TLS_KEY_PASSWORD_ENV = "EXPOSE_TLS_KEY_PASSWORD"


@dataclass(frozen=True)
class Token:
    value: str
    generated: bool  # nobody configured one: show it to the operator


def resolve_token(cfg: Config) -> Token:
    # the environment overrides the file, as for every EXPOSE_* value (monitor.config)
    if env := os.environ.get(TOKEN_ENV):
        return Token(env, False)
    if cfg.server.token is not None:
        return Token(cfg.server.token.get_secret_value(), False)
    return Token(secrets.token_urlsafe(18), True)


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key (server.tls_cert / tls_key), checked to load together."""

    cert: Path
    key: Path
    password: str | None = None


def resolve_tls(srv: ServerSection) -> TlsFiles | None:
    """TLS files of the config, loaded once now so that a missing file, a bad PEM or a key that
    does not match the certificate is a one-line ConfigError at start (not a uvicorn traceback)."""
    if srv.tls_cert is None or srv.tls_key is None:  # the config's validator wants both or neither
        return None
    password = os.environ.get(TLS_KEY_PASSWORD_ENV) or (
        srv.tls_key_password.get_secret_value() if srv.tls_key_password is not None else None)
    tls = TlsFiles(srv.tls_cert.expanduser(), srv.tls_key.expanduser(), password)
    check_tls(tls)
    return tls


def check_tls(tls: TlsFiles) -> None:
    for what, path in (("server.tls_cert", tls.cert), ("server.tls_key", tls.key)):
        if not path.is_file():
            raise ConfigError(f"{what}: no such file: {path}")
    asked = False

    def password() -> str:  # never the terminal prompt OpenSSL falls back to without one
        nonlocal asked
        asked = True
        return tls.password or ""

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert, tls.key, password)
    except ssl.SSLError as err:
        reason = err.reason or str(err)
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"server.tls_key {tls.key} is not the key of the certificate {tls.cert}") from None
        if asked and not tls.password:
            raise ConfigError(f"server.tls_key {tls.key} is encrypted: set server.tls_key_password or "
                              f"{TLS_KEY_PASSWORD_ENV}") from None
        if asked:
            raise ConfigError(f"cannot decrypt server.tls_key {tls.key} with the password given ({reason})") from None
        raise ConfigError(f"cannot load the TLS certificate {tls.cert} and key {tls.key}: not PEM files of a "
                          f"certificate and its key ({reason})") from None
    except OSError as err:
        raise ConfigError(f"cannot read the TLS certificate {tls.cert} or key {tls.key}: "
                          f"{err.strerror or err}") from None


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME)) / "monitor.sqlite3"


@dataclass
class Service:
    app: FastAPI
    monitor: LiveMonitor
    hub: WebsocketHub
    token: Token
    tls: TlsFiles | None = None  # serve HTTPS / wss (uvicorn_server's tls)


def _scoring(cfg: Config, model_path: Path | None, profiles_dir: Path | None,
             ) -> tuple[LoadedModel, Scorer, ProfileStore]:
    """The checkpoint with its decision, its scorer on the configured backend and device, and
    the profile store (encrypted when a key is configured): what a monitor or scorer node scores with."""
    from expose.monitor.model.backends import make_scorer
    from expose.monitor.model.exam import pick_device

    base = load_model(model_path if model_path is not None else cfg.model.path, cfg.model.decision, cfg.features)
    scorer = make_scorer(base, cfg.model.backend, pick_device(cfg.model.device), cache_dir=cfg.cache_dir)
    root = profiles_dir or cfg.profiles_dir
    return base, scorer, ProfileStore(root, key=configured_key(cfg.profiles_key_file, root))  # None: clear text


def build_monitor(cfg: Config, *, model_path: Path | None = None, profiles_dir: Path | None = None,
                  db_path: Path | str | None = None, sinks: Sequence[AlertSink] = ()) -> LiveMonitor:
    """Everything but HTTP: assets, model + scorer, profiles, store, sinks, the monitor."""
    bus = None
    if cfg.cluster.redis_url:  # first: no Redis, no point loading anything
        from expose.monitor.live.bus import Bus

        bus = Bus(cfg.cluster)
    limit_native_threads(cfg.live.native_threads)
    face_model = resolve_face_model(cfg.features.face_model, cfg.cache_dir)
    base, scorer, profiles = _scoring(cfg, model_path, profiles_dir)
    store = LiveStore(db_path or cfg.server.db_path or default_db_path())
    limit_host_candidates(cfg.server.ice_host_addresses)
    all_sinks = [*sinks, *build_sinks(cfg.exporters, store.path)]
    if bus is not None:  # a console: streams on ingest nodes, scoring on scorer nodes (live.cluster)
        from expose.monitor.live.cluster import ClusterMonitor

        return ClusterMonitor(cfg, scorer=scorer, base_model_sha256=base.sha256, face_model=face_model,
                              profiles=profiles, store=store, sinks=all_sinks, bus=bus)
    return LiveMonitor(cfg, scorer=scorer, base_model_sha256=base.sha256, face_model=face_model,
                       profiles=profiles, store=store, sinks=all_sinks)


def run_ingest_node(cfg: Config, *, model_path: Path | None = None, node: str | None = None) -> None:
    """`expose node ingest`: run the cluster's pulled streams until SIGINT / SIGTERM."""
    import asyncio
    import signal

    from expose.monitor.live import heap
    from expose.monitor.live.bus import Bus
    from expose.monitor.live.cluster import IngestNode

    bus = Bus(cfg.cluster)  # first: no Redis, no point loading anything
    if cfg.live.heap_limits:
        heap.limit_heap()
    limit_native_threads(cfg.live.native_threads)
    face_model = resolve_face_model(cfg.features.face_model, cfg.cache_dir)
    base = load_model(model_path if model_path is not None else cfg.model.path, cfg.model.decision, cfg.features)
    features, identity = stream_settings(cfg, base.model.cfg.window, base.decision is not None)
    ingest = IngestNode(cfg, bus, face_model=face_model, features=features, identity=identity, node=node)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await ingest.run(stop)

    try:
        asyncio.run(main())
    finally:
        bus.close()


def run_scorer_node(cfg: Config, *, model_path: Path | None = None, profiles_dir: Path | None = None,
                    node: str | None = None) -> None:
    """`expose node score`: score the cluster's windows until SIGINT / SIGTERM."""
    import signal
    import threading

    from expose.monitor.live.bus import Bus
    from expose.monitor.live.cluster import ScorerNode

    bus = Bus(cfg.cluster)
    limit_native_threads(cfg.live.native_threads)
    base, scorer, profiles = _scoring(cfg, model_path, profiles_dir)
    node_ = ScorerNode(cfg, bus, scorer, profiles, base_sha256=base.sha256, node=node)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node_.run(stop)
    finally:
        bus.close()


def build_service(cfg: Config, *, model_path: Path | None = None, profiles_dir: Path | None = None) -> Service:
    tls = resolve_tls(cfg.server)  # first: a bad certificate fails before the model loads
    hub = WebsocketHub(cfg.server.ws_queue)
    monitor = build_monitor(cfg, model_path=model_path, profiles_dir=profiles_dir, sinks=[hub])
    token = resolve_token(cfg)
    return Service(create_app(monitor, hub, token.value), monitor, hub, token, tls)


def uvicorn_server(app: FastAPI, host: str, port: int, tls: TlsFiles | None = None) -> uvicorn.Server:
    """``tls``: serve HTTPS (and so WHIP over HTTPS, the websocket as wss://) with those files."""
    # ws="websockets": the alert stream runs on the websockets stack (DESIGN.md)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, ws="websockets-sansio", log_level="warning",
                                         lifespan="on", timeout_graceful_shutdown=5,
                                         ssl_certfile=None if tls is None else tls.cert,
                                         ssl_keyfile=None if tls is None else tls.key,
                                         ssl_keyfile_password=None if tls is None else tls.password))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), so the caller knows the port before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
