"""What a destination is: expected (`--expect`), ours (`--local`), or internal by the
SSRF guard's deny list; and the times `--since` and `--baseline-until` accept.

The deny list is the gateway's own (`fixedip.policy.guard`), asked through a `Guard`
with no exceptions, so the analysis and the gateway never disagree on what is internal.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fixedip.policy.decision import Reason
from fixedip.policy.guard import DEFAULT_DENY, Guard, IPAddress, IPNetwork
from fixedip.policy.rules import normalise_host, parse_rule

_GUARD = Guard()
# Deny-list categories (the first word of a guard rule) of addresses a VPC routes to.
_ROUTABLE_INSIDE = frozenset({"private", "cgnat", "unique-local"})
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def is_ip_literal(host: str) -> bool:
    return ":" in host or host.rpartition(".")[2].isdigit()


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from ISO 8601 (UTC unless it says otherwise), epoch digits, or an
    age such as `90m`, `24h`, `7d` (that long before `now`). ValueError says how to write it.
    """
    value = text.strip()
    if value.isdigit():
        return float(value)
    relative = _RELATIVE.fullmatch(value)
    if relative:
        now = time.time() if now is None else now
        return now - int(relative.group(1)) * _UNIT_S[relative.group(2)]
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: write 2024-05-01T12:00:00Z, 2024-05-01, "
            "epoch seconds, or an age such as 24h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(epoch_s: float | None) -> str | None:
    """ISO 8601 in UTC, with milliseconds only when the time has a fraction."""
    if epoch_s is None or not math.isfinite(epoch_s):
        return None
    whole = int(epoch_s // 1)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    millis = round((epoch_s - whole) * 1000)
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


class AddressSet:
    """Names, `*.suffix` globs and networks: what `--expect` and `--local` accept.

    Names follow the allow rules (`*.example.com` is any depth of subdomain, never the
    apex); an address or CIDR matches addresses, IPv4-mapped IPv6 judged as IPv4.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.text: list[str] = []
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[IPNetwork] = []
        self.everything = False
        self._ipv4: list[tuple[int, int]] = []
        for raw in values:
            for value in raw.split(","):
                if value.strip():
                    self._add(value.strip())

    def _add(self, value: str) -> None:
        self.text.append(value)
        try:
            network = ipaddress.ip_network(value.replace("[", "").replace("]", ""), strict=False)
        except ValueError:
            pass
        else:
            self.networks.append(network)
            if network.version == 4:
                self._ipv4.append((int(network.network_address), int(network.netmask)))
            return
        if "/" in value or is_ip_literal(value):
            raise ValueError(
                f"'{value}' is not a valid address or network: write a host name, "
                "*.domain, address or CIDR, without a port"
            )
        try:
            rule = parse_rule(f"{value}:*")
        except ValueError as exc:
            raise ValueError(str(exc).replace(":*'", "'")) from None
        if rule.host == "*":
            self.everything = True
        elif rule.host is not None and rule.host.startswith("*."):
            self.suffixes.append(rule.host[1:])
        elif rule.host is not None:
            self.names.add(rule.host)

    def __bool__(self) -> bool:
        return bool(self.text)

    @property
    def has_networks(self) -> bool:
        return bool(self.networks) or self.everything

    def matches_name(self, host: str) -> bool:
        if self.everything:
            return True
        if is_ip_literal(host):
            return False
        host = normalise_host(host)
        return host in self.names or any(
            len(host) > len(suffix) and host.endswith(suffix) for suffix in self.suffixes
        )

    def matches_ipv4(self, value: int) -> bool:
        """`matches_address` for an IPv4 address given as its integer (the fast path)."""
        return self.everything or any(value & mask == net for net, mask in self._ipv4)

    def matches_address(self, address: IPAddress) -> bool:
        if self.everything:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class AddressInfo:
    """What the analysis needs to know about one address, computed once (memoised)."""

    internal: str | None  # the guard's deny-list entry, e.g. "metadata 169.254.169.254/32"
    expected: bool
    local: bool

    @property
    def reachable_inside(self) -> bool:
        """A private address a public client may connect to (through a NAT or a load
        balancer); metadata, link-local and loopback addresses never are."""
        return self.internal is not None and self.internal.split(" ", 1)[0] in _ROUTABLE_INSIDE


def _denied_first_octets() -> frozenset[int]:
    octets: set[int] = set()
    for network, _ in DEFAULT_DENY:
        if network.version == 4:
            first = int(network.network_address) >> 24
            octets.update(range(first, (int(network.broadcast_address) >> 24) + 1))
    return frozenset(octets)


# Every IPv4 address the guard refuses starts with one of these octets (its deny list
# covers all that Python's ipaddress calls non-public; tests/check/test_flows.py checks
# the fast path below against Guard.vet), so any other address skips the guard's
# slower checks.
_DENIED_FIRST_OCTETS = _denied_first_octets()


def classify_address(text: str, expect: AddressSet, local: AddressSet) -> AddressInfo | None:
    """What `text` is: internal by the SSRF guard's deny list, expected, ours. None when
    it is not an IP address. The guard runs with no exceptions, so the list is exactly
    what a default gateway refuses to connect to."""
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        packed = b""
    if packed and packed[0] not in _DENIED_FIRST_OCTETS:
        value = int.from_bytes(packed, "big")
        return _info(None, expect.matches_ipv4(value), bool(local) and local.matches_ipv4(value))
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    verdict = _GUARD.vet(address, 0)
    return _info(
        None if verdict.reason is Reason.ALLOWED else verdict.rule,
        expect.matches_address(address),
        bool(local) and local.matches_address(address),
    )


@functools.lru_cache(maxsize=1024)
def _info(internal: str | None, expected: bool, local: bool) -> AddressInfo:
    """One shared AddressInfo per distinct answer (there are a few dozen), so a memo of
    many addresses costs a reference each, not an object each."""
    return AddressInfo(internal, expected, local)
