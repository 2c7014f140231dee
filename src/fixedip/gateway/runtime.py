"""Everything derived from one configuration generation, and the path every session
takes to reach a destination: authorise, resolve once, vet, pick an egress IP, connect.

A SIGHUP builds a new `Runtime`; new requests use it while open tunnels keep theirs.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

from fixedip.config import ClientConfig, Config
from fixedip.gateway.dns import DNSError, Resolver
from fixedip.gateway.upstream import (
    EgressDown,
    PoolKey,
    Upstream,
    UpstreamError,
    UpstreamPool,
    connect,
)
from fixedip.identity.pool import EgressPool, EgressState
from fixedip.observe.metrics import Metrics
from fixedip.policy.auth import Authenticator
from fixedip.policy.decision import Decision, Reason
from fixedip.policy.guard import Guard
from fixedip.policy.rules import RuleSet, parse_rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The destination may not or cannot be reached; `decision` says why."""

    def __init__(self, decision: Decision, detail: str = "") -> None:
        super().__init__(detail or decision.reason.value)
        self.decision = decision
        self.detail = detail


@dataclass(slots=True)
class Dialed:
    upstream: Upstream
    address: IPAddress
    egress: EgressState
    reused: bool
    rule: str | None


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


class Runtime:
    def __init__(
        self,
        config: Config,
        previous: Runtime | None = None,
        listeners: list[tuple[IPAddress, int]] | None = None,
    ) -> None:
        self.config = config
        self.auth: Authenticator[ClientConfig] = Authenticator(config.clients)
        self.rules: dict[str, RuleSet] = {
            c.name: RuleSet([parse_rule(r) for r in c.allow], [parse_rule(r) for r in c.deny])
            for c in config.clients
        }
        self.pool: EgressPool = EgressPool(
            [(ip.bind, ip.public) for ip in config.egress.ips],
            config.egress.strategy,
            previous.pool if previous else None,
        )
        # The gateway never connects to itself: its listeners as actually bound
        # (a configured port 0 becomes a real one).
        own = (
            listeners
            if listeners is not None
            else [
                (e.host, e.port)
                for e in (config.listen.http, config.listen.socks, config.listen.admin)
                if e is not None
            ]
        )
        allow_endpoints = []
        if config.demo.echo is not None:
            allow_endpoints.append((config.demo.echo.host, config.demo.echo.port))
        local = [ip.bind for ip in config.egress.ips] + [h for h, _ in own]
        self.guard = Guard(
            allow_cidrs=config.guard.allow_cidrs,
            allow_endpoints=allow_endpoints,
            own_endpoints=own,
            local_addresses=local,
        )


async def dial(
    rt: Runtime,
    resolver: Resolver,
    upstreams: UpstreamPool,
    metrics: Metrics,
    client: ClientConfig,
    host: str,
    port: int,
    is_ip: bool,
    *,
    tunnel: bool,
) -> Dialed:
    """Decide and connect; raises Refused with the deciding Decision."""
    if tunnel and port not in client.connect_ports:
        raise Refused(
            Decision(Reason.PORT_NOT_ALLOWED, rule=f"clients.{client.name}.connect_ports")
        )
    rules = rt.rules[client.name]
    early = rules.prefilter(host, port)
    if early is not None:
        raise Refused(early)
    if is_ip:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    else:
        try:
            addresses = await resolver.resolve(host, rt.pool.families)
        except DNSError as exc:
            raise Refused(Decision(Reason.DNS_FAILED), str(exc)) from None
    # Every answer is vetted, of any family: a name that points inside at all is refused.
    for address in addresses:
        verdict = rt.guard.vet(address, port)
        if not verdict.allowed:
            raise Refused(verdict, f"{host} -> {address}")
    usable = [a for a in addresses if _family(a) in rt.pool.families]
    if not usable:
        raise Refused(
            Decision(Reason.NO_ADDRESS_FOR_EGRESS), f"{host} has no address of the egress family"
        )
    allowed: list[tuple[IPAddress, str | None]] = []
    refusal: Decision | None = None
    for address in usable:
        verdict = rules.decide(host, port, address)
        if verdict.reason is Reason.DESTINATION_DENIED:
            raise Refused(verdict, f"{host} -> {address}")
        if verdict.allowed:
            allowed.append((address, verdict.rule))
        elif refusal is None:
            refusal = verdict
    if not allowed:
        raise Refused(refusal or Decision(Reason.DESTINATION_NOT_ALLOWED))

    last: UpstreamError | None = None
    for address, rule in allowed:
        tried: set[IPAddress] = set()
        while True:
            egress = rt.pool.choose(client.name, client.egress, _family(address), frozenset(tried))
            if egress is None:
                raise Refused(
                    Decision(Reason.EGRESS_UNAVAILABLE), "no usable egress IP for this client"
                )
            key: PoolKey = (egress.bind, address, port)
            if not tunnel:
                up = upstreams.take(key)
                if up is not None:
                    return Dialed(up, address, egress, True, rule)
            started = time.perf_counter()
            try:
                up = await connect(key, upstreams, rt.config.timeouts.connect_s)
            except EgressDown as exc:
                rt.pool.mark_down(egress, str(exc))
                metrics.set_egress(str(egress.bind), str(egress.public), False)
                tried.add(egress.bind)
                continue
            except UpstreamError as exc:
                last = exc
                break
            metrics.observe_connect(str(egress.bind), time.perf_counter() - started)
            return Dialed(up, address, egress, False, rule)
    assert last is not None
    raise Refused(Decision(last.reason), last.detail)
