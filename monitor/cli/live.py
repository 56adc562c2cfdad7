"""`expose serve` and `expose watch`: the live monitor's commands (registered by cli.main)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from expose.monitor.alerts.events import Event
from expose.monitor.cli.app import (
    ConfigOpt,
    ModelOpt,
    ProfilesOpt,
    app,
    cli_actor,
    err_console,
    load_cli_config,
    out,
)
from expose.monitor.config import Config, StreamConfig
from expose.monitor.errors import ExposeError

if TYPE_CHECKING:
    from expose.monitor.live.monitor import LiveMonitor

log = logging.getLogger(__name__)


def _with_stream(cfg: Config, source: str | None, claimed: str | None, name: str, loop: bool) -> Config:
    if source is None:
        if claimed is not None:
            raise ExposeError("--as needs --watch SOURCE")
        return cfg
    if claimed is None:
        raise ExposeError("--watch needs --as PROFILE (who the person on screen claims to be)")
    spec = StreamConfig(name=name, url=source, profile=claimed, loop=loop)
    return cfg.model_copy(update={"streams": [s for s in cfg.streams if s.name != name] + [spec]})


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address (default: server.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port, 8000; 0: any free port).")] = None,
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    watch_source: Annotated[str | None, typer.Option(
        "--watch", help="Also watch this file or URL from the start (more: streams in the config).")] = None,
    claimed: Annotated[str | None, typer.Option("--as", help="Profile claimed on the --watch stream.")] = None,
    name: Annotated[str, typer.Option(help="Stream name of the --watch stream.")] = "main",
    loop: Annotated[bool, typer.Option("--loop", help="Play a --watch file again at its end.")] = False,
) -> None:
    """Run the live monitor: WHIP ingest, pulled streams, REST API, websocket alerts, dashboard."""
    from expose.monitor.api.serve import bind, build_service, uvicorn_server

    cfg = _with_stream(load_cli_config(config), watch_source, claimed, name, loop)
    srv = cfg.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    cfg = cfg.model_copy(update={"server": srv})
    service = build_service(cfg, model_path=model, profiles_dir=profiles)
    if warning := service.monitor.profiles.unencrypted_warning():  # README: Profiles are biometric data
        err_console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
    try:
        sock = bind(srv.host, srv.port)
    except OSError as err:
        raise ExposeError(f"cannot listen on {srv.host}:{srv.port} ({err.strerror})") from None
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if srv.host in ("0.0.0.0", "::") else srv.host
    base = f"{'https' if service.tls else 'http'}://{shown}:{bound}"
    token = service.token
    out.print(f"expose live monitor on {base}  (API docs: {base}/docs)")
    if token.generated:
        out.print(f"dashboard: {base}/dashboard/?token={token.value}")
        out.print("token generated for this run; set server.token or EXPOSE_TOKEN to keep one", style="dim")
    else:
        out.print(f"dashboard: {base}/dashboard/  (token: server.token / EXPOSE_TOKEN)")
    out.print(f"WHIP ingest: POST {base}/whip/NAME?profile=PROFILE  (Authorization: Bearer TOKEN)")
    out.print(f"events: {'wss' if service.tls else 'ws'}://{shown}:{bound}/ws?token=TOKEN")
    server = uvicorn_server(service.app, srv.host, bound, service.tls)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised Ctrl-C
        err_console.print("expose serve: stopped")
    finally:
        sock.close()


class _TerminalView:
    """An AlertSink that prints one line per score and every alert change."""

    name = "terminal"

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    async def send(self, event: Event) -> None:
        if self.as_json:
            if event.type in ("score", "alert"):
                print(event.to_json(), flush=True)
            return
        d = event.data
        if event.type == "score":
            if d["distance"] is None:
                line = f"[dim]{d['t0']:7.2f}-{d['t1']:7.2f} s  insufficient: {escape(d['reason'])}[/]"
            else:
                thr = d["threshold"]
                over = thr is not None and d["smoothed"] > thr
                colour = {"alert": "red", "suspect": "yellow"}.get(d["state"], "green")
                line = (f"{d['t0']:7.2f}-{d['t1']:7.2f} s  distance {d['distance']:+.4f}  smoothed "
                        f"{d['smoothed']:+.4f} {'>' if over else '<='} {thr:.4f}  [{colour}]{d['state'].upper()}[/]"
                        f"  [dim]({d['latency_s'] * 1000:.0f} ms)[/]")
                if d["state"] in ("suspect", "alert") and d["explanation"]:
                    line += f"  {escape(d['explanation'])}"
            out.print(line, highlight=False)
        elif event.type == "alert" and d["action"] != "updated":  # the score lines show an episode going on
            a = d["alert"]
            out.print(f"[bold red]ALERT {d['action']}[/] {a['id']} stream {escape(a['stream'])} as "
                      f"{escape(a['profile'])}: peak {a['peak_distance']:+.4f}, mean {a['mean_distance']:+.4f} "
                      f"over {a['n_windows']} windows" + (f": {escape(a['explanation'])}" if a["explanation"] else ""),
                      highlight=False)
        elif event.type == "stream" and d.get("action") == "phase":
            out.print(f"[dim]stream {escape(event.stream or '')}: {d['phase']} {escape(d.get('reason', ''))}[/]")

    async def close(self) -> None:
        pass


@app.command()
def watch(
    source: Annotated[str, typer.Argument(help="File or URL (rtsp://, http(s)://) to watch.")],
    claimed: Annotated[str, typer.Option("--as", help="Profile the person on screen claims to be.")],
    name: Annotated[str, typer.Option(help="Stream name shown in the output.")] = "watch",
    realtime: Annotated[bool, typer.Option(help="Files: play at their own pace (--no-realtime: as fast as "
                                           "the scorer goes).")] = True,
    seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
    profiles: ProfilesOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Watch one source in the terminal: a line per window with its identity distance and state."""
    from expose.monitor.api.serve import build_monitor
    from expose.monitor.media.reader import MediaReader, is_network_url

    cfg = load_cli_config(config)
    if not is_network_url(source):
        with MediaReader(source):  # a missing or unreadable file is an error now, not after retries
            pass
    monitor = build_monitor(cfg.model_copy(update={"streams": []}), model_path=model, profiles_dir=profiles,
                            db_path=":memory:", sinks=[_TerminalView(as_json)])
    spec = StreamConfig(name=name, url=source, profile=claimed, realtime=realtime)

    async def run() -> None:
        await monitor.start()
        try:
            monitor.add_stream(spec, persist=False)
            t_end = time.monotonic() + seconds if seconds is not None else None
            while t_end is None or time.monotonic() < t_end:
                await asyncio.sleep(0.25)
                h = monitor.view(name).health
                if h is not None and h.phase in ("ended", "failed"):
                    await _drain(monitor)
                    if h.phase == "failed":
                        raise ExposeError(f"{source}: {h.reason}")
                    break
        finally:
            await monitor.stop()

    if not as_json:
        err_console.print(f"watching {escape(source)} as {escape(claimed)} (Ctrl-C to stop)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


async def _drain(monitor: LiveMonitor, timeout: float = 30.0) -> None:
    """Let the scoring loop finish the last windows before stopping."""
    deadline = time.monotonic() + timeout
    while monitor.loop.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.1)  # the events of the last batch reach the sinks



