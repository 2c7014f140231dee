"""Who is calling: Proxy-Authorization / SOCKS5 credentials checked against hashed tokens.

scrypt is slow on purpose, so verdicts are cached process-wide, keyed by a SHA-256 of the
presented credentials: a keep-alive client (or a reconnecting one) pays the hash once.
Failures are cached too, so a flood of wrong tokens cannot burn the CPU. A raw
Proxy-Authorization value is cached the same way (`check_header`), so a client opening
a connection per request is not decoded again each time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fixedip.bounded import remember
from fixedip.policy.decision import ALLOWED, Decision, Reason
from fixedip.policy.tokens import verify_token

CACHE_MAX_ENTRIES = 4096

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def token_hash(self) -> Sequence[str]: ...
    @property
    def source_cidrs(self) -> Sequence[IPNetwork]: ...


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def parse_basic(header_value: bytes) -> Credentials | None:
    """Credentials from a `Basic` Proxy-Authorization value, or None if it is not one."""
    scheme, _, rest = header_value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        raw = base64.b64decode(rest.strip(), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return Credentials(user, password)


C = TypeVar("C", bound=ClientLike)


class Authenticator(Generic[C]):
    """Maps credentials to a configured client; one instance per configuration generation."""

    def __init__(self, clients: Iterable[C]) -> None:
        self._clients: dict[str, C] = {c.name: c for c in clients}
        self._cache: dict[bytes, C | None] = {}
        # SHA-256 of a whole Proxy-Authorization value → (is it Basic credentials, whose)
        self._headers: dict[bytes, tuple[bool, C | None]] = {}
        self._sources: dict[tuple[str, IPAddress], bool] = {}  # (client, peer) → in its CIDRs

    @property
    def has_clients(self) -> bool:
        return bool(self._clients)

    def authenticate(self, creds: Credentials | None) -> C | None:
        if creds is None:
            return None
        key = hashlib.sha256(
            creds.username.encode("utf-8", "surrogateescape")
            + b"\0"
            + creds.password.encode("utf-8", "surrogateescape")
        ).digest()
        try:
            return self._cache[key]
        except KeyError:
            pass
        client = self._clients.get(creds.username)
        verdict: C | None = None
        if client is not None and any(verify_token(creds.password, h) for h in client.token_hash):
            verdict = client
        return remember(self._cache, key, verdict, CACHE_MAX_ENTRIES)

    def check(self, creds: Credentials | None, peer: IPAddress) -> tuple[C | None, Decision]:
        """Authenticate and apply the client's source-CIDR restriction."""
        if creds is None:
            return None, Decision(Reason.AUTH_REQUIRED)
        return self._verdict(self.authenticate(creds), peer)

    def check_header(self, value: bytes, peer: IPAddress) -> tuple[C | None, Decision]:
        """`check` for a raw Proxy-Authorization value. What the value says is cached by
        its SHA-256, so a client opening a connection per request has its header decoded
        once, not every time (the value itself is never kept)."""
        key = hashlib.sha256(value).digest()
        try:
            basic, client = self._headers[key]
        except KeyError:
            creds = parse_basic(value)
            basic, client = creds is not None, self.authenticate(creds)
            remember(self._headers, key, (basic, client), CACHE_MAX_ENTRIES)
        if not basic:
            return None, Decision(Reason.AUTH_REQUIRED)
        return self._verdict(client, peer)

    def _verdict(self, client: C | None, peer: IPAddress) -> tuple[C | None, Decision]:
        if client is None:
            return None, Decision(Reason.AUTH_INVALID)
        key = (client.name, peer)
        allowed = self._sources.get(key)
        if allowed is None:
            allowed = remember(
                self._sources, key, source_allowed(peer, client.source_cidrs), CACHE_MAX_ENTRIES
            )
        if not allowed:
            return client, Decision(Reason.SOURCE_NOT_ALLOWED, rule=f"clients.{client.name}")
        return client, ALLOWED


def source_allowed(peer: IPAddress, cidrs: Sequence[IPNetwork]) -> bool:
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer.version == net.version and peer in net for net in cidrs)
