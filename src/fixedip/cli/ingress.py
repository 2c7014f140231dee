"""`fixedip ingress serve|ls|show|replay|purge`: the webhook relay and its spool.

`serve` runs the relay alone. The other commands open the spool file directly, so they
work whether or not a relay is running (SQLite serialises writers; a running relay picks
up replayed records within a second).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fixedip.cli.config import load_or_exit
from fixedip.ingress import spool as spool_mod
from fixedip.ingress import spoolfile

app = typer.Typer(
    help="The webhook relay: run it, list, inspect, replay and purge spooled webhooks.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML file with an [ingress] section.", show_default=False),
]
SpoolOption = Annotated[
    Path | None,
    typer.Option("--spool", help="The spool file (default: ingress.spool from --config)."),
]
FormatOption = Annotated[str, typer.Option("--format", help="table for humans, json for machines.")]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """`2026-11-23T09:00:00Z`, `2026-11-23` (UTC) or an age such as `30m`, `2h`, `7d`."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m[1]) * _UNITS[m[2]]
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: write 2026-11-23T09:00:00Z, 2026-11-23, or an age "
            "such as 30m, 2h, 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _open(config: Path | None, spool: Path | None) -> sqlite3.Connection:
    if spool is None:
        if config is None:
            raise _fail("give --config FILE (with [ingress]) or --spool PATH")
        cfg = load_or_exit(config)
        if cfg.ingress is None:
            raise _fail(f"{config} has no [ingress] section")
        spool = Path(cfg.ingress.spool)
    if not spool.is_file():
        raise _fail(f"no spool at {spool} (the relay creates it when it starts)")
    try:
        return spool_mod.connect(spool)
    except sqlite3.Error as exc:
        raise _fail(f"cannot open the spool {spool}: {exc}") from None


def _iso(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise _fail(f"--format: expected table or json, got {fmt!r}")


@app.command("serve")
def serve(config: ConfigOption = None) -> None:
    """Run the relay alone (no proxy), until SIGTERM / Ctrl-C.

    Receives webhooks on ingress.listen, acknowledges each only after it is committed to
    the spool, and delivers it to its route's target at least once. SIGHUP reloads
    routes and secrets.
    """
    import asyncio
    import logging

    from fixedip.ingress.relay import Relay, RelayStartError
    from fixedip.ingress.service import relay_lines, run_relay

    if config is None:
        raise _fail("give --config FILE with an [ingress] section")
    cfg = load_or_exit(config)
    if cfg.ingress is None:
        raise _fail(f"{config} has no [ingress] section: nothing to relay")
    logging.basicConfig(
        level=cfg.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    def announce(relay: Relay) -> None:
        from fixedip import __version__

        lines = [f"fixedip {__version__} relaying webhooks from {cfg.source}", *relay_lines(relay)]
        print("\n".join(lines), file=sys.stderr, flush=True)

    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        status = runner(run_relay(cfg, str(config), announce))
    except RelayStartError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        status = 0
    raise typer.Exit(status)


@app.command("ls")
def ls(
    config: ConfigOption = None,
    spool: SpoolOption = None,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only this state: pending, delivering, delivered, dead."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Received at or after TIME (or an age: 2h).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
    fmt: FormatOption = "table",
) -> None:
    """List spooled webhooks, newest first."""
    _check_format(fmt)
    if state is not None and state not in spool_mod.STATES:
        raise _fail(f"--state: expected one of {', '.join(spool_mod.STATES)}, got {state!r}")
    try:
        since_ts = parse_time(since) if since else None
    except ValueError as exc:
        raise _fail(f"--since: {exc}") from None
    conn = _open(config, spool)
    with contextlib.closing(conn):
        records = spoolfile.list_records(conn, state, max(1, limit), since_ts)
    if fmt == "json":
        typer.echo(json.dumps([r.summary() for r in records], indent=2))
        return
    table = Table(title="spooled webhooks")
    table.add_column("id", no_wrap=True, min_width=32)  # operators copy it whole
    for column in ("route", "state", "received", "attempts", "last", "bytes"):
        table.add_column(column)
    for r in records:
        last = str(r.last_status) if r.last_status is not None else (r.last_error[:40] or "")
        table.add_row(
            r.id, r.route, r.state, _iso(r.received), str(r.attempts), last, str(len(r.body))
        )
    Console().print(table)


@app.command("show")
def show(
    record_id: Annotated[str, typer.Argument(metavar="ID", help="Delivery id (or a prefix).")],
    config: ConfigOption = None,
    spool: SpoolOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show one webhook: its state, attempts, headers and body."""
    _check_format(fmt)
    conn = _open(config, spool)
    with contextlib.closing(conn):
        record = spoolfile.get_record(conn, record_id)
    if record is None:
        raise _fail(f"no webhook with id {record_id!r} (or the prefix is not unique)")
    data = record.summary()
    data["headers"] = record.headers
    try:
        data["body"] = record.body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(record.body).decode()
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    for key in ("id", "route", "state", "method", "path", "query", "source"):
        typer.echo(f"{key:13} {data[key]}")
    typer.echo(f"{'received':13} {_iso(record.received)}")
    typer.echo(f"{'attempts':13} {record.attempts}")
    if record.state == "pending" and record.attempts:
        typer.echo(f"{'next attempt':13} {_iso(record.next_attempt)}")
    if record.last_status is not None or record.last_error:
        typer.echo(f"{'last result':13} {record.last_status or ''} {record.last_error}".rstrip())
    typer.echo("headers:")
    for name, value in record.headers:
        typer.echo(f"  {name}: {value}")
    typer.echo(f"body ({len(record.body)} bytes):")
    typer.echo(data.get("body", data.get("body_base64", "")))


@app.command("replay")
def replay(
    record_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Delivery ids to send again.")
    ] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Every dead webhook.")] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Every delivered or dead webhook received since TIME."),
    ] = None,
    config: ConfigOption = None,
    spool: SpoolOption = None,
) -> None:
    """Deliver webhooks again (attempts start over; the delivery id stays the same)."""
    if not record_ids and not all_dead and since is None:
        raise _fail("name IDs, or give --all-dead or --since TIME")
    try:
        since_ts = parse_time(since) if since else None
    except ValueError as exc:
        raise _fail(f"--since: {exc}") from None
    conn = _open(config, spool)
    ids = []
    with contextlib.closing(conn):
        for given in record_ids or []:
            record = spoolfile.get_record(conn, given)
            if record is None:
                raise _fail(f"no webhook with id {given!r} (or the prefix is not unique)")
            ids.append(record.id)
        count = spoolfile.replay(conn, ids=ids, all_dead=all_dead, since=since_ts)
    typer.echo(f"{count} webhook{'s' if count != 1 else ''} queued for delivery again")


@app.command("purge")
def purge(
    delivered_before: Annotated[
        str,
        typer.Option(
            "--delivered-before", help="Delete delivered webhooks older than TIME (or 7d)."
        ),
    ],
    config: ConfigOption = None,
    spool: SpoolOption = None,
) -> None:
    """Delete delivered webhooks (pending and dead ones are never purged)."""
    try:
        before = parse_time(delivered_before)
    except ValueError as exc:
        raise _fail(f"--delivered-before: {exc}") from None
    conn = _open(config, spool)
    with contextlib.closing(conn):
        count = spoolfile.purge_delivered(conn, before)
    typer.echo(f"{count} delivered webhook{'s' if count != 1 else ''} deleted")
