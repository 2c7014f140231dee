"""`[check]` inside the gateway: every `interval_s`, `fixedip check` from each egress IP.

The checks are the CLI's own (`run_check`), run in a small thread pool of their own so the
request path never waits on them. Only the echo requests differ: they leave bound to the
egress IP being checked, like client traffic, and the SSRF guard vets every address the
echo host resolves to (an echo endpoint is a vendor like any other). The latest report
per egress IP is kept for GET /checks, and summarised as `fixedip_check_*` metrics in the
gateway's registry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Gauge

from fixedip.check.echo import EchoAnswer, parse_echo_body
from fixedip.check.ranges import default_cache_dir
from fixedip.check.report import Report, Status
from fixedip.check.runner import CheckOptions, run_check
from fixedip.check.settings import CheckConfig
from fixedip.gateway.upstream import IP_BIND_ADDRESS_NO_PORT, IPAddress
from fixedip.policy.decision import Decision
from fixedip.proto.http1 import Body, EndOfMessage, ResponseHead, ResponseParser, serialize_head

log = logging.getLogger("fixedip.check")

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 4096  # an echo answer is an address, perhaps in a small JSON object
READ_CHUNK_BYTES = 4096
CHECK_THREADS = 2  # bounded: the checks share the machine with the request path
IDLE_S = 60.0  # how often to look again while the section is absent (after a reload)
USER_AGENT = b"fixedip-check"
STATUS_CODES = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2, Status.UNKNOWN: 3}
STATUS_NAMES = {code: status.value for status, code in STATUS_CODES.items()}

Vet = Callable[[IPAddress, int], Decision]
Resolve = Callable[[str, frozenset[int]], Awaitable[list[IPAddress]]]


class _Refused(Exception):
    pass


async def ask_from(
    url: str, bind: IPAddress, *, resolve: Resolve, vet: Vet, timeout_s: float
) -> EchoAnswer:
    """One echo request leaving from `bind`; never raises (except on cancellation)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _ask_from(url, bind, resolve, vet)
    except TimeoutError:
        return EchoAnswer(url, None, f"no answer within {timeout_s:g} s")
    except Exception as exc:  # any failure is this endpoint's "no answer"
        return EchoAnswer(url, None, str(exc) or type(exc).__name__)


async def _ask_from(url: str, bind: IPAddress, resolve: Resolve, vet: Vet) -> EchoAnswer:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    family = socket.AF_INET if bind.version == 4 else socket.AF_INET6
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await resolve(host, frozenset({family}))
    for address in addresses:  # as for client traffic: a name pointing inside is refused
        verdict = vet(address, port)
        if not verdict.allowed:
            raise _Refused(f"the guard refuses {address}: {verdict.reason}")
    usable = [a for a in addresses if a.version == bind.version]
    if not usable:
        raise _Refused(f"{host} has no IPv{bind.version} address")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((str(bind), 0))
        await asyncio.get_running_loop().sock_connect(sock, (str(usable[0]), port))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(
        sock=sock,
        ssl=ssl.create_default_context() if tls else None,
        server_hostname=host if tls else None,
        limit=MAX_HEAD_BYTES,
    )
    try:
        writer.write(_request(parts.path or "/", parts.query, host, port, tls))
        status, body = await _read(reader)
    finally:
        writer.transport.abort()
    if status != 200:
        return EchoAnswer(url, None, f"answered {status}")
    ip = parse_echo_body(body)
    return EchoAnswer(url, ip, None if ip else "the answer holds no IP address")


def _request(path: str, query: str, host: str, port: int, tls: bool) -> bytes:
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        authority = f"{authority}:{port}"
    target = f"{path}?{query}" if query else path
    return serialize_head(
        f"GET {target} HTTP/1.1".encode("ascii"),
        [
            (b"Host", authority.encode("ascii")),
            (b"User-Agent", USER_AGENT),
            (b"Accept", b"*/*"),
            (b"Connection", b"close"),
        ],
    )


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    parser = ResponseParser(max_head_bytes=MAX_HEAD_BYTES)
    parser.expect("GET")
    status, body = 0, b""
    try:
        while True:
            data = await reader.read(READ_CHUNK_BYTES)
            events = parser.feed(data) if data else parser.feed_eof()
            for event in events:
                if isinstance(event, ResponseHead) and event.status >= 200:
                    status = event.status
                elif isinstance(event, Body):
                    body += event.data
                    if len(body) > MAX_BODY_BYTES:
                        raise ValueError(f"the answer is longer than {MAX_BODY_BYTES} bytes")
                elif isinstance(event, EndOfMessage) and status:
                    return status, body
            if not data:
                raise ConnectionError("the server closed before the answer was complete")
    finally:
        parser.release()


