"""`verify_egress()` (am I leaving from an expected IP?) and `guard()` (the cold-start
canary for function handlers)."""

from __future__ import annotations

import os

from fixedip.client._callables import is_async, wraps
from fixedip.client._endpoint import normalise_ips
from fixedip.client.errors import (
    ConfigurationError,
    EgressBlocked,
    EgressMismatch,
    FixedIPError,
    GatewayError,
    GatewayUnavailable,
)
from fixedip.client.gateway import Gateway

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable
    from typing import Any, Literal, ParamSpec, TypeVar

    from fixedip.client._http import Hop, Response

    P = ParamSpec("P")
    T = TypeVar("T")

CANARY_TIMEOUT_S = 3.0
VERIFY_TIMEOUT_S = 3.0
# Keys under which echo services report the caller's address (ipify, httpbin, the demo
# echo, the test vendor).
_ECHO_KEYS = ("ip", "origin", "you_came_from", "peer", "client_ip", "remote_addr", "address")


class Egress:
    """What `verify_egress()` found.

    `ip`: the IP the gateway will use for this client's next request; `ips`: every IP
    it may use (round-robin and failover use them all); `client` and `strategy` as the
    gateway reports them; `gateway`: the (redacted) gateway that answered; `echo_ip`:
    the address the echo URL saw, when one was asked.
    """

    __slots__ = ("client", "echo_ip", "gateway", "ip", "ips", "strategy")

    def __init__(
        self,
        ip: str,
        ips: tuple[str, ...],
        client: str,
        strategy: str,
        gateway: str,
        echo_ip: str | None = None,
    ) -> None:
        self.ip = ip
        self.ips = ips
        self.client = client
        self.strategy = strategy
        self.gateway = gateway
        self.echo_ip = echo_ip

    def __repr__(self) -> str:
        echo = f", echo_ip={self.echo_ip!r}" if self.echo_ip else ""
        return (
            f"Egress(ip={self.ip!r}, ips={self.ips!r}, client={self.client!r}, "
            f"strategy={self.strategy!r}, gateway={self.gateway!r}{echo})"
        )


def verify_egress(
    expected: Iterable[str] | None = None,
    *,
    gateway: Gateway | None = None,
    echo_url: str | None = None,
    timeout_s: float = VERIFY_TIMEOUT_S,
) -> Egress:
    """Ask the gateway which IPs this client leaves from, and check them.

    `expected` defaults to the gateway's `expected_ips` (`FIXEDIP_EXPECTED_IPS`); when
    there are expected IPs, every IP the gateway may use for this client must be one of
    them, or EgressMismatch names the ones that are not. With `echo_url` (a service
    that answers with the caller's address, as plain text or JSON), one request also
    goes through the proxy and the address the echo saw is checked the same way.
    `gateway` defaults to `Gateway.from_env()`. A gateway that cannot be connected to
    is skipped for the next one in `FIXEDIP_URL`.

    >>> verify_egress(["203.0.113.7"])
    Egress(ip='203.0.113.7', ips=('203.0.113.7',), client='billing', ...)
    """
    gw = gateway if gateway is not None else Gateway.from_env()
    wanted = gw.expected_ips if expected is None else tuple(normalise_ips(expected))
    source, who = gw._whoami(timeout_s)
    ips = tuple(str(ip) for ip in who.get("egress_ips") or ())
    ip = who.get("egress_ip")
    if not ip:
        raise GatewayError(
            f"{source}: no egress IP is usable for client {who.get('client')!r} "
            "(the gateway's pool is down or quarantined)",
            503,
        )
    report = Egress(
        str(ip), ips or (str(ip),), str(who.get("client")), str(who.get("strategy")), source
    )
    if wanted:
        unexpected = tuple(x for x in report.ips if x not in wanted)
        if unexpected:
            raise EgressMismatch(unexpected, wanted, source)
    if echo_url is not None:
        report.echo_ip = _echo(gw, echo_url, timeout_s)
        if wanted and report.echo_ip not in wanted:
            raise EgressMismatch((report.echo_ip,), wanted, echo_url)
    return report


def _echo(gw: Gateway, url: str, timeout_s: float) -> str:
    import json

    from fixedip.client._http import GatewayUnreachable, TunnelRefused, fetch

    def ask(redacted: str, hop: Hop) -> Response:
        try:
            return fetch(url, timeout_s=timeout_s, via=hop)
        except TunnelRefused as exc:
            raise _refused(url, exc.response) from exc
        except GatewayUnreachable:
            raise
        except OSError as exc:
            raise GatewayError(f"echo {url} through {redacted} failed: {exc}", 0) from exc

    response = gw._failover(ask)
    if response.status != 200:
        raise _refused(url, response)
    text = response.body.decode("utf-8", "replace").strip()
    candidates = [text]
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        candidates = [str(data[k]).split(",")[0] for k in _ECHO_KEYS if data.get(k)]
    for candidate in candidates:
        try:
            return next(normalise_ips([candidate]))
        except (ConfigurationError, StopIteration):
            continue
    raise FixedIPError(
        f"echo {url} answered without an IP address (expected plain text or JSON with "
        f"one of {', '.join(_ECHO_KEYS)})"
    )


