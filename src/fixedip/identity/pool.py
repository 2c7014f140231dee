"""The egress pool: which static IP a connection leaves from.

Strategies (`egress.strategy`):
- `round-robin`: spread new upstream connections over the healthy IPs in turn;
- `failover`: the first healthy IP in configured order, the next only when it is down;
- `pinned`: each client always uses one IP (its `egress`, else a stable hash of its
  name); when that IP is down the client gets 503, never another address.

A client with `egress` set is pinned whatever the strategy. An IP is *down* when it
can no longer be bound (the address was removed from the host); a periodic check
brings it back. Later work (quarantine per destination) plugs in at `choose()`.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Strategy = Literal["pinned", "round-robin", "failover"]


@dataclass(slots=True)
class EgressState:
    bind: IPAddress
    public: IPAddress
    up: bool = True
    reason: str = ""
    since: float = field(default_factory=time.time)
    connections: int = 0
    # Text forms, made once: the flow log and metrics want them on every request.
    bind_text: str = ""
    public_text: str = ""

    def __post_init__(self) -> None:
        self.bind_text, self.public_text = str(self.bind), str(self.public)

    @property
    def family(self) -> int:
        return socket.AF_INET if self.bind.version == 4 else socket.AF_INET6


def probe_bind(address: IPAddress) -> str | None:
    """None if `address` can be bound on this host, else why not (for messages)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(address), 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return "not assigned to this host"
        return exc.strerror or str(exc)
    return None


class EgressPool:
    def __init__(
        self,
        ips: Sequence[tuple[IPAddress, IPAddress | None]],
        strategy: Strategy,
        previous: EgressPool | None = None,
    ) -> None:
        self.strategy: Strategy = strategy
        # Addresses held out of use by someone who knows better than a bind probe (a
        # floating EIP another fleet member holds): recheck() leaves them down.
        self.withheld: dict[IPAddress, str] = dict(previous.withheld) if previous else {}
        old = {s.bind: s for s in previous.states} if previous else {}
        self.states: list[EgressState] = []
        for bind, public in ips:
            state = EgressState(bind, public or bind)
            if bind in old:  # a reload keeps what we learned about an address
                state.up, state.reason, state.since = (
                    old[bind].up,
                    old[bind].reason,
                    old[bind].since,
                )
            self.states.append(state)
        self._by_addr: dict[IPAddress, EgressState] = {}
        for s in self.states:
            self._by_addr[s.public] = s
            self._by_addr[s.bind] = s
        self._next = 0
        self.families = frozenset(s.family for s in self.states)
        self._by_family = {f: [s for s in self.states if s.family == f] for f in self.families}
        self._healthy: dict[int, list[EgressState]] = {}
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the usable IPs per family; called whenever an IP goes down or up."""
        self._healthy = {f: [s for s in states if s.up] for f, states in self._by_family.items()}

    def get(self, address: IPAddress) -> EgressState | None:
        """The egress entry whose bind or public address is `address`."""
        return self._by_addr.get(address)

    def choose(
        self,
        client: str | None,
        pinned: IPAddress | None,
        family: int,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> EgressState | None:
        """The IP for a new upstream connection of `family`, or None if none may be used."""
        if pinned is not None:
            state = self._by_addr.get(pinned)
            if (
                state is None
                or not state.up
                or state.family != family
                or state.bind_text in exclude
            ):
                return None
            return state
        candidates = self._by_family.get(family)
        if not candidates:
            return None
        if self.strategy == "pinned":
            digest = hashlib.sha256((client or "").encode()).digest()
            state = candidates[int.from_bytes(digest[:4], "big") % len(candidates)]
            return state if state.up and state.bind_text not in exclude else None
        healthy = (
            self._healthy[family]
            if not exclude
            else [s for s in candidates if s.up and s.bind_text not in exclude]
        )
        if not healthy:
            return None
        if self.strategy == "failover":
            return healthy[0]
        self._next += 1
        return healthy[self._next % len(healthy)]

    def candidates(self, client: str | None, pinned: IPAddress | None, family: int) -> list[str]:
        """Bind addresses (text) `client` may leave from: what a 503's Retry-After is about."""
        if pinned is not None:
            state = self._by_addr.get(pinned)
            return [state.bind_text] if state is not None else []
        states = self._by_family.get(family) or []
        if self.strategy == "pinned" and states:
            digest = hashlib.sha256((client or "").encode()).digest()
            return [states[int.from_bytes(digest[:4], "big") % len(states)].bind_text]
        return [s.bind_text for s in states if s.up]

    def mark_down(self, state: EgressState, reason: str) -> None:
        if state.up:
            state.up, state.reason, state.since = False, reason, time.time()
            self._refresh()

    def withhold(self, address: IPAddress, reason: str) -> None:
        """Keep `address` out of use until `restore()`, whatever a bind probe says."""
        self.withheld[address] = reason
        state = self._by_addr.get(address)
        if state is not None:
            self.mark_down(state, reason)

    def restore(self, address: IPAddress) -> None:
        """End `withhold()`: the address is used again if it can be bound."""
        if self.withheld.pop(address, None) is not None:
            state = self._by_addr.get(address)
            if state is not None and not state.up and probe_bind(state.bind) is None:
                state.up, state.reason, state.since = True, "", time.time()
                self._refresh()

    def recheck(self) -> list[EgressState]:
        """Try to bind every down address again; returns the ones that came back."""
        back = []
        for state in self.states:
            if state.bind in self.withheld:
                continue
            if not state.up and probe_bind(state.bind) is None:
                state.up, state.reason, state.since = True, "", time.time()
                back.append(state)
        if back:
            self._refresh()
        return back

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "bind": str(s.bind),
                "public": str(s.public),
                "state": "up" if s.up else "down",
                "reason": s.reason or None,
                "since": round(s.since, 3),
                "open_connections": s.connections,
            }
            for s in self.states
        ]