class CheckMetrics:
    """`fixedip_check_*` gauges in the gateway's registry, labelled by egress (bind) IP."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.status = Gauge(
            "fixedip_check_status",
            "Worst result of a check from an egress IP: 0 pass, 1 warn, 2 fail, 3 unknown.",
            ["egress", "check"],
            registry=registry,
        )
        self.exit_code = Gauge(
            "fixedip_check_exit_code",
            "Overall result per egress IP, as `fixedip check` exits: 0 ok, 1 warning, "
            "2 failure, 3 could not run.",
            ["egress"],
            registry=registry,
        )
        self.last_run = Gauge(
            "fixedip_check_last_run_timestamp_seconds",
            "When the checks from the egress IP last finished (Unix time).",
            ["egress"],
            registry=registry,
        )
        self.observed = Gauge(
            "fixedip_check_observed_ip_info",
            "A public address the echo endpoints saw for the egress IP on the last run.",
            ["egress", "observed"],
            registry=registry,
        )

    def publish(self, latest: dict[str, tuple[Report, float]]) -> None:
        for gauge in (self.status, self.exit_code, self.last_run, self.observed):
            gauge.clear()
        for egress, (report, finished) in latest.items():
            self.exit_code.labels(egress).set(report.exit_code)
            self.last_run.labels(egress).set(finished)
            for check, code in worst_by_check(report).items():
                self.status.labels(egress, check).set(code)
            for ip in observed(report):
                self.observed.labels(egress, ip).set(1)


def worst_by_check(report: Report) -> dict[str, int]:
    """Each check's worst row (skipped rows do not count)."""
    worst: dict[str, int] = {}
    for row in report.rows:
        code = STATUS_CODES.get(row.status)
        if code is not None:
            worst[row.check] = max(code, worst.get(row.check, 0))
    return worst


def observed(report: Report) -> list[str]:
    for row in report.rows:
        if row.check == "egress ip" and row.subject == "echo":
            return list(row.data.get("seen", {}))
    return []


class PeriodicChecks:
    """The background task (`run`) and its latest results (`snapshot`)."""

    def __init__(
        self,
        config: Callable[[], CheckConfig | None],
        egress: Callable[[], list[tuple[IPAddress, str]]],
        resolve: Resolve,
        vet: Vet,
        registry: CollectorRegistry,
    ) -> None:
        self._config = config  # read on every run, so a reload applies to the next one
        self._egress = egress  # (bind, public) of each usable egress IP
        self._resolve = resolve
        self._vet = vet
        self._metrics = CheckMetrics(registry)
        self._threads = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="fixedip-check")
        self._latest: dict[str, tuple[Report, float]] = {}
        self._public: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            config = self._config()
            if config is not None:
                await self.run_once(config)
            await asyncio.sleep(config.interval_s if config is not None else IDLE_S)

    async def run_once(self, config: CheckConfig) -> None:
        targets = self._egress()
        await asyncio.gather(*(self._check(config, bind, public) for bind, public in targets))
        current = {str(bind) for bind, _ in targets}
        for gone in set(self._latest) - current:  # removed from the pool by a reload
            del self._latest[gone]
        self._metrics.publish(self._latest)

    async def _check(self, config: CheckConfig, bind: IPAddress, public: str) -> None:
        assert self._loop is not None
        opts = CheckOptions(
            expect=[str(ip) for ip in config.expect] or [public],
            allowlist=Path(config.allowlist) if config.allowlist else None,
            echo_urls=list(config.echo),
            resolver=config.resolver_address(),
            dnsbl_zones=list(config.dnsbl),
            ranges_cache=Path(config.ranges_cache) if config.ranges_cache else default_cache_dir(),
            timeout_s=config.timeout_s,
            ask=partial(self._ask_threadsafe, self._loop, bind),
        )
        try:
            report = await self._loop.run_in_executor(self._threads, run_check, opts)
        except Exception as exc:  # one line, never a traceback: the next run tries again
            log.warning("check from egress %s could not run: %s", bind, exc or type(exc).__name__)
            return
        self._latest[str(bind)] = (report, time.time())
        self._public[str(bind)] = public
        if report.exit_code:
            problems = report.could_not_run + [
                f"{r.check} {r.subject}: {r.status.value}: {r.reason}"
                for r in report.rows
                if r.status.exit_code
            ]
            log.warning(
                "check from egress %s: exit status %d: %s",
                bind,
                report.exit_code,
                "; ".join(problems[:3])
                + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""),
            )

    def _ask_threadsafe(
        self, loop: asyncio.AbstractEventLoop, bind: IPAddress, urls: list[str], timeout_s: float
    ) -> list[EchoAnswer]:
        """Called from a check thread: the echo requests run on the gateway's loop."""

        async def ask_all() -> list[EchoAnswer]:
            asks = (
                ask_from(u, bind, resolve=self._resolve, vet=self._vet, timeout_s=timeout_s)
                for u in urls
            )
            return list(await asyncio.gather(*asks))

        try:
            future = asyncio.run_coroutine_threadsafe(ask_all(), loop)
        except RuntimeError:  # the loop is closed: the gateway stopped
            return [EchoAnswer(u, None, "the gateway is stopping") for u in urls]
        try:
            return future.result(timeout_s + 1)
        except Exception as exc:  # a timeout or a cancellation by close()
            future.cancel()
            return [EchoAnswer(u, None, str(exc) or type(exc).__name__) for u in urls]

    def snapshot(self) -> dict[str, Any]:
        """GET /checks: the latest report from each egress IP."""
        config = self._config()
        return {
            "interval_s": config.interval_s if config is not None else None,
            "egress": [
                {
                    "egress": egress,
                    "public": self._public.get(egress),
                    "finished_at": finished,
                    "observed": observed(report),
                    "status": {c: STATUS_NAMES[n] for c, n in worst_by_check(report).items()},
                    **report.to_json(),
                }
                for egress, (report, finished) in self._latest.items()
            ],
        }

    def close(self) -> None:
        """Queued runs are dropped; a running one ends within its own timeouts."""
        self._threads.shutdown(wait=False, cancel_futures=True)
