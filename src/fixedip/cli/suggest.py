"""`fixedip suggest allowlist FLOWLOG`: the smallest policy that allows what was seen.

Meant for observe mode: run a client with `mode = "observe"` for a while, then turn
what it really did into `allow` rules. Only allowed flows count (observe-mode flows are
allowed, flagged "observe: would deny"), so refused traffic never widens the policy.
Several subdomains of one parent (at least --min-subdomains) become `*.parent`.
"""

from __future__ import annotations

import ipaddress
import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer

app = typer.Typer(
    help="Suggest configuration from what the gateway has seen.", no_args_is_help=True
)

FORWARDED_KINDS = {"http", "connect", "socks"}
TUNNEL_KINDS = {"connect", "socks"}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _rule(host: str, port: int) -> str:
    if ":" in host:  # IPv6 literal
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def suggest(records: list[dict[str, Any]], min_subdomains: int) -> dict[str, dict[str, Any]]:
    """Per client: allow rules, connect ports and counts, from flow records."""
    seen: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    tunnel_ports: dict[str, set[int]] = defaultdict(set)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        client, host, port = record.get("client"), record.get("host"), record.get("port")
        if (
            record.get("decision") != "allow"
            or record.get("kind") not in FORWARDED_KINDS
            or not client
            or not host
            or not isinstance(port, int)
        ):
            continue
        seen[client][host].add(port)
        if record["kind"] in TUNNEL_KINDS:
            tunnel_ports[client].add(port)
        counts[client][0] += 1
        if str(record.get("rule") or "").startswith("observe:"):
            counts[client][1] += 1
    out: dict[str, dict[str, Any]] = {}
    for client, hosts in sorted(seen.items()):
        by_parent: dict[str, set[str]] = defaultdict(set)
        for host in hosts:
            if not _is_ip(host) and host.count(".") >= 2:
                by_parent[host.split(".", 1)[1]].add(host)
        rules: set[str] = set()
        covered: set[str] = set()
        for parent, children in by_parent.items():
            if len(children) >= min_subdomains:
                for port in set().union(*(hosts[h] for h in children)):
                    rules.add(f"*.{parent}:{port}")
                covered |= children
        for host, ports in hosts.items():
            if host not in covered:
                rules.update(_rule(host, port) for port in ports)
        out[client] = {
            "allow": sorted(rules),
            "connect_ports": sorted(tunnel_ports[client]),
            "flows": counts[client][0],
            "observed": counts[client][1],
        }
    return out


@app.command("allowlist")
def allowlist(
    flowlog: Annotated[
        Path, typer.Argument(help="A flow log (JSON lines) written by the gateway.")
    ],
    client: Annotated[str | None, typer.Option("--client", help="Only this client.")] = None,
    min_subdomains: Annotated[
        int,
        typer.Option(
            "--min-subdomains", min=2, help="Subdomains of one parent that become *.parent."
        ),
    ] = 3,
) -> None:
    """Print [[clients]] allow rules that would have allowed every flow in FLOWLOG."""
    try:
        lines = flowlog.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        typer.echo(f"error: {flowlog}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    records, bad = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
    if bad:
        typer.echo(f"# skipped {bad} line(s) that are not JSON", err=True)
    suggestions = suggest(records, min_subdomains)
    if client is not None:
        suggestions = {k: v for k, v in suggestions.items() if k == client}
    if not suggestions:
        typer.echo("# no allowed flows with a client in this log", err=True)
        raise typer.Exit(1)
    for name, found in suggestions.items():
        typer.echo(
            f"# {name}: {found['flows']} flows, {found['observed']} allowed only by observe mode"
        )
        entry: dict[str, Any] = {"name": name, "allow": found["allow"]}
        if found["connect_ports"]:
            entry["connect_ports"] = found["connect_ports"]
        typer.echo(tomli_w.dumps({"clients": [entry]}))
