"""`fixedip config check|example`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from fixedip import config as config_mod
from fixedip.gateway.tls import TlsConfig

app = typer.Typer(help="Validate and explain configuration files.", no_args_is_help=True)

EXPIRY_WARNING_DAYS = 14


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

    Defaults are filled in and token hashes redacted. The TLS certificate and key it
    names are checked as `fixedip serve` would load them. Exit status 0 if valid, 2 if not.
    """
    config = load_or_exit(file)
    if config.tls is not None:
        _check_tls_files(config.tls, file)
    typer.echo(f"# {file}: valid. Effective configuration (token hashes redacted):")
    typer.echo(tomli_w.dumps(config_mod.redacted(config)), nl=False)
    if not config.clients:
        typer.echo("# warning: no [[clients]]: every request will be refused with 407.", err=True)


def _check_tls_files(tls: TlsConfig, file: Path) -> None:
    """The certificate and key as `fixedip serve` would load them: exit 2 if it could not."""
    import datetime

    from fixedip.gateway.tls import TlsFileError, check_pair

    try:
        expires = check_pair(tls)
    except TlsFileError as exc:
        typer.echo(f"error: {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    left = expires - datetime.datetime.now(datetime.UTC)
    if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        typer.echo(
            f"# warning: tls.cert {tls.cert} expires {expires:%Y-%m-%d %H:%M} UTC; renew it",
            err=True,
        )


@app.command("example")
def example() -> None:
    """Print a commented example configuration with every key."""
    typer.echo(config_mod.embedded_text("example.toml"), nl=False)
