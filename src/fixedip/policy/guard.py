"""The SSRF guard: vet every resolved address before the gateway connects to it.

The gateway resolves a name once, asks `Guard.vet` about each address, and connects only
to an address that passed. That closes the classic holes of egress proxies: a name that
resolves to 169.254.169.254, a literal `::ffff:127.0.0.1`, a NAT64 or 6to4 spelling of a
private address, and a request that loops back into the gateway's own listener.

Pure code: no sockets and no DNS here, so every rule is unit-tested in memory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeAlias

from fixedip.policy.decision import ALLOWED, Decision, Reason

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _deny(*entries: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(network), label) for network, label in entries)


# Destinations no client may reach unless the operator makes an exception. The most
# specific network names the refusal (169.254.169.254 says "metadata", not "link-local").
DEFAULT_DENY: tuple[tuple[IPNetwork, str], ...] = _deny(
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this-network"),  # RFC 791; Linux connects 0.0.0.0 to the host itself
    ("10.0.0.0/8", "private"),  # RFC 1918
    ("100.64.0.0/10", "cgnat"),  # RFC 6598 shared address space
    ("100.100.100.200/32", "metadata"),  # Alibaba Cloud instance metadata
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # RFC 3927
    ("169.254.169.254/32", "metadata"),  # AWS, GCP, Azure, OCI instance metadata
    ("169.254.170.2/32", "metadata"),  # AWS ECS task metadata and credentials
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol"),  # RFC 6890
    ("192.0.2.0/24", "documentation"),  # TEST-NET-1, RFC 5737
    ("192.88.99.0/24", "6to4-relay"),  # RFC 7526
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmark"),  # RFC 2544
    ("198.51.100.0/24", "documentation"),  # TEST-NET-2
    ("203.0.113.0/24", "documentation"),  # TEST-NET-3
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/8", "reserved"),  # RFC 4291; holds the embedded-IPv4 forms below
    ("::/96", "ipv4-compatible"),  # deprecated by RFC 4291
    ("::ffff:0:0/96", "ipv4-mapped"),  # ::ffff:127.0.0.1 reaches 127.0.0.1
    ("::ffff:0:0:0/96", "ipv4-translated"),  # SIIT, RFC 2765
    ("64:ff9b::/96", "nat64"),  # RFC 6052: a NAT64 gateway reaches the embedded IPv4
    ("64:ff9b:1::/48", "nat64"),  # RFC 8215 local-use NAT64
    ("100::/64", "discard"),  # RFC 6666
    ("2001::/23", "ietf-protocol"),  # RFC 2928
    ("2001::/32", "teredo"),  # RFC 4380: tunnels to an embedded IPv4
    ("2001:db8::/32", "documentation"),  # RFC 3849
    ("2002::/16", "6to4"),  # RFC 3056: tunnels to an embedded IPv4
    ("3fff::/20", "documentation"),  # RFC 9637
    ("5f00::/16", "srv6"),  # RFC 9602 segment identifiers
    ("fc00::/7", "unique-local"),  # RFC 4193
    ("fd00:ec2::254/128", "metadata"),  # AWS instance metadata over IPv6
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),  # deprecated by RFC 3879
    ("ff00::/8", "multicast"),
)

# Belt and braces after the table: what the standard library classifies as not public.
_STDLIB_CHECKS: tuple[tuple[str, str], ...] = (
    ("is_loopback", "loopback"),
    ("is_unspecified", "unspecified"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)


def describe_deny_list() -> list[str]:
    """The deny list as lines for people: docs, `fixedip config check`, startup logs."""
    lines = [f"{network!s:<20} {label}" for network, label in DEFAULT_DENY]
    lines.append(
        "any other address that Python's ipaddress calls loopback, unspecified, "
        "link-local, multicast, reserved or private"
    )
    lines.append("any IPv6 address with a zone id (fe80::1%eth0)")
    return lines


class _PrefixTable:
    """Longest-prefix match over a fixed set of networks of one address family.

    One dict lookup per distinct prefix length (a dozen or so), on integers: no string
    parsing and no object allocation per call.
    """

    __slots__ = ("_levels",)

    def __init__(self, bits: int, entries: Iterable[tuple[IPNetwork, str]]) -> None:
        by_length: dict[int, dict[int, tuple[IPNetwork, str]]] = {}
        for network, label in entries:
            level = by_length.setdefault(network.prefixlen, {})
            level.setdefault(int(network.network_address), (network, label))
        all_ones = (1 << bits) - 1
        self._levels = tuple(
            (all_ones ^ ((1 << (bits - length)) - 1), level)
            for length, level in sorted(by_length.items(), reverse=True)
        )

    def lookup(self, address: IPAddress) -> tuple[IPNetwork, str] | None:
        value = int(address)
        for mask, level in self._levels:
            hit = level.get(value & mask)
            if hit is not None:
                return hit
        return None


def _tables(entries: Iterable[tuple[IPNetwork, str]]) -> dict[int, _PrefixTable]:
    entries = tuple(entries)
    return {
        4: _PrefixTable(32, (e for e in entries if e[0].version == 4)),
        6: _PrefixTable(128, (e for e in entries if e[0].version == 6)),
    }


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped
    return None


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped address as the IPv4 address it reaches; others unchanged."""
    embedded = _embedded_ipv4(address)
    return address if embedded is None else embedded