def _refused(url: str, response: Response) -> GatewayError:
    proxy_status = response.headers.get("proxy-status")
    why = f" ({proxy_status})" if proxy_status else ""
    return GatewayError(
        f"{url} through the gateway answered {response.status}{why}",
        response.status,
        proxy_status,
    )


def _from_gateway(response: Response) -> bool:
    """A refusal by fixedip itself (its RFC 9209 Proxy-Status names an error), not by
    the vendor."""
    value = response.headers.get("proxy-status", "")
    return any(m.strip().startswith("fixedip") and "error=" in m for m in value.split(","))


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger("fixedip.client")


class _Canary:
    """One guard's canary and its verdict, shared by every invocation in this process."""

    def __init__(
        self,
        url: str,
        on_block: str | None,
        statuses: tuple[int, ...],
        method: str,
        timeout_s: float,
        gateway: Gateway | None,
    ) -> None:
        import _thread

        self.url = url
        self.on_block = on_block
        self.statuses = statuses
        self.method = method
        self.timeout_s = timeout_s
        self.gateway = gateway
        self.passed = False
        self.lock = _thread.allocate_lock()

    def check(self) -> None:
        if self.passed:
            return
        with self.lock:
            if not self.passed:
                self._probe()

    def _gateway(self) -> Gateway | None:
        if self.gateway is None and os.environ.get("FIXEDIP_URL", "").strip():
            self.gateway = Gateway.from_env()
        return self.gateway

    def _probe(self) -> None:
        from fixedip.client._http import TunnelRefused, fetch

        gw = self._gateway()
        on_block = self.on_block or ("raise" if gw is not None else "exit")

        def send(redacted: str, hop: Hop | None) -> Response:
            return fetch(
                self.url, method=self.method, timeout_s=self.timeout_s, via=hop, read_body=False
            )

        try:
            response = send("", None) if gw is None else gw._failover(send)
        except TunnelRefused as exc:
            self._safe(f"the canary's CONNECT failed: {_refused(self.url, exc.response)}")
            return
        except (GatewayUnavailable, OSError) as exc:
            self._safe(f"canary {self.method} {self.url} failed ({exc})")
            return
        if response.status not in self.statuses:
            self.passed = True
            return
        if _from_gateway(response):
            self._safe(f"the gateway refused the canary: {_refused(self.url, response)}")
            return
        seen_ip = None
        if gw is not None:
            try:
                seen_ip = gw.whoami(self.timeout_s).get("egress_ip")
            except (FixedIPError, OSError):
                seen_ip = None
        blocked = EgressBlocked(self.url, response.status, seen_ip)
        _logger().error("%s; on_block=%s", blocked, on_block)
        if on_block == "exit":
            import logging
            import sys

            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(1)
        # Not cached: while blocked, each invocation asks again, so that a rotation at
        # the gateway (or a vendor that lifts the block) clears it.
        raise blocked

    def _safe(self, message: str) -> None:
        _logger().warning("%s; counted as safe", message)
        self.passed = True


def guard(
    canary_url: str,
    *,
    on_block: Literal["exit", "raise"] | None = None,
    statuses: Iterable[int] = (403,),
    method: str = "OPTIONS",
    timeout_s: float = CANARY_TIMEOUT_S,
    gateway: Gateway | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a function handler (sync or async) with a cold-start canary.

    The first invocation in a process sends one `method` request (OPTIONS, 3 s timeout)
    to `canary_url`, through the gateway when one is configured (`gateway`, or
    `FIXEDIP_URL`). A status in `statuses` means the vendor blocks this egress IP:
    the guard logs it with the IP the gateway reports, then

    - `on_block="exit"` ends the process with `os._exit(1)`; the platform starts a new
      worker, which on a shared-IP platform may get another address. The default
      without a gateway.
    - `on_block="raise"` raises EgressBlocked. The default with a gateway: a new worker
      leaves from the same gateway, so exiting changes nothing, while the gateway's
      quarantine rotates to another IP.

    Any other status, a timeout or a network error counts as safe (a vendor glitch must
    not kill workers), and so does a refusal by the gateway itself (logged as a
    warning). A safe verdict is kept for the life of the process: warm invocations make
    no request. A block is not kept: the next invocation asks again.

    >>> @guard("https://api.vendor.example/")
    ... def handler(event, context): ...
    """
    if on_block not in (None, "exit", "raise"):
        raise ConfigurationError(f'on_block={on_block!r}: use "exit" or "raise"')
    if not canary_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"canary URL {canary_url!r}: give an http:// or https:// URL")
    canary = _Canary(canary_url, on_block, tuple(statuses), method, timeout_s, gateway)

    def decorate(handler: Callable[P, T]) -> Callable[P, T]:
        if is_async(handler):
            run: Any = handler

            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                if not canary.passed:
                    import asyncio

                    await asyncio.to_thread(canary.check)
                return await run(*args, **kwargs)

            return wraps(guarded_async, handler)

        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            canary.check()
            return handler(*args, **kwargs)

        return wraps(guarded, handler)

    return decorate
