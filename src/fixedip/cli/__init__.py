"""The `fixedip` command. Each command group lives in its own module."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import typer  # noqa: F401
    except ImportError:
        sys.stderr.write(
            "fixedip: the command line needs the server extra: pip install 'fixedip[server]'\n"
        )
        raise SystemExit(2) from None
    from fixedip.cli.app import app

    app()
