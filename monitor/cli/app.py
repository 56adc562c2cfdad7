"""The one typer app of the ``expose`` command and what every command module shares:
consoles, common options, config loading.

Commands live in ``cli.main`` (offline jobs) and ``cli.live`` (serve,
watch); both register on this app, which exists once however the CLI is started
(``expose`` or ``python -m expose.monitor.cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from expose.monitor import __version__
from expose.monitor.config import Config, load_config

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


def load_cli_config(config: Path | None) -> Config:
    return load_config(config)


ProfilesOpt = Annotated[
    Path | None,
    typer.Option("--profiles", help="Profile store folder (env EXPOSE_PROFILES; default: user data dir).",
                 file_okay=False),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Base model checkpoint (default: model.path in the config, "
                 "else the starter model shipped with expose).", dir_okay=False),
]




def cli_actor() -> str:
    """Who runs the command, for the audit log: cli:USER."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def audit(cfg: Config, action: str, target: str, **detail: object) -> None:
    """Append a CLI change to the monitor's audit log (its SQLite file: server.db_path, else the
    default); a log that cannot be written is a warning, not a failed command."""
    from expose.monitor.api.access import AccessStore
    from expose.monitor.api.serve import default_db_path
    from expose.monitor.errors import ExposeError

    try:
        store = AccessStore(cfg.server.db_path or default_db_path())
        try:
            store.audit(cli_actor(), action, target, **detail)
        finally:
            store.close()
    except (ExposeError, OSError) as err:
        err_console.print(f"warning: not in the audit log: {err}", markup=False, soft_wrap=True)
