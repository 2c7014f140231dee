"""`fixedip ips`: the fleet's constant set of public IPs, for a vendor's allowlist.

With `[fleet]` the set is read from the fleet's Redis: every public egress IP a member
has used and every floating Elastic IP, with the member and private address that carry
it (for a floating IP: its holder at its last move). Failover moves a floating IP between members
but never changes the set, so the list a vendor holds stays valid. Without `[fleet]` it
is this gateway's own egress IPs (as the internet sees them).

Exit status: 0 printed, 2 configuration error, 3 the fleet's Redis could not be asked
(nothing is printed then: half an allowlist is worse than none).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from fixedip.cli.config import load_or_exit
from fixedip.config import Config

UNKNOWN = 3


def _sort_key(ip: str) -> tuple[int, Any]:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return (9, ip)
    return (address.version, address)


async def _from_fleet(config: Config) -> dict[str, dict[str, Any]]:
    from fixedip.fleet.link import Link
    from fixedip.fleet.membership import fleet_ips

    assert config.fleet is not None
    link = Link(config.fleet, f"{config.fleet.member}.cli")
    if not await link.try_join():
        raise ConnectionError(f"cannot ask Redis at {link.where}: {link.degraded_reason}")
    try:
        return await fleet_ips(link)
    finally:
        link.redis.close()


def ips(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="The gateway's configuration file.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Literal["table", "json"], typer.Option("--format", help="table for people, json for tools.")
    ] = "table",
) -> None:
    """Print the public IPs a vendor must allowlist for this gateway or its whole fleet."""
    cfg = load_or_exit(config)
    found: dict[str, dict[str, Any]] = {}
    if cfg.runs_proxy:
        for ip in cfg.egress.ips:
            found[str(ip.seen_as)] = {
                "kind": "static",
                "member": cfg.fleet.member if cfg.fleet else None,
            }
    if cfg.fleet is not None:
        try:
            found.update(asyncio.run(_from_fleet(cfg)))
        except (ConnectionError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(UNKNOWN) from None
    ordered = sorted(found, key=_sort_key)
    if output == "json":
        details = [{"ip": ip, **found[ip]} for ip in ordered]
        typer.echo(json.dumps({"ips": ordered, "details": details}, indent=2))
        return
    table = Table(title="public IPs to allowlist" + (" (fleet)" if cfg.fleet else ""))
    for column in ("IP", "kind", "member", "private IP", "allocation"):
        table.add_column(column)
    for shown in ordered:
        record = found[shown]
        table.add_row(
            shown,
            str(record.get("kind") or ""),
            str(record.get("member") or ""),
            str(record.get("private_ip") or record.get("bind") or ""),
            str(record.get("allocation") or ""),
        )
    Console().print(table)
