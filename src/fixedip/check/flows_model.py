"""What the flow analysis keeps per key: a `Destination` per `host:port`, a `Tally` per
source and per group of rejected flows. Slotted and small (about 500 bytes a
destination, key included), because up to 3 x `--max-keys` of them are held.
"""

from __future__ import annotations

from typing import Any

from fixedip.check.flows_match import format_time

TCP, UDP = "6", "17"
PROTOCOL_NAMES = {"6": "tcp", "17": "udp", "1": "icmp", "58": "icmpv6", "-": "-"}


class Destination:
    """The aggregate of every flow to one destination."""

    __slots__ = (
        "addresses",
        "bytes",
        "first",
        "flows",
        "host",
        "internal",
        "last",
        "packets",
        "port",
        "protocol",
        "rejected",
        "sources",
        "unexpected",
    )

    def __init__(self, host: str, port: int, protocol: str, when: float) -> None:
        self.host = host
        self.port = port
        self.protocol = protocol
        self.flows = 0
        self.bytes = 0
        self.packets = 0
        self.rejected = 0
        self.first = when
        self.last = when
        self.internal: str | None = None
        self.unexpected = False
        self.sources: list[str] = []
        # fixedip records only; VPC destinations share the empty tuple (memory per key)
        self.addresses: list[str] | tuple[()] = ()

    @property
    def name(self) -> str:
        return destination_name(self.host, self.port, self.protocol)

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.name,
            "host": self.host,
            "port": self.port,
            "protocol": PROTOCOL_NAMES.get(self.protocol, f"proto {self.protocol}"),
            "flows": self.flows,
            "bytes": self.bytes,
            "packets": self.packets,
            "rejected": self.rejected,
            "first_seen": format_time(self.first),
            "last_seen": format_time(self.last),
            "internal": self.internal,
            "sources": list(self.sources),
            "addresses": list(self.addresses),
        }


def destination_name(host: str, port: int, protocol: str) -> str:
    """`host:443`, `[2001:db8::1]:443`, `10.0.0.2:53/udp`, `10.0.0.9 (icmp)`."""
    shown = f"[{host}]" if ":" in host else host
    if protocol == TCP:
        return f"{shown}:{port}"
    name = PROTOCOL_NAMES.get(protocol, f"proto {protocol}")
    if protocol == UDP:
        return f"{shown}:{port}/{name}"
    return f"{shown} ({name})"


class Tally:
    """Flows, bytes and first/last time of one source or one group of rejected flows."""

    __slots__ = ("bytes", "first", "flows", "last")

    def __init__(self, when: float) -> None:
        self.flows = 0
        self.bytes = 0
        self.first = when
        self.last = when
