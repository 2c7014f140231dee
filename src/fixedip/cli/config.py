"""`fixedip config check|example`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from fixedip import config as config_mod

app = typer.Typer(help="Validate and explain configuration files.", no_args_is_help=True)


def load_or_exit(path: Path | None) -> config_mod.Config:
    """Load a configuration; on error print the message and exit 2 (never a traceback)."""
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The TOML file to validate.", show_default=False)],
) -> None:
    """Validate FILE and print the effective configuration.

    Defaults are filled in and token hashes redacted. Exit status 0 if valid, 2 if not.
    """
    config = load_or_exit(file)
    typer.echo(f"# {file}: valid. Effective configuration (token hashes redacted):")
    typer.echo(tomli_w.dumps(config_mod.redacted(config)), nl=False)
    if not config.clients:
        typer.echo("# warning: no [[clients]]: every request will be refused with 407.", err=True)


@app.command("example")
def example() -> None:
    """Print a commented example configuration with every key."""
    typer.echo(config_mod.embedded_text("example.toml"), nl=False)
