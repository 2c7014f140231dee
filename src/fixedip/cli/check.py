"""`fixedip check` (how does my egress look to the internet?) and `fixedip ranges`
(the cloud providers' published range files, cached).

Exit status of `check`: 0 every row passed, 1 a warning or an unknown, 2 a failure,
3 the check could not run. See docs/check.md.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from fixedip.check.dnsbl import DEFAULT_ZONES
from fixedip.check.echo import DEFAULT_ECHO_URLS, ECHO_TIMEOUT_S, parse_via
from fixedip.check.rangefiles import SOURCES, RangeFileError
from fixedip.check.ranges import RangeIndex, classify, default_cache_dir, update
from fixedip.check.report import COULD_NOT_RUN, Report, changes
from fixedip.check.resolver import parse_server
from fixedip.check.runner import CheckOptions, run_check
from fixedip.check.textfile import write_metrics

ranges_app = typer.Typer(
    help="The cloud providers' published IP ranges, cached for `fixedip check`.",
    no_args_is_help=True,
)

CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="Cache directory (default: ~/.cache/fixedip/ranges, or under $XDG_CACHE_HOME).",
    ),
]
FormatOption = Annotated[str, typer.Option("--format", help="table or json.")]


def _format(value: str) -> str:
    if value not in ("table", "json"):
        raise typer.BadParameter("use table or json", param_hint="--format")
    return value


def _ips(values: list[str], option: str) -> list[str]:
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value.strip())))
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not an IP address", param_hint=option) from None
    return out


def _urls(values: list[str]) -> list[str]:
    for value in values:
        if not value.startswith(("http://", "https://")):
            raise typer.BadParameter(
                f"{value!r}: use an http:// or https:// URL", param_hint="--echo"
            )
    return values


# Typer may vendor its own click: take UsageError from typer's BadParameter, not `click`.
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


class MonitoringCommand(TyperCommand):
    """Usage errors of `fixedip check` exit 3 ("could not run"), as monitoring plugins'
    do: its exit status 2 means a check failed."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERROR as exc:
            exc.exit_code = COULD_NOT_RUN  # type: ignore[attr-defined]
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            exc.exit_code = COULD_NOT_RUN  # type: ignore[attr-defined]
            raise


def check(
    via: Annotated[
        str | None,
        typer.Option(
            "--via",
            help="Check through this proxy: a fixedip gateway (http://NAME:TOKEN@host:3128, or "
            "https://… for its TLS listener) or any HTTP proxy.",
        ),
    ] = None,
    admin: Annotated[
        str | None,
        typer.Option(
            "--admin",
            help="A fixedip gateway's admin API (http://127.0.0.1:9090): check every egress "
            "IP of its pool, not only those the --via client may use.",
        ),
    ] = None,
    expect: Annotated[
        list[str] | None,
        typer.Option("--expect", help="An IP traffic must leave from (repeat for several)."),
    ] = None,
    allowlist: Annotated[
        Path | None,
        typer.Option(
            "--allowlist",
            help="The vendor's allowlist: one IP or CIDR a line, # comments.",
        ),
    ] = None,
    output: FormatOption = "table",
    echo: Annotated[
        list[str] | None,
        typer.Option("--echo", help="An IP-echo URL (repeat; replaces the defaults)."),
    ] = None,
    no_echo: Annotated[
        bool, typer.Option("--no-echo", help="Ask no echo endpoint (check --expect IPs only).")
    ] = False,
    resolver: Annotated[
        str | None,
        typer.Option(
            "--resolver",
            help="DNS server for PTR and blocklists, HOST[:PORT] (default: resolv.conf).",
        ),
    ] = None,
    dnsbl: Annotated[
        list[str] | None,
        typer.Option("--dnsbl", help="A DNS blocklist zone (repeat; replaces the defaults)."),
    ] = None,
    no_dnsbl: Annotated[bool, typer.Option("--no-dnsbl", help="Query no blocklist.")] = False,
    ranges_cache: Annotated[
        Path | None,
        typer.Option("--ranges-cache", help="Where `fixedip ranges update` put the range files."),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA bundle that signed an https:// gateway.")
    ] = None,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure", help="Allow a token over plain http:// to a public address."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds per echo request and DNS query.")
    ] = ECHO_TIMEOUT_S,
    watch: Annotated[
        float | None,
        typer.Option("--watch", help="Repeat every S seconds and print only what changed."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", help="With --watch: stop after N runs.")
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            "--metrics-file",
            help="Write the result in Prometheus text format (node_exporter textfile collector).",
        ),
    ] = None,
) -> None:
    """What IP does the internet see, whose range is it in, its reverse DNS, DNS
    blocklists, and is it on the vendor's allowlist.

    Exit status: 0 all pass, 1 a warning (or a result that could not be determined),
    2 a failure, 3 the check could not run (including a bad option).
    """
    output = _format(output)
    if admin is not None and not admin.startswith(("http://", "https://")):
        raise typer.BadParameter("use the admin API's URL, e.g. http://127.0.0.1:9090")
    opts = CheckOptions(
        admin=admin,
        expect=_ips(expect or [], "--expect"),
        allowlist=allowlist,
        echo_urls=[] if no_echo else _urls(echo or list(DEFAULT_ECHO_URLS)),
        dnsbl_zones=[] if no_dnsbl else list(dnsbl or DEFAULT_ZONES),
        ranges_cache=ranges_cache or default_cache_dir(),
        timeout_s=timeout,
    )
    try:
        if via:
            opts.via = parse_via(via, str(ca) if ca else None, allow_insecure)
        if resolver:
            opts.resolver = parse_server(resolver)
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(COULD_NOT_RUN) from None
    if watch is None:
        report = run_check(opts)
        _write_metrics(metrics_file, report)
        _print_report(report, output)
        raise typer.Exit(report.exit_code)
    if watch <= 0 or (count is not None and count < 1):
        raise typer.BadParameter("--watch needs S > 0 and --count N >= 1")
    raise typer.Exit(_watch(opts, output, watch, count, metrics_file))


