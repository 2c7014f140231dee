"""`fixedip status`: the egress pool as a running gateway sees it; in a fleet, one table
for every member (their egress IPs, floating EIPs and the shared quarantines).

Reads the admin API's /egress. Exit codes follow the monitoring convention: 0 every IP
up and nothing quarantined, 1 an IP down or quarantined for some destination (in a
fleet also: a member gone, or the fleet degraded), 3 the gateway could not be asked.
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
    fleet = data.get("fleet")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    elif fleet:
        _render_fleet(fleet)
    else:
        _render(egress)
    troubled = any(ip.get("state") != "up" or ip.get("quarantined_for") for ip in egress)
    if fleet:
        troubled = troubled or _fleet_troubled(fleet)
    raise typer.Exit(WARNING if troubled else OK)


def _fleet_troubled(fleet: dict[str, Any]) -> bool:
    members = fleet.get("members_seen") or []
    down = any(
        not m.get("alive") or not all(e.get("up") for e in m.get("egress", [])) for m in members
    )
    return bool(fleet.get("degraded") or fleet.get("quarantines") or down)


def _render_fleet(fleet: dict[str, Any]) -> None:
    """One table for the whole fleet: every member's egress IPs, the floating EIPs each
    holds, and the quarantines (shared by all members)."""
    quarantines: dict[str, list[dict[str, Any]]] = {}
    for q in fleet.get("quarantines") or []:
        quarantines.setdefault(str(q.get("egress")), []).append(q)
    table = Table(title=f"fixedip fleet ({fleet.get('members', 0)} live member(s))")
    for column in (
        "member",
        "egress IP",
        "leaves as",
        "state",
        "destination",
        "reason",
        "retry in",
    ):
        table.add_column(column)
    for member in fleet.get("members_seen") or []:
        name = str(member.get("member", "?"))
        alive = bool(member.get("alive"))
        for ip in member.get("egress", []):
            held = quarantines.get(str(ip.get("bind")), [])
            state = "up" if ip.get("up") else "down"
            if not alive:
                state = "gone"
            style = "green" if state == "up" and not held else "red" if state != "up" else "yellow"
            if not held:
                table.add_row(
                    name,
                    ip.get("bind", ""),
                    ip.get("public", ""),
                    f"[{style}]{state}[/]",
                    "—",
                    "",
                    "",
                )
            for q in held:
                table.add_row(
                    name,
                    ip.get("bind", ""),
                    ip.get("public", ""),
                    f"[{style}]quarantined[/]",
                    str(q.get("host", "")),
                    str(q.get("reason") or ""),
                    f"{q.get('seconds_left', 0):.0f} s",
                )
        for eip in member.get("floating_eips") or []:
            state = "[green]floating, held[/]" if alive else "[red]floating, holder gone[/]"
            table.add_row(
                name,
                str(eip.get("allocation", "")),
                str(eip.get("public") or ""),
                state,
                "—",
                "",
                "",
            )
    Console().print(table)
    if fleet.get("degraded"):
        reason = fleet.get("degraded_reason") or "Redis cannot be used"
        Console(stderr=True).print(f"[yellow]fleet degraded at {fleet.get('member')}: {reason}[/]")


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
