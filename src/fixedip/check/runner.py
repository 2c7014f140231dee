"""One run of `fixedip check`: every check in order, collected into a Report.

Order matters: the gateway's view and the echo answers decide which IPs the remaining
checks (cloud range, reverse DNS, blocklists, allowlist) are run on. IPs that only a
disagreeing minority of echo endpoints reported are not checked further.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fixedip.check.allowlist import allowlist_rows, read_allowlist
from fixedip.check.dnsbl import DEFAULT_ZONES, dnsbl_row
from fixedip.check.echo import (
    DEFAULT_ECHO_URLS,
    ECHO_TIMEOUT_S,
    EchoAnswer,
    Via,
    ask_all,
    judge,
)
from fixedip.check.gateway import GatewayView, ask_admin, ask_gateway, cross_check
from fixedip.check.rangefiles import RangeFileError
from fixedip.check.ranges import RangeIndex, attribution_row, default_cache_dir
from fixedip.check.rdns import rdns_row
from fixedip.check.report import CheckError, Report, Row, Status
from fixedip.check.resolver import QUERY_TIMEOUT_S, Resolver, system_resolver

MAX_DNS_WORKERS = 16


@dataclass
class CheckOptions:
    via: Via | None = None
    admin: str | None = None  # a gateway's admin API: the whole pool's public IPs
    expect: list[str] = field(default_factory=list)
    allowlist: Path | None = None
    echo_urls: list[str] = field(default_factory=lambda: list(DEFAULT_ECHO_URLS))
    resolver: tuple[str, int] | None = None  # None: the first nameserver of resolv.conf
    dnsbl_zones: list[str] = field(default_factory=lambda: list(DEFAULT_ZONES))
    ranges_cache: Path = field(default_factory=default_cache_dir)
    timeout_s: float = ECHO_TIMEOUT_S
    # How to ask the echo endpoints (urls, timeout): default `ask_all` (directly or --via);
    # the gateway asks from one of its egress IPs (fixedip.check.periodic).
    ask: Callable[[list[str], float], list[EchoAnswer]] | None = None


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def run_check(opts: CheckOptions) -> Report:
    report = Report(checked_at=datetime.now(UTC).isoformat(timespec="seconds"))
    # Parse the range files while the echo requests are in flight.
    with ThreadPoolExecutor(max_workers=1) as background:
        loading = background.submit(RangeIndex.load_cached, opts.ranges_cache)
        _gather(opts, report, loading)
    return report


def _gather(opts: CheckOptions, report: Report, loading: Future[RangeIndex]) -> None:
    expected = set(opts.expect)
    view: GatewayView | None = None
    pool_ips: list[str] = []
    try:
        if opts.admin is not None:
            pool_ips, row = ask_admin(opts.admin, opts.timeout_s)
            report.add(row)
        if opts.via is not None:
            view, row = ask_gateway(opts.via, opts.timeout_s)
            report.add(row)
        answers = _ask(opts) if opts.echo_urls else []
    except CheckError as exc:
        report.could_not_run.append(str(exc))
        return
    gateway_ips = _unique((view.all_ips if view else []) + pool_ips)
    pool = set(gateway_ips)
    verdict = judge(answers, expected, pool)
    if answers:
        report.rows += verdict.rows
        if not verdict.answered:
            report.could_not_run.append(
                "no echo endpoint answered, so the IP the internet sees is unknown"
            )
    if view is not None and opts.via is not None:
        report.rows += cross_check(view, verdict.trusted, expected, opts.via.shown)
    unexpected = [ip for ip in pool_ips if expected and ip not in expected]
    if unexpected and opts.admin is not None:
        report.add(
            Row(
                "gateway pool vs expect",
                opts.admin,
                Status.FAIL,
                f"the pool may leave from {', '.join(unexpected)}, which is not expected",
            )
        )
    subjects = _unique(verdict.trusted + gateway_ips + opts.expect)
    report.egress_ips = subjects
    if not subjects:
        if not report.could_not_run:
            report.could_not_run.append("no egress IP to check: give --echo, --via or --expect")
        return

    index = _ranges(loading, report)
    claimed = expected | pool
    if index is not None:
        for ip in subjects:
            report.add(attribution_row(index, ip, ip in claimed))
    report.rows += _dns_rows(opts, subjects)
    if opts.allowlist is not None:
        try:
            entries = read_allowlist(opts.allowlist)
        except CheckError as exc:
            report.could_not_run.append(str(exc))
            return
        ours = gateway_ips or opts.expect or verdict.trusted[:1]
        report.rows += allowlist_rows(entries, ours, index, opts.allowlist.name)


def _ask(opts: CheckOptions) -> list[EchoAnswer]:
    if opts.ask is not None:
        return opts.ask(opts.echo_urls, opts.timeout_s)
    return ask_all(opts.echo_urls, opts.via, opts.timeout_s)


def _ranges(loading: Future[RangeIndex], report: Report) -> RangeIndex | None:
    try:
        index = loading.result()
    except RangeFileError as exc:
        report.add(Row("cloud range", "cache", Status.SKIP, str(exc)))
        return None
    report.add(index.freshness_row())
    return index


def _dns_rows(opts: CheckOptions, subjects: list[str]) -> list[Row]:
    server = opts.resolver or system_resolver()
    if server is None:
        return [
            Row("reverse dns", "resolver", Status.UNKNOWN, "no resolver: pass --resolver HOST:PORT")
        ]
    resolver = Resolver(server, min(opts.timeout_s, QUERY_TIMEOUT_S))
    jobs = []
    with ThreadPoolExecutor(max_workers=MAX_DNS_WORKERS) as pool:
        for ip in subjects:
            jobs.append(pool.submit(rdns_row, resolver, ip))
            jobs += [pool.submit(dnsbl_row, resolver, ip, zone) for zone in opts.dnsbl_zones]
        return [job.result() for job in jobs]