@app.command("webhook-secret")
def webhook_secret() -> None:
    """Print a new Standard Webhooks signing secret (whsec_ + 32 random bytes, base64): put it in a
    webhook exporter's `secret` and give it to the receiver, which verifies the signatures with it."""
    import base64
    import secrets

    out.print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(), markup=False, highlight=False)


tokens_app = typer.Typer(help="API tokens with roles (viewer, analyst, admin, ingest): create, list, revoke.",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
DbOpt = Annotated[Path | None, typer.Option("--db", help="The monitor's SQLite file (default: server.db_path of "
                                            "the config, else monitor.sqlite3 in the user data dir).")]


def _access(config: Path | None, db: Path | None):  # type: ignore[no-untyped-def]
    from expose.monitor.api.access import AccessStore
    from expose.monitor.api.serve import default_db_path

    cfg = load_cli_config(config)
    return AccessStore(db or cfg.server.db_path or default_db_path())


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="Who or what the token is for (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, analyst, admin or ingest.")],
    stream: Annotated[str | None, typer.Option(help="ingest only: the one stream it may publish to.")] = None,
    expires_days: Annotated[float | None, typer.Option(min=0.001, help="Expire after this many days.")] = None,
    config: ConfigOpt = None, db: DbOpt = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from expose.monitor.api.access import ROLES

    if role not in ROLES:
        raise ExposeError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    store = _access(config, db)
    info, secret = store.create(name, role, stream=stream,  # type: ignore[arg-type]
                                expires_in_s=expires_days * 86400 if expires_days else None)
    store.audit(cli_actor(), "token.create", info.id, name=name, role=role, stream=stream,
                expires_at=info.expires_at)
    out.print(secret, markup=False, highlight=False)
    err_console.print(f"token {info.id} ({role}{', stream ' + stream if stream else ''}) for {name!r}: shown once, "
                      "keep it safe", markup=False)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, db: DbOpt = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The tokens: id, name, role, stream, state (active, expired, revoked); never the secrets."""
    import dataclasses
    import json

    rows = _access(config, db).tokens()
    if as_json:
        out.print_json(json.dumps([dataclasses.asdict(t) | {"state": t.state} for t in rows]))
        return
    for t in rows:
        out.print(f"{t.id}  {t.state:<8} {t.role:<8} {t.name}" + (f"  (stream {t.stream})" if t.stream else ""),
                  markup=False, highlight=False)


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="The token's id (expose tokens list).")],
                  config: ConfigOpt = None, db: DbOpt = None) -> None:
    """Revoke a token: a running server refuses it from the next request on."""
    store = _access(config, db)
    info = store.revoke(token_id)
    store.audit(cli_actor(), "token.revoke", info.id, name=info.name, role=info.role)
    out.print(f"revoked token {info.id} ({info.role}) of {info.name!r}", markup=False, highlight=False)


node_app = typer.Typer(help="Cluster nodes over Redis Streams (cluster.redis_url): ingest and scorer processes.",
                       no_args_is_help=True)
app.add_typer(node_app, name="node")
NodeIdOpt = Annotated[str | None, typer.Option("--id", help="This node's name in the cluster (default: "
                                               "ROLE-HOST-PID); a restarted node with the same name takes its "
                                               "streams back at once.")]


def _cluster_config(config: Path | None) -> Config:
    cfg = load_cli_config(config)
    if not cfg.cluster.redis_url:
        raise ExposeError("no cluster: set cluster.redis_url in the config or EXPOSE_REDIS_URL")
    return cfg


@node_app.command("ingest")
def node_ingest(config: ConfigOpt = None, model: ModelOpt = None, node_id: NodeIdOpt = None) -> None:
    """Run the cluster's pulled streams (source -> features -> windows into Redis); takes over
    the streams of ingest nodes that die. Stop with Ctrl-C or SIGTERM."""
    from expose.monitor.api.serve import run_ingest_node

    logging.getLogger("expose").setLevel(logging.INFO)  # takeovers and hand-overs are worth a line
    run_ingest_node(_cluster_config(config), model_path=model, node=node_id)


@node_app.command("score")
def node_score(config: ConfigOpt = None, model: ModelOpt = None, profiles: ProfilesOpt = None,
               node_id: NodeIdOpt = None) -> None:
    """Score the cluster's windows (one process per GPU or per few cores) and apply the alert
    policy; takes over the windows of scorer nodes that die. Stop with Ctrl-C or SIGTERM."""
    from expose.monitor.api.serve import run_scorer_node

    logging.getLogger("expose").setLevel(logging.INFO)  # takeovers and hand-overs are worth a line
    run_scorer_node(_cluster_config(config), model_path=model, profiles_dir=profiles, node=node_id)
