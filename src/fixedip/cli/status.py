"""`fixedip status`: the egress pool as a running gateway sees it.

Reads the admin API's /egress. Exit codes follow the monitoring convention: 0 every IP
up and nothing quarantined, 1 an IP down or quarantined for some destination, 3 the
gateway could not be asked.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fixedip.config import ConfigError, load

OK, WARNING, UNKNOWN = 0, 1, 3
TIMEOUT_S = 5.0


def _admin_url(admin: str | None, config: Path | None) -> str:
    if admin:
        return admin.rstrip("/")
    try:
        cfg = load(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if cfg.listen.admin is None:
        typer.echo("error: the configuration has no admin listener (listen.admin)", err=True)
        raise typer.Exit(2)
    return f"http://{cfg.listen.admin}"


def status(
    admin: Annotated[
        str | None,
        typer.Option("--admin", help="Admin API base URL, e.g. http://127.0.0.1:9090."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Read the admin address from this file."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Show each egress IP, its state and the destinations it is quarantined for.

    Exit status: 0 all up, 1 something down or quarantined, 3 the gateway did not answer.
    """
    url = _admin_url(admin, config) + "/egress"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            data: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        typer.echo(f"error: could not read {url}: {getattr(exc, 'reason', exc)}", err=True)
        raise typer.Exit(UNKNOWN) from None
    egress = data.get("egress", [])
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _render(egress)
    troubled = any(ip.get("state") != "up" or ip.get("quarantined_for") for ip in egress)
    raise typer.Exit(WARNING if troubled else OK)


def _render(egress: list[dict[str, Any]]) -> None:
    table = Table(title="fixedip egress", show_lines=False)
    for column in ("egress IP", "leaves as", "state", "destination", "reason", "retry in"):
        table.add_column(column)
    for ip in egress:
        quarantines = ip.get("quarantined_for") or []
        state = ip.get("state", "?")
        style = "green" if state == "up" and not quarantines else "yellow"
        if state != "up":
            style = "red"
        if not quarantines:
            table.add_row(
                ip["bind"], ip["public"], f"[{style}]{state}[/]", "—", ip.get("reason") or "", ""
            )
        for q in quarantines:
            table.add_row(
                ip["bind"],
                ip["public"],
                f"[{style}]quarantined[/]",
                q["host"],
                q.get("reason") or "",
                f"{q.get('seconds_left', 0):.0f} s",
            )
    Console().print(table)