def _print_report(report: Report, output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        report.render(Console())


def _write_metrics(path: Path | None, report: Report) -> None:
    if path is None:
        return
    try:
        write_metrics(path, report, time.time())
    except OSError as exc:
        typer.echo(f"error: could not write {path}: {exc.strerror or exc}", err=True)


def _watch(
    opts: CheckOptions, output: str, interval: float, count: int | None, metrics: Path | None
) -> int:
    """Run until SIGTERM/SIGINT or `count` runs; the first report whole, then changes."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    console = Console()
    last: Report | None = None
    runs = 0
    try:
        while not stop.is_set():
            report = run_check(opts)
            runs += 1
            _write_metrics(metrics, report)
            _print_changes(console, output, last, report)
            last = report
            if count is not None and runs >= count:
                break
            stop.wait(interval)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return last.exit_code if last else COULD_NOT_RUN


def _print_changes(console: Console, output: str, last: Report | None, report: Report) -> None:
    if last is None:
        if output == "json":
            typer.echo(json.dumps({"type": "report", **report.to_json()}))
        else:
            report.render(console, title=f"fixedip check {report.checked_at}")
        return
    diff = changes(last.rows, report.rows)
    new_problems = report.could_not_run != last.could_not_run
    if not diff and not new_problems:
        return
    if output == "json":
        line: dict[str, Any] = {
            "type": "changes",
            "checked_at": report.checked_at,
            "exit_code": report.exit_code,
            "could_not_run": report.could_not_run,
            "changes": diff,
        }
        typer.echo(json.dumps(line))
        return
    table = Table(title=f"changes at {report.checked_at} (exit status {report.exit_code})")
    for column in ("check", "subject", "was", "now", "reason"):
        table.add_column(column, overflow="fold")
    for entry in diff:
        table.add_row(
            entry["check"], entry["subject"], entry["was"] or "—", entry["status"], entry["reason"]
        )
    console.print(table)
    for reason in report.could_not_run:
        console.print(f"[red]could not run:[/] {reason}")


# --- fixedip ranges --------------------------------------------------------------------


@ranges_app.command("update")
def ranges_update(
    cache: CacheOption = None,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help=f"NAME=URL: fetch only the named sources, from these URLs. Names: "
            f"{', '.join(SOURCES)}.",
        ),
    ] = None,
    output: FormatOption = "table",
) -> None:
    """Fetch the providers' range files (AWS, Google Cloud, Azure, Cloudflare, Oracle,
    DigitalOcean) into the cache, keeping each one's publication date.

    A source that fails keeps its previous file. Exit status: 0 all fetched (or
    unchanged), 1 some failed, 2 bad arguments.
    """
    output = _format(output)
    urls: dict[str, str] = {}
    for item in source or []:
        name, sep, url = item.partition("=")
        if not sep or name not in SOURCES or not url.startswith(("http://", "https://")):
            raise typer.BadParameter(
                f"{item!r}: use NAME=URL with NAME one of {', '.join(SOURCES)}",
                param_hint="--source",
            )
        urls[name] = url
    directory = cache or default_cache_dir()
    try:
        results = update(directory, urls or None)
    except (OSError, RangeFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if output == "json":
        typer.echo(
            json.dumps(
                {"cache": str(directory), "sources": [r.__dict__ for r in results]}, indent=2
            )
        )
    else:
        table = Table(title=f"range files in {directory}")
        for column in ("source", "result", "published", "detail"):
            table.add_column(column, overflow="fold")
        for r in results:
            style = {"updated": "green", "unchanged": "green", "failed": "red"}[r.status]
            table.add_row(r.name, f"[{style}]{r.status}[/]", (r.published or "—")[:19], r.detail)
        Console().print(table)
    failed = [r for r in results if r.status == "failed"]
    raise typer.Exit(1 if failed else 0)


@ranges_app.command("lookup")
def ranges_lookup(
    ip: Annotated[str, typer.Argument(help="The IP address to look up.")],
    cache: CacheOption = None,
    output: FormatOption = "table",
) -> None:
    """Which published cloud ranges contain IP (every cached file at once).

    Exit status: 0 found in none or in customer-assignable space, 1 in a shared pool,
    2 bad arguments, 3 no range files.
    """
    output = _format(output)
    address = _ips([ip], "IP")[0]
    try:
        index = RangeIndex.load(cache or default_cache_dir())
    except RangeFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(COULD_NOT_RUN) from None
    matches = index.lookup(address)
    kind, _ = classify(matches)
    if output == "json":
        typer.echo(
            json.dumps(
                {
                    "ip": address,
                    "kind": kind,
                    "ranges": [
                        {
                            "prefix": str(n),
                            "provider": c.provider,
                            "service": c.service,
                            "region": c.region,
                            "kind": c.kind,
                            "source": c.source,
                            "published": index.sources.get(c.source, {}).get("published"),
                        }
                        for n, c in matches
                    ],
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"{address}: {kind}")
        for column in ("prefix", "provider", "service", "region", "kind", "source"):
            table.add_column(column)
        for n, c in matches:
            table.add_row(str(n), c.provider, c.service, c.region, c.kind, c.source)
        Console().print(table)
    raise typer.Exit(1 if kind == "shared" else 0)
