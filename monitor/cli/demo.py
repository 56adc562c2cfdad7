"""`expose demo`: the main job on sample clips that ship with expose, nothing else needed.

It enrolls the sample speaker (GRID speaker s1, CC BY 4.0: assets/samples/README.md)
from the shipped reference, makes a dub (the genuine test clip's video with another
GRID speaker's voice) and serves both as looping streams claimed as that speaker, side
by side on the dashboard: one stays authentic, the other raises an alert.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import av
import numpy as np
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from expose.monitor.cli.app import ConfigOpt, app, err_console, load_cli_config, out
from expose.monitor.config import STARTER_MODEL, Config, StreamConfig
from expose.monitor.errors import ExposeError, MediaError

if TYPE_CHECKING:
    import socket

    import uvicorn

    from expose.monitor.live.monitor import LiveMonitor
    from expose.profiles.store import ProfileStore

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
REFERENCE = SAMPLES / "s1_reference.mp4"  # GRID s1 sentences joined into one recording
GENUINE = SAMPLES / "s1_test.mp4"  # other s1 sentences, none of them in the reference
VOICE = SAMPLES / "s2_voice.mp4"  # GRID s2: the dub's audio
PROFILE = "grid_s1"
GENUINE_STREAM, DUBBED_STREAM = "genuine", "dubbed"


class DemoError(ExposeError):
    """The demo cannot run: a sample clip is missing, or its profile name is taken."""


# ---- the dub ---------------------------------------------------------------------------
def _voice_pcm(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as src:
        stream = src.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in src.decode(stream) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise MediaError(f"{path}: no audio to dub with")
    return np.concatenate(chunks), rate


def make_dub(video_src: Path, voice_src: Path, dest: Path) -> Path:
    """``video_src``'s video (packets copied, not re-encoded) with ``voice_src``'s audio in
    place of its own, repeated to the video's length: the face of one person, the voice of
    another, as a dub or a voice swap puts them together."""
    try:
        pcm, rate = _voice_pcm(voice_src)
        with av.open(str(video_src)) as vin, av.open(str(dest), "w") as dst:
            v_in = vin.streams.video[0]
            v_out = dst.add_stream_from_template(v_in)
            a_out = dst.add_stream("aac", rate=rate, layout="mono")
            a_out.bit_rate = 48_000
            end = 0.0
            for pkt in vin.demux(v_in):
                if pkt.dts is None:  # the demuxer's flush packet
                    continue
                if pkt.pts is not None and pkt.time_base is not None:
                    end = max(end, float((pkt.pts + (pkt.duration or 0)) * pkt.time_base))
                pkt.stream = v_out
                dst.mux(pkt)
            n = int(round(end * rate))
            voice = np.resize(pcm, n)  # the voice again and again, cut at the video's end
            step = a_out.codec_context.frame_size or 1024
            for i in range(0, n, step):
                frame = av.AudioFrame.from_ndarray(voice[None, i : i + step], format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
                for p in a_out.encode(frame):
                    dst.mux(p)
            for p in a_out.encode(None):
                dst.mux(p)
    except (av.error.FFmpegError, IndexError) as err:  # IndexError: a clip without that stream
        raise MediaError(f"cannot make the demo dub from {video_src.name} and {voice_src.name}: {err}") from None
    return dest


# ---- the sample speaker's profile --------------------------------------------------------
def _sample_profile(cfg: Config, store: ProfileStore) -> str:
    """Enroll the sample speaker from the shipped reference, unless ``store`` already holds
    that enrollment for this base model. Returns what was done, for the operator."""
    from expose.monitor.features.cache import FeatureCache
    from expose.monitor.features.face_model import resolve_face_model, sha256_file
    from expose.monitor.model.exam import load_model
    from expose.profiles.enroll import EnrollConfig, EnrollError, enroll
    from expose.profiles.store import Reference

    base = load_model(cfg.model.path, cfg.model.decision, cfg.features)
    ref_sha = sha256_file(REFERENCE)
    if store.exists(PROFILE):
        old = store.load(PROFILE)
        if [r.sha256 for r in old.references] != [ref_sha]:
            raise DemoError(f"profile {PROFILE!r} in {store.root} was not enrolled by the demo; "
                            "give the demo another --profiles folder")
        decision = base.decision.sha256 if base.decision is not None else None
        if old.base_model_sha256 == base.sha256 and old.decision_sha256 == decision:
            return f"using the profile {PROFILE!r} enrolled earlier in {store.root}"
    cache = FeatureCache(cfg.cache_dir, cfg.features, resolve_face_model(cfg.features.face_model, cfg.cache_dir))
    ecfg = EnrollConfig()
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        bar.add_task("features of the reference", total=None)
        track, _ = cache.get(REFERENCE, require_audio=True)
        task = bar.add_task("enroll", total=ecfg.steps)
        ref = (track, Reference(str(REFERENCE), ref_sha, round(track.duration, 3), 0))
        try:
            profile = enroll(PROFILE, base, [ref], ecfg, on_step=lambda s, _loss: bar.update(task, completed=s))
        except EnrollError as err:
            raise DemoError(f"cannot enroll the sample speaker: {err}") from None
    store.save(profile)
    return (f"enrolled {PROFILE!r} from {track.duration:.0f} s of reference ({REFERENCE.name}) in "
            f"{time.perf_counter() - t0:.0f} s into {store.root}")


# ---- the run and its summary --------------------------------------------------------------
@dataclass(frozen=True)
class AlertSummary:
    t_start: float  # stream seconds: start of the first window over the threshold
    peak_distance: float
    mean_distance: float
    threshold: float  # the smoothed-distance threshold it crossed
    n_windows: int


@dataclass(frozen=True)
class StreamSummary:
    name: str
    state: str  # the alert policy's state at the end
    phase: str  # the source's: live, down, ended, failed
    windows: int  # windows cut from the stream
    alerts: list[AlertSummary]  # every alert raised on it, oldest first


def summarize(monitor: LiveMonitor) -> dict[str, StreamSummary]:
    rows: dict[str, StreamSummary] = {}
    for name in (GENUINE_STREAM, DUBBED_STREAM):
        view = monitor.view(name)
        alerts = [AlertSummary(round(a.t_start, 2), round(a.peak_distance, 4), round(a.mean_distance, 4),
                               round(a.threshold, 4), a.n_windows)
                  for a in sorted(monitor.store.list_alerts(stream=name), key=lambda a: a.t_start)]
        h = view.health
        rows[name] = StreamSummary(name, view.state, h.phase if h else "-", h.windows if h else 0, alerts)
    return rows


def as_expected(rows: dict[str, StreamSummary]) -> bool:
    return not rows[GENUINE_STREAM].alerts and bool(rows[DUBBED_STREAM].alerts)


def _print_summary(rows: dict[str, StreamSummary], seconds: float) -> None:
    out.print(f"after {seconds:g} s:")
    for r in rows.values():
        if r.alerts:
            a = r.alerts[0]
            n = len(r.alerts)
            what = (f"{n} alert{'s' if n > 1 else ''}, the first from {a.t_start:.1f} s of stream time "
                    f"(peak distance {a.peak_distance:+.3f}, threshold {a.threshold:+.3f})")
        else:
            what = "no alert"
        out.print(f"  {r.name:<8} {r.state.upper():<10} {r.windows:3d} windows, {what}", highlight=False,
                  soft_wrap=True)
    if as_expected(rows):
        out.print("as expected: the dubbed stream raised an alert, the genuine one did not")
    else:
        out.print("[bold red]not as expected[/]: the dubbed stream should raise an alert and the genuine one none")


async def _serve_for(server: uvicorn.Server, sock: socket.socket, monitor: LiveMonitor,
                     seconds: float | None) -> dict[str, StreamSummary] | None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    if seconds is None:
        await task
        return None
    await asyncio.wait({task}, timeout=seconds)
    rows = summarize(monitor) if not task.done() else None  # before shutdown removes the streams
    server.should_exit = True
    await task
    return rows


@app.command()
def demo(
    host: Annotated[str | None, typer.Option(help="Listen address (default: server.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port, 8000; 0: any free port).")] = None,
    seconds: Annotated[float | None, typer.Option(
        help="Stop after this many seconds and print each stream's state and alerts (exit status 1 "
        "if the outcome is not the expected one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --seconds: print the summary as one JSON "
                                          "object.")] = False,
    profiles: Annotated[Path | None, typer.Option(
        "--profiles", help="Profile store folder to enroll the sample speaker into and reuse it from "
        "(default: a temporary folder, so each run enrolls again).", file_okay=False)] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve a genuine and a dubbed stream of a sample speaker enrolled from shipped clips (GRID corpus).

    Needs nothing but expose and the face model; see monitor/assets/samples/README.md for the clips.
    """
    from expose.monitor.api.serve import bind, build_service, uvicorn_server
    from expose.profiles.crypto import configured_key
    from expose.profiles.store import ProfileStore

    missing = [p.name for p in (REFERENCE, GENUINE, VOICE) if not p.is_file()]
    if missing:
        raise DemoError(f"sample clips missing from {SAMPLES}: {', '.join(missing)} (reinstall expose)")
    cfg = load_cli_config(config)
    with tempfile.TemporaryDirectory(prefix="expose-demo-") as tmp_name:
        tmp = Path(tmp_name)
        root = profiles or tmp / "profiles"
        store = ProfileStore(root, key=configured_key(cfg.profiles_key_file, root))
        # the outcome was measured with the starter model (assets/samples/README.md)
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": STARTER_MODEL})})
        err_console.print(_sample_profile(cfg, store), highlight=False, soft_wrap=True)
        dub = make_dub(GENUINE, VOICE, tmp / "dubbed.mp4")
        srv = cfg.server.model_copy(update={"db_path": tmp / "monitor.sqlite3", **{
            k: v for k, v in (("host", host), ("port", port)) if v is not None}})
        streams = [StreamConfig(name=GENUINE_STREAM, url=str(GENUINE), profile=PROFILE, loop=True),
                   StreamConfig(name=DUBBED_STREAM, url=str(dub), profile=PROFILE, loop=True)]
        # demo alerts stay here: the config's exporters may feed a real security console
        cfg = cfg.model_copy(update={"server": srv, "streams": streams, "exporters": []})
        service = build_service(cfg, profiles_dir=store.root)
        try:
            sock = bind(srv.host, srv.port)
        except OSError as err:
            raise ExposeError(f"cannot listen on {srv.host}:{srv.port} ({err.strerror})") from None
        shown = "127.0.0.1" if srv.host in ("0.0.0.0", "::") else srv.host
        base = f"{'https' if service.tls else 'http'}://{shown}:{sock.getsockname()[1]}"
        say = err_console if as_json else out  # with --json, stdout holds the one JSON object only
        say.print(f"expose demo on {base}: streams {GENUINE_STREAM!r} ({escape(GENUINE.name)}) and "
                  f"{DUBBED_STREAM!r} (its video, {escape(VOICE.name)}'s voice), both claimed as {PROFILE!r}",
                  highlight=False, soft_wrap=True)
        token = service.token
        if token.generated:
            say.print(f"dashboard: {base}/dashboard/?token={token.value}", soft_wrap=True)
        else:
            say.print(f"dashboard: {base}/dashboard/  (token: server.token / EXPOSE_TOKEN)", soft_wrap=True)
        say.print("Ctrl-C to stop" if seconds is None else f"stopping after {seconds:g} s", style="dim")
        server = uvicorn_server(service.app, srv.host, sock.getsockname()[1], service.tls)
        try:
            rows = asyncio.run(_serve_for(server, sock, service.monitor, seconds))
        except KeyboardInterrupt:  # some uvicorn versions re-raise Ctrl-C after shutting down
            rows = None
        finally:
            sock.close()
    if rows is None or seconds is None:  # Ctrl-C (uvicorn shut down gracefully), or no --seconds
        err_console.print("expose demo: stopped")
        return
    if as_json:
        print(json.dumps({"seconds": seconds, "as_expected": as_expected(rows),
                          "streams": {n: asdict(r) for n, r in rows.items()}}))
    else:
        _print_summary(rows, seconds)
    if not as_expected(rows):
        raise typer.Exit(1)
