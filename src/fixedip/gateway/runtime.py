"""Everything derived from one configuration generation, and the path every session
takes to reach a destination: authorise, resolve once, vet, pick an egress IP, connect.

A SIGHUP builds a new `Runtime`; new requests use it while open tunnels keep theirs.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from dataclasses import dataclass
from typing import Any

from fixedip.bounded import remember
from fixedip.config import ClientConfig, Config, DestinationConfig
from fixedip.gateway.dns import DNSError, Resolver
from fixedip.gateway.routes import RouteTarget, RouteTLS, route_target
from fixedip.gateway.upstream import (
    EgressDown,
    PoolKey,
    Upstream,
    UpstreamError,
    UpstreamPool,
    connect,
)
from fixedip.identity.canary import CanarySpec
from fixedip.identity.health import BlockRule, Health
from fixedip.identity.limits import (
    DestinationLimits,
    Limiter,
    LimitExceeded,
    Limits,
    LimitStore,
    Permit,
    parse_rate,
)
from fixedip.identity.pool import EgressPool, EgressState
from fixedip.identity.sanitize import Sanitizer
from fixedip.observe.metrics import Metrics
from fixedip.policy.auth import Authenticator
from fixedip.policy.decision import Decision, Reason
from fixedip.policy.guard import Guard
from fixedip.policy.rules import RuleSet, parse_rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """The destination may not or cannot be reached; `decision` says why."""

    def __init__(
        self, decision: Decision, detail: str = "", retry_after: int | None = None
    ) -> None:
        super().__init__(detail or decision.reason.value)
        self.decision = decision
        self.detail = detail
        self.retry_after = retry_after


@dataclass(slots=True, init=False)
class Dialed:
    upstream: Upstream
    address_text: str  # the destination address the upstream connection went to
    egress: EgressState
    reused: bool
    rule: str | None
    permit: Permit | None  # held until the exchange or tunnel ends

    def __init__(  # written out to be compiled (see http1.RequestHead)
        self,
        upstream: Upstream,
        address_text: str,
        egress: EgressState,
        reused: bool,
        rule: str | None,
        permit: Permit | None = None,
    ) -> None:
        self.upstream = upstream
        self.address_text = address_text
        self.egress = egress
        self.reused = reused
        self.rule = rule
        self.permit = permit


def _family(address: IPAddress) -> int:
    # isinstance, not `.version`: that is a Python property, interpreted on every request
    return socket.AF_INET if isinstance(address, ipaddress.IPv4Address) else socket.AF_INET6


class Runtime:
    def __init__(
        self,
        config: Config,
        previous: Runtime | None = None,
        listeners: list[tuple[IPAddress, int]] | None = None,
        limit_store: LimitStore | None = None,
    ) -> None:
        """`limit_store` (the fleet's, or one divided between workers) is used by the
        first Runtime; later ones keep their previous one's."""
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
        # A cloud 1:1-NATs an egress IP's public address onto its bind address, so a
        # connection to the public address hairpins back to what listens on the bind.
        nat = {ip.public: ip.bind for ip in config.egress.ips if ip.public is not None}
        own = own + [(public, port) for public, bind in nat.items() for h, port in own if h == bind]
        local = [ip.bind for ip in config.egress.ips] + list(nat) + [h for h, _ in own]
        self.guard = Guard(
            allow_cidrs=config.guard.allow_cidrs,
            allow_endpoints=allow_endpoints,
            own_endpoints=own,
            local_addresses=local,
        )
        self.router = Router(self)
        self.sanitizer = Sanitizer(config.destinations)
        self._block_rules: dict[str, BlockRule] = {}
        self._destinations: dict[str, DestinationConfig | None] = {}
        # How requests are forwarded to (host, port) under this configuration: the HTTP
        # listener's own memo, kept here so it is dropped with the configuration.
        self.forwards: dict[tuple[str, int], Any] = {}
        self._destination_rules = [
            (parse_rule(f"[{d.match}]:*" if ":" in d.match else f"{d.match}:*"), d)
            for d in config.destinations
        ]
        limited = [d for d in config.destinations if d.limited]
        self.limits: Limits = Limits(
            [
                DestinationLimits(
                    match=d.match,
                    rate=parse_rate(d.rate) if d.rate else None,
                    burst=d.burst,
                    per_egress_ip=d.per_egress_ip,
                    concurrency=d.concurrency,
                    queue_timeout_s=d.queue_timeout_s,
                )
                for d in limited
            ],
            store=limit_store if previous is None else None,
            previous=previous.limits if previous else None,
        )
        self._limiters = {limiter.match: limiter for limiter in self.limits.limiters}
        # Secrets are read here, so a reload picks up a rotated vendor credential.
        self.routes: dict[str, RouteTarget] = {r.name: route_target(r) for r in config.routes}
        # Canaries by destination match, for the gateway's canary runner.
        self.canaries: dict[str, CanarySpec] = {
            d.match: CanarySpec.from_mapping(d.canary) for d in config.destinations if d.canary
        }

    def observing(self, client: ClientConfig) -> bool:
        """Observe mode for this client (its own mode, else policy.mode)."""
        return (client.mode or self.config.policy.mode) == "observe"

    def destination(self, host: str) -> DestinationConfig | None:
        """The first `[[destinations]]` entry whose match fits `host` (memoised)."""
        try:
            return self._destinations[host]
        except KeyError:
            pass
        found = None
        for match, dest in self._destination_rules:
            if match.matches_name(host, match.port_lo) if match.host else dest.match == host:
                found = dest
                break
        return remember(self._destinations, host, found, ROUTE_CACHE_MAX)

    def limiter(self, host: str) -> Limiter | None:
        """The shaping of `host`'s destination, if that first-matching entry has any."""
        dest = self.destination(host)
        return self._limiters.get(dest.match) if dest is not None and dest.limited else None

    def block_rule(self, host: str) -> BlockRule:
        """The block-detection rule for `host`: its first matching destination's, else
        the default (403/429, 3 within 60 s). Memoised per host."""
        rule = self._block_rules.get(host)
        if rule is None:
            dest = self.destination(host)
            statuses = (
                frozenset(dest.block_statuses) if dest is not None else DEFAULT_BLOCK_STATUSES
            )
            spec = self.canaries.get(dest.match) if dest is not None else None
            rule = BlockRule(block_statuses=statuses, canary=spec.rule if spec else None)
            remember(self._block_rules, host, rule, ROUTE_CACHE_MAX)
        return rule


# A destination's allowed addresses in order: (address, its text, deciding rule). The
# text is made once per route, so pool keys and flow records never format or hash an
# ipaddress object per request.
Route = list[tuple[IPAddress, str, "str | None"]]


ROUTE_CACHE_MAX = 4096
DEFAULT_BLOCK_STATUSES: frozenset[int] = frozenset({403, 429})


@dataclass(slots=True, init=False)
class Attempt:
    """What `dial_now` settled before it had to wait: the route, and the egress whose
    round-robin turn it already took (so the slow path does not take another)."""

    route: Route | None
    egress: EgressState | None
    permit: Permit | None  # already taken for `egress`: dial() uses it, not another

    def __init__(
        self,
        route: Route | None = None,
        egress: EgressState | None = None,
        permit: Permit | None = None,
    ) -> None:
        self.route = route
        self.egress = egress
        self.permit = permit


class Router:
    """Guard and rules over a destination's addresses, memoised per configuration.

    A route is kept while its answer is the very list object the DNS cache holds (or,
    for an IP literal, for good), so a keep-alive client pays for policy once, not per
    request; a new DNS answer or a reload computes it afresh.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._routes: dict[tuple[str, str, int, bool], tuple[object, Route]] = {}
        self._literals: dict[str, list[IPAddress]] = {}

    def literal(self, host: str) -> list[IPAddress]:
        found = self._literals.get(host)
        if found is None:
            found = remember(self._literals, host, [ipaddress.ip_address(host)], ROUTE_CACHE_MAX)
        return found

    def route(
        self, client: ClientConfig, host: str, port: int, addresses: list[IPAddress], tunnel: bool
    ) -> Route:
        key = (client.name, host, port, tunnel)
        hit = self._routes.get(key)
        if hit is not None and hit[0] is addresses:
            return hit[1]
        route = self._decide(client, host, port, addresses, tunnel)
        remember(self._routes, key, (addresses, route), ROUTE_CACHE_MAX)
        return route

    def _decide(
        self,
        client: ClientConfig,
        host: str,
        port: int,
        addresses: list[IPAddress],
        tunnel: bool,
    ) -> Route:
        rt = self.rt
        observing = rt.observing(client)
        would: Decision | None = None  # what enforce mode would have refused, in observe mode
        if tunnel and port not in client.connect_ports:
            would = _port_refusal(client)
            if not observing:
                raise Refused(would)
        rules = rt.rules[client.name]
        early = rules.prefilter(host, port)
        if early is not None:
            if not observing:
                raise Refused(early)
            would = would or early
        # Every answer is vetted, of any family: a name that points inside at all is refused.
        for address in addresses:
            verdict = rt.guard.vet(address, port)
            if not verdict.allowed:
                raise Refused(verdict, f"{host} -> {address}")
        usable = [a for a in addresses if _family(a) in rt.pool.families]
        if not usable:
            raise Refused(
                Decision(Reason.NO_ADDRESS_FOR_EGRESS),
                f"{host} has no address of the egress family",
            )
        allowed: Route = []
        refusal: Decision | None = None
        for address in usable:
            verdict = rules.decide(host, port, address)
            if verdict.reason is Reason.DESTINATION_DENIED:
                if not observing:
                    raise Refused(verdict, f"{host} -> {address}")
                would = would or verdict
            if verdict.allowed:
                allowed.append((address, str(address), verdict.rule))
            elif refusal is None:
                refusal = verdict
        if not allowed:
            if not observing:
                raise Refused(refusal or Decision(Reason.DESTINATION_NOT_ALLOWED))
            would = would or refusal or Decision(Reason.DESTINATION_NOT_ALLOWED)
        if would is not None:  # observe mode: let it through, and say so in the flow log
            note = f"observe: would deny ({would.reason.value}"
            note += f": {would.rule})" if would.rule else ")"
            return [(address, str(address), note) for address in usable]
        return allowed


async def _acquire(limiter: Limiter | None, egress: EgressState) -> Permit | None:
    """A permit from the destination's shaping, waiting in its fair queue; a refusal
    becomes 429 with an honest Retry-After."""
    if limiter is None:
        return None
    try:
        return await limiter.acquire(egress.bind_text)
    except LimitExceeded as exc:
        raise Refused(
            Decision(Reason(exc.reason), rule=f"destinations.{limiter.match}"),
            exc.detail,
            retry_after=math.ceil(exc.retry_after_s),
        ) from None


def _release(permit: Permit | None) -> None:
    if permit is not None:
        permit.release()


def _port_refusal(client: ClientConfig) -> Decision:
    return Decision(Reason.PORT_NOT_ALLOWED, rule=f"clients.{client.name}.connect_ports")


def _check_port(rt: Runtime, client: ClientConfig, port: int, tunnel: bool) -> None:
    """Refuse before any lookup; in observe mode the router records it instead."""
    if tunnel and port not in client.connect_ports and not rt.observing(client):
        raise Refused(_port_refusal(client))


def _quarantined(
    rt: Runtime, health: Health, client: ClientConfig, host: str, family: int
) -> Refused:
    """Every IP this client may use is quarantined for `host`: 503 until the soonest
    comes back. A pinned client never moves to another IP."""
    candidates = rt.pool.candidates(client.name, client.egress, family)
    wait = health.retry_after(host, candidates)
    return Refused(
        Decision(Reason.EGRESS_QUARANTINED),
        f"every egress IP for {host} is quarantined",
        retry_after=max(1, math.ceil(wait)),
    )


def _choose(
    rt: Runtime,
    health: Health,
    client: ClientConfig,
    host: str,
    family: int,
    tried: frozenset[str] | set[str] = frozenset(),
) -> EgressState:
    quarantined = health.excluded(host)
    exclude = quarantined | tried if quarantined else tried
    egress = rt.pool.choose(client.name, client.egress, family, exclude)
    if egress is not None:
        return egress
    if quarantined and rt.pool.choose(client.name, client.egress, family, tried) is not None:
        raise _quarantined(rt, health, client, host, family)
    raise Refused(Decision(Reason.EGRESS_UNAVAILABLE), "no usable egress IP for this client")


def dial_now(
    rt: Runtime,
    resolver: Resolver,
    upstreams: UpstreamPool,
    health: Health,
    client: ClientConfig,
    host: str,
    port: int,
    is_ip: bool,
    *,
    tunnel: bool,
    tls: RouteTLS | None = None,
) -> Dialed | Attempt:
    """The synchronous fast path: a cached answer and an idle pooled connection mean a
    request is decided and on its way without a task. Otherwise returns what it settled
    for `dial` to finish. Raises Refused like `dial`."""
    _check_port(rt, client, port, tunnel)
    addresses = rt.router.literal(host) if is_ip else resolver.cached(host, rt.pool.families)
    if addresses is None:
        return Attempt()
    route = rt.router.route(client, host, port, addresses, tunnel)
    if tunnel:
        return Attempt(route)
    address, text, rule = route[0]
    egress = _choose(rt, health, client, host, _family(address))
    permit = None
    limiter = rt.limiter(host)
    if limiter is not None:
        permit = limiter.try_acquire(egress.bind_text)
        if permit is None:
            return Attempt(route, egress)  # waits for a token or a slot in dial()
    up = upstreams.take((egress.bind_text, text, port, tls.server_name if tls else ""))
    if up is not None:
        return Dialed(up, text, egress, True, rule, permit)
    return Attempt(route, egress, permit)  # a new connection is needed: dial() makes it


async def dial(
    rt: Runtime,
    resolver: Resolver,
    upstreams: UpstreamPool,
    metrics: Metrics,
    health: Health,
    client: ClientConfig,
    host: str,
    port: int,
    is_ip: bool,
    *,
    tunnel: bool,
    attempt: Attempt | None = None,
    tls: RouteTLS | None = None,
) -> Dialed:
    """Decide and connect; raises Refused with the deciding Decision."""
    attempt = attempt or Attempt()
    route = attempt.route
    if route is None:
        _check_port(rt, client, port, tunnel)
        early = rt.rules[client.name].prefilter(host, port)
        if early is not None and not rt.observing(client):
            raise Refused(early)
        if is_ip:
            addresses = rt.router.literal(host)
        else:
            try:
                addresses = await resolver.resolve(host, rt.pool.families)
            except DNSError as exc:
                raise Refused(Decision(Reason.DNS_FAILED), str(exc)) from None
        route = rt.router.route(client, host, port, addresses, tunnel)

    first_choice, first_permit = attempt.egress, attempt.permit
    last: UpstreamError | None = None
    for address, text, rule in route:
        tried: set[str] = set()
        while True:
            if first_choice is not None:
                egress = first_choice
                first_choice = None
            else:
                egress = _choose(rt, health, client, host, _family(address), tried)
            key: PoolKey = (egress.bind_text, text, port, tls.server_name if tls else "")
            if first_permit is not None:
                permit: Permit | None = first_permit
                first_permit = None
            else:
                permit = await _acquire(rt.limiter(host), egress)
            if not tunnel:
                up = upstreams.take(key)
                if up is not None:
                    return Dialed(up, text, egress, True, rule, permit)
            started = time.perf_counter()
            try:
                up = await connect(
                    key,
                    upstreams,
                    rt.config.timeouts.connect_s,
                    ssl_context=tls.context if tls else None,
                )
            except EgressDown as exc:
                _release(permit)
                rt.pool.mark_down(egress, str(exc))
                metrics.set_egress(egress.bind_text, egress.public_text, False)
                tried.add(egress.bind_text)
                continue
            except UpstreamError as exc:
                _release(permit)
                if exc.reason is Reason.UPSTREAM_TIMEOUT:  # a silent drop can be a block
                    health.observe(egress.bind_text, host, "connect_timeout")
                last = exc
                break
            except BaseException:  # cancelled (the client went away) or a bug
                _release(permit)
                raise
            metrics.observe_connect(egress.bind_text, time.perf_counter() - started)
            return Dialed(up, text, egress, False, rule, permit)
    assert last is not None
    raise Refused(Decision(last.reason), last.detail)
