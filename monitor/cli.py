"""The ``expose`` command line: one entry point, one subcommand per job.

This module is the composition root for CLI jobs: it loads the config once, resolves
assets, builds the objects a job needs and passes them down. Errors that reach a
user (ExposeError) are printed as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from monitor import __version__
from monitor.config import Config, load_config
from monitor.errors import ExposeError, MediaError
from monitor.face_model import resolve_face_model
from monitor.feature_cache import FeatureCache
from monitor.media import MediaReader, is_network_url
from monitor.track import FeatureTrack

app = typer.Typer(
    name="expose",
    help="Live-call impersonation monitor: alerts when the face on screen does not move "
    "the way the enrolled person moves while saying those words.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
out = Console()

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (env EXPOSE_* overrides it).",
                 dir_okay=False),
]


def _version(value: bool) -> None:
    if value:
        print(f"expose {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _load(config: Path | None) -> Config:
    return load_config(config)


def _feature_cache(cfg: Config) -> FeatureCache:
    model = resolve_face_model(cfg.features.face_model, cfg.cache_dir)
    return FeatureCache(cfg.cache_dir, cfg.features, model)


def _media_duration(path: Path) -> float | None:
    try:
        with MediaReader(path, require_video=False) as reader:
            return reader.info.duration
    except MediaError:
        return None  # extraction reports the real problem with its own message


def _summary(track: FeatureTrack, seconds: float, cached: bool) -> dict[str, object]:
    return {
        "source": track.source,
        "duration_s": round(track.duration, 3),
        "frames": len(track),
        "fps": track.fps,
        "face_ratio": round(track.face_ratio, 4),
        "speech_ratio": round(track.speech_ratio, 4),
        "has_audio": track.has_audio,
        "cached": cached,
        "processing_s": round(seconds, 3),
        "x_realtime": round(track.duration / seconds, 2) if seconds > 0 and not cached else None,
    }


@app.command()
def features(
    media: Annotated[list[Path], typer.Argument(help="Media files to extract features from.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Where to write the FeatureTrack (.npz). With several MEDIA: a directory.")] = None,
    allow_no_audio: Annotated[bool, typer.Option(
        "--allow-no-audio", help="Accept media without an audio track (audio features are zeros).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Re-extract even when cached.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary per line.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Extract 25 fps expression + audio features (a FeatureTrack) and print a summary.

    Results are cached by the file's content hash and the extractor version, so later training and evaluation reuse them.
    """
    cfg = _load(config)
    cache = _feature_cache(cfg)
    for m in media:
        if is_network_url(str(m)):
            raise MediaError(f"{m}: `expose features` reads files; live URLs go to `expose watch`")
    if output is not None and len(media) > 1 and output.suffix:
        raise ExposeError(f"--output {output}: with several MEDIA, give a directory")
    for m in media:
        total = _media_duration(m)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
            disable=as_json or not err_console.is_terminal,
        ) as bar:
            task = bar.add_task(m.name, total=total or None)
            track, cached = cache.get(m, require_audio=not allow_no_audio, refresh=no_cache,
                                      progress=lambda s: bar.update(task, completed=s))
        seconds = time.perf_counter() - t0
        if output is not None:
            dest = output / f"{m.stem}.features.npz" if len(media) > 1 or output.is_dir() else output
            track.save(dest)
        info = _summary(track, seconds, cached)
        if output is not None:
            info["output"] = str(dest)
        if as_json:
            print(json.dumps(info))
        else:
            speed = f"{info['x_realtime']}x real time" if info["x_realtime"] else "from cache"
            print(
                f"{m}: {info['duration_s']} s, {info['frames']} frames @ {track.fps} fps, "
                f"face {100 * track.face_ratio:.1f}%, speech {100 * track.speech_ratio:.1f}%, "
                f"{speed}" + (f" -> {info['output']}" if output is not None else "")
            )
            if track.face_ratio == 0:
                err_console.print(f"[yellow]warning[/]: no face found in {m}")


def main() -> None:
    """Console entry point: user-facing errors become one line and exit status 2."""
    try:
        app()
    except ExposeError as err:
        err_console.print(f"expose: error: {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("expose: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