def _endpoint(address: IPAddress, port: int) -> str:
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


_DENY_TABLES = _tables(DEFAULT_DENY)
_REACHES_IPV4 = frozenset(
    {"ipv4-compatible", "ipv4-mapped", "ipv4-translated", "nat64", "6to4", "teredo"}
)


class Guard:
    """Decides whether the gateway may connect to one resolved address and port.

    Rules, first match wins: a connection back into the gateway's own listener is a
    loop (even when an exception covers it); an exact `allow_endpoints` entry or an
    `allow_cidrs` network is allowed; an address on the deny list, or one the standard
    library calls non-public, is denied; anything else is allowed. An IPv4-mapped IPv6
    address is also judged as the IPv4 address it reaches, and an IPv6 exception opens a
    range that reaches IPv4 (mapped, compatible, NAT64, 6to4, Teredo) only when the
    exception lies inside that range.
    """

    __slots__ = (
        "_allow_cidrs",
        "_allow_endpoints",
        "_local",
        "_own_any",
        "_own_exact",
        "_own_on_port",
    )

    def __init__(
        self,
        allow_cidrs: Iterable[IPNetwork] = (),
        allow_endpoints: Iterable[tuple[IPAddress, int]] = (),
        own_endpoints: Iterable[tuple[IPAddress, int]] = (),
        local_addresses: Iterable[IPAddress] = (),
    ) -> None:
        self._allow_cidrs = _tables((network, "") for network in allow_cidrs)
        self._allow_endpoints = frozenset(
            (_plain(address), port) for address, port in allow_endpoints
        )
        self._own_exact: dict[tuple[IPAddress, int], str] = {}
        self._own_any: dict[int, str] = {}
        self._own_on_port: dict[int, str] = {}
        for address, port in own_endpoints:
            name = f"listener {_endpoint(address, port)}"
            if address.is_unspecified:
                self._own_any.setdefault(port, name)
            else:
                self._own_exact.setdefault((_plain(address), port), name)
            self._own_on_port.setdefault(port, name)
        self._local = frozenset(_plain(address) for address in local_addresses)

    def vet(self, address: IPAddress, port: int) -> Decision:
        """The verdict on connecting to `address`:`port`; ALLOWED or a GUARD_* refusal."""
        plain = _plain(address)
        listener = self._listener_at(plain, port)
        if listener is not None:
            return Decision(Reason.GUARD_LOOP, rule=listener)
        if self._is_exception(address, port) or (
            plain is not address and self._is_exception(plain, port)
        ):
            return ALLOWED
        return _deny_decision(address)

    def _listener_at(self, address: IPAddress, port: int) -> str | None:
        if port not in self._own_on_port:
            return None
        exact = self._own_exact.get((address, port))
        if exact is not None:
            return exact
        if address.is_unspecified:
            # Linux sends a connection to 0.0.0.0 or :: to the host itself (to the bound
            # source address), so it can reach a listener on any of the host's addresses.
            return self._own_on_port.get(port)
        if address.is_loopback or address in self._local:
            return self._own_any.get(port)
        return None

    def _is_exception(self, address: IPAddress, port: int) -> bool:
        if (address, port) in self._allow_endpoints:
            return True
        # A zone id picks an interface; only an exact endpoint may grant that.
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            return False
        hit = self._allow_cidrs[address.version].lookup(address)
        if hit is None:
            return False
        # A range that reaches an IPv4 address (::ffff:169.254.169.254, NAT64, 6to4...)
        # opens only to an exception inside it: a broad ::/0 or 2000::/3 is about IPv6.
        denied = _DENY_TABLES[address.version].lookup(address)
        return (
            denied is None
            or denied[1] not in _REACHES_IPV4
            or hit[0].prefixlen >= denied[0].prefixlen
        )


def _deny_decision(address: IPAddress) -> Decision:
    hit = _DENY_TABLES[address.version].lookup(address)
    if hit is not None:
        network, label = hit
        return Decision(Reason.GUARD_DENIED, rule=f"{label} {network}")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return Decision(Reason.GUARD_DENIED, rule=f"zone-id %{address.scope_id}")
    for attribute, label in _STDLIB_CHECKS:
        if getattr(address, attribute):
            return Decision(Reason.GUARD_DENIED, rule=f"{label} (ipaddress.{attribute})")
    return ALLOWED
