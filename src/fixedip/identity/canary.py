"""Canary probes: one small request to a destination's configured URL from one egress IP.

A destination may name a canary (`canary = { url = ..., method = "OPTIONS", ... }`).
When `Health` suspects an egress IP of being blocked it asks for the canary from that
IP (`CanaryRequest`); the gateway also runs it from every egress IP at start-up and every
`interval_s`. `probe()` is that request: it resolves the URL's host once, vets every
address with the SSRF guard like any other destination, connects *from the egress IP*,
sends one request and reads only the response head. Its result goes to
`Health.canary_result()`: a status in `blocked` quarantines, anything else (another
status, "error", "timeout") clears the suspicion.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fixedip.gateway.dns import Resolver
from fixedip.gateway.upstream import IP_BIND_ADDRESS_NO_PORT, IPAddress
from fixedip.identity.health import DEFAULT_CANARY_BLOCKED, CanaryResult, CanaryRule
from fixedip.policy.decision import Decision
from fixedip.proto.http1 import (
    ProtocolError,
    ResponseHead,
    ResponseParser,
    canonical_host,
    serialize_head,
)

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # a canary needs the status line; a bigger head is refused
READ_CHUNK_BYTES = 4096
USER_AGENT = b"fixedip-canary"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 section 5.6.2
_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]*$")  # a request target may hold nothing else
_KEYS = ("url", "method", "blocked", "interval_s", "timeout_s")


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """A destination's canary, validated on construction (ValueError says what is wrong).

    `method` is sent in upper case. The URL's host, port, scheme and request target are
    parsed once into `host`, `port`, `tls` and `target`.
    """

    url: str
    method: str = "OPTIONS"
    blocked: frozenset[int] = DEFAULT_CANARY_BLOCKED
    interval_s: float = 300.0
    timeout_s: float = 3.0
    host: str = field(init=False, repr=False, compare=False)
    is_ip: bool = field(init=False, repr=False, compare=False)
    port: int = field(init=False, repr=False, compare=False)
    tls: bool = field(init=False, repr=False, compare=False)
    target: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not _TOKEN.match(self.method):
            raise ValueError(
                f"canary method must be an HTTP method such as OPTIONS, not {self.method!r}"
            )
        object.__setattr__(self, "method", self.method.upper())
        object.__setattr__(self, "blocked", frozenset(self.blocked))
        if not self.blocked:
            raise ValueError("canary blocked must list at least one status, such as [403]")
        for status in self.blocked:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ValueError(
                    f"canary blocked statuses must be integers 100-599, not {status!r}"
                )
        for name in ("interval_s", "timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"canary {name} must be a number of seconds, not {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"canary {name} must be a positive number of seconds, not {value}")
        self._parse_url()

    def _parse_url(self) -> None:
        if not isinstance(self.url, str):
            raise ValueError(f"canary url must be a string, not {self.url!r}")
        url = self.url
        if not _VISIBLE_ASCII.match(url):
            raise ValueError(
                f"canary url {url!r} must not hold spaces, control or non-ASCII characters"
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"canary url {url!r} must start with http:// or https://")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"canary url {url!r} must not carry credentials")
        raw_host = parts.hostname
        if not raw_host:
            raise ValueError(f"canary url {url!r} has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"canary url {url!r} has an invalid port") from None
        if port == 0:
            raise ValueError(f"canary url {url!r} has an invalid port")
        try:
            host, is_ip = canonical_host(f"[{raw_host}]" if ":" in raw_host else raw_host)
        except ProtocolError as exc:
            raise ValueError(f"canary url {url!r}: {exc}") from None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "is_ip", is_ip)
        object.__setattr__(self, "port", port or _DEFAULT_PORTS[scheme])
        object.__setattr__(self, "tls", scheme == "https")
        object.__setattr__(self, "target", target)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> CanarySpec:
        """Build from a config table such as
        `{url = "https://api.vendor.example/", method = "OPTIONS", blocked = [403]}`."""
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown canary key {unknown[0]!r}; known keys: {', '.join(_KEYS)}")
        url = data.get("url")
        if url is None:
            raise ValueError('a canary needs a url, such as url = "https://api.vendor.example/"')
        if not isinstance(url, str):
            raise ValueError(f"canary url must be a string, not {url!r}")
        method = data.get("method", "OPTIONS")
        if not isinstance(method, str):
            raise ValueError(f"canary method must be a string, not {method!r}")
        blocked_raw = data.get("blocked", sorted(DEFAULT_CANARY_BLOCKED))
        if isinstance(blocked_raw, str | bytes) or not isinstance(
            blocked_raw, list | tuple | set | frozenset
        ):
            raise ValueError(
                f"canary blocked must be a list of statuses, such as [403], not {blocked_raw!r}"
            )
        blocked: set[int] = set()
        for status in blocked_raw:
            if isinstance(status, bool) or not isinstance(status, int):
                raise ValueError(
                    f"canary blocked statuses must be integers 100-599, not {status!r}"
                )
            blocked.add(status)
        numbers: dict[str, float] = {}
        for name in ("interval_s", "timeout_s"):
            if name not in data:
                continue
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"canary {name} must be a number of seconds, not {value!r}")
            numbers[name] = float(value)
        return cls(url=url, method=method, blocked=frozenset(blocked), **numbers)

    @property
    def rule(self) -> CanaryRule:
        """What `Health` needs to know about this canary (`BlockRule.canary`)."""
        return CanaryRule(blocked=self.blocked, timeout_s=self.timeout_s)


async def probe(
    spec: CanarySpec,
    egress_bind: IPAddress,
    *,
    resolver: Resolver,
    guard_vet: Callable[[IPAddress, int], Decision],
    families: frozenset[int],
    ca_file: str | None = None,
) -> CanaryResult:
    """Run `spec` once from `egress_bind`: the response status, or "error" or "timeout".

    Everything (lookup, connect, TLS, the response head) must finish within
    `spec.timeout_s`. Never raises, except that cancelling the caller cancels the probe.
    A guard refusal of any address the host resolves to is "error" and nothing connects.
    """
    try:
        async with asyncio.timeout(spec.timeout_s):
            return await _probe(spec, egress_bind, resolver, guard_vet, families, ca_file)
    except TimeoutError:
        log.info("canary from %s to %s timed out after %ss", egress_bind, spec.host, spec.timeout_s)
        return "timeout"
    except Exception as exc:  # any failure is "error": the caller only needs the verdict
        log.info(
            "canary from %s to %s failed: %s", egress_bind, spec.host, exc or type(exc).__name__
        )
        return "error"


class _Refused(Exception):
    pass


async def _probe(
    spec: CanarySpec,
    egress_bind: IPAddress,
    resolver: Resolver,
    guard_vet: Callable[[IPAddress, int], Decision],
    families: frozenset[int],
    ca_file: str | None,
) -> int:
    if spec.is_ip:
        addresses: list[IPAddress] = [ipaddress.ip_address(spec.host)]
    else:
        addresses = await resolver.resolve(spec.host, families)
    # Every answer is vetted, as for client traffic: a name that points inside is refused.
    for address in addresses:
        verdict = guard_vet(address, spec.port)
        if not verdict.allowed:
            log.warning(
                "canary to %s refused by the guard: %s (%s)",
                spec.host,
                address,
                verdict.reason,
            )
            raise _Refused(f"guard refused {address}: {verdict.reason}")
    usable = [a for a in addresses if a.version == egress_bind.version]
    if not usable:
        raise _Refused(
            f"{spec.host} has no IPv{egress_bind.version} address for egress {egress_bind}"
        )
    sock = await _connect(egress_bind, usable[0], spec.port)
    context = _tls_context(ca_file) if spec.tls else None
    reader, writer = await asyncio.open_connection(
        sock=sock,
        ssl=context,
        server_hostname=spec.host if context is not None else None,
        limit=MAX_HEAD_BYTES,
    )
    try:
        writer.write(_request(spec))
        return await _read_status(reader, spec.method)
    finally:
        writer.transport.abort()  # only the head matters: no lingering on the body


async def _connect(bind: IPAddress, address: IPAddress, port: int) -> socket.socket:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Bound to the egress IP like real traffic, the port chosen at connect time.
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((str(bind), 0))
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
    except BaseException:
        sock.close()
        raise
    return sock


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # With a CA file only that bundle is trusted; otherwise the system store.
    return ssl.create_default_context(cafile=ca_file)


def _request(spec: CanarySpec) -> bytes:
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    if spec.port != (443 if spec.tls else 80):
        host = f"{host}:{spec.port}"
    return serialize_head(
        f"{spec.method} {spec.target} HTTP/1.1".encode("ascii"),
        [
            (b"Host", host.encode("ascii")),
            (b"User-Agent", USER_AGENT),
            (b"Connection", b"close"),
        ],
    )


async def _read_status(reader: asyncio.StreamReader, method: str) -> int:
    parser = ResponseParser(max_head_bytes=MAX_HEAD_BYTES)
    parser.expect(method)
    seen = 0
    try:
        while True:
            data = await reader.read(READ_CHUNK_BYTES)
            if not data:
                raise ConnectionError("the server closed before sending a response head")
            seen += len(data)
            for event in parser.feed(data):
                if isinstance(event, ResponseHead) and event.status >= 200:
                    return event.status
            if seen > MAX_HEAD_BYTES:
                raise ProtocolError(502, f"no response head within {MAX_HEAD_BYTES} bytes")
    finally:
        parser.release()
