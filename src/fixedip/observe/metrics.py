"""Prometheus metrics for the gateway, all named `fixedip_*`.

Each `Metrics` owns its own `CollectorRegistry`, so several gateways (or tests) in one
process never share counters. Label children are looked up once and kept in dicts.
Finished flows, one per request, are summed in plain integers and added to their
counters when the registry is read (`_FlushFirst`), so a request pays no counter locks;
open connections are counted the same way.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from fixedip.observe.flowlog import FlowRecord
from fixedip.policy.decision import SOCKS_SUCCEEDED, Reason

# 0.1 ms (loopback) to 10 s (a connect timeout), roughly 1-2.5-5 per decade.
CONNECT_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

TUNNEL_KINDS = frozenset({"connect", "socks"})


class _FlowChildren(NamedTuple):
    """The label children one shape of flow record increments."""

    requests: Any
    tunnels: Any | None
    bytes_up: Any
    bytes_down: Any
    decisions: Any


def status_class(kind: str, status: int | None) -> str:
    """`2xx`-style class for HTTP statuses, `socks_ok` / `socks_fail` for SOCKS replies.

    A flow that ended before any status was sent is `none` (`socks_fail` for SOCKS).
    """
    if kind == "socks":
        return "socks_ok" if status == SOCKS_SUCCEEDED else "socks_fail"
    if status is None:
        return "none"
    if 0 <= status < 1000:
        return _STATUS_CLASSES[status // 100]  # one string each: a cached hash for the key
    return f"{status // 100}xx"


_STATUS_CLASSES: Final = tuple(f"{n}xx" for n in range(10))


class _FlushFirst:
    """Registered before every other collector, so any read of the registry (a scrape,
    `get_sample_value`) first moves the flows summed since the last read into their
    counters."""

    def __init__(self, flush: Any) -> None:
        self._flush = flush

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._flush()
        return []


class Metrics:
    """The gateway's counters, gauges and histograms in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        reg.register(_FlushFirst(self.flush_flows))
        # shape of flow → [flows, bytes up, bytes down], not yet in the counters
        self._flow_sums: dict[tuple[str, str, str, str, str], list[int]] = {}
        self._requests = Counter(
            "fixedip_requests",
            "Finished requests and tunnels by listener, kind, status class and egress IP.",
            ["listener", "kind", "status_class", "egress"],
            registry=reg,
        )
        self._tunnels = Counter(
            "fixedip_tunnels",
            "Allowed CONNECT and SOCKS tunnels by listener and egress IP.",
            ["listener", "egress"],
            registry=reg,
        )
        self._tunnels_open = Gauge(
            "fixedip_tunnels_open", "CONNECT and SOCKS tunnels open now.", registry=reg
        )
        self._tunnels_spliced = Counter(
            "fixedip_tunnels_spliced",
            "Tunnels that became bulk transfers and moved on in the kernel (splice).",
            registry=reg,
        )
        # Requests and whole responses the keep-alive lane took (HttpProxySession), summed
        # here by the session and moved into the counter on a read like the flows.
        self.lane_requests = 0
        self.lane_responses = 0
        self._lane = Counter(
            "fixedip_http_lane",
            "Requests (part=request) and responses (part=response) that took the keep-alive "
            "lane: a repeat request or a whole response passed on without the generic parser.",
            ["part"],
            registry=reg,
        )
        self._lane_flushed = (0, 0)
        self._bodies_spliced = Counter(
            "fixedip_bodies_spliced",
            "Long response bodies of known length moved to the client in the kernel (splice).",
            registry=reg,
        )
        self._bytes = Counter(
            "fixedip_bytes",
            "Payload bytes relayed, up (client to upstream) and down, by egress IP.",
            ["direction", "egress"],
            registry=reg,
        )
        self._decisions = Counter(
            "fixedip_decisions",
            "Decisions by outcome and reason.",
            ["decision", "reason"],
            registry=reg,
        )
        self._connect_seconds = Histogram(
            "fixedip_upstream_connect_seconds",
            "Time to connect to the upstream, by egress IP.",
            ["egress"],
            buckets=CONNECT_BUCKETS_S,
            registry=reg,
        )
        self._egress_up = Gauge(
            "fixedip_egress_up",
            "1 if the egress IP is in service, 0 if not, labelled with its public address.",
            ["egress", "public"],
            registry=reg,
        )
        self._quarantined = Gauge(
            "fixedip_egress_quarantined",
            "1 while the egress IP is quarantined for the destination host.",
            ["egress", "host"],
            registry=reg,
        )
        self._connections_open = Gauge(
            "fixedip_connections_open",
            "Client connections open now, by listener.",
            ["listener"],
            registry=reg,
        )
        self._flowlog_dropped = Counter(
            "fixedip_flowlog_dropped",
            "Flow log records dropped because the writer fell behind or failed.",
            registry=reg,
        )
        self._flow_children: dict[tuple[str, str, str, str, str], _FlowChildren] = {}
        self._connect_children: dict[str, Any] = {}
        self._connections: dict[str, int] = {}  # open now, by listener; set at read
        self._egress_public: dict[str, str] = {}

    def observe_flow(self, record: FlowRecord) -> None:
        """Count one finished flow: request, tunnel (if allowed), bytes and decision."""
        key = (
            record.listener,
            record.kind,
            status_class(record.kind, record.status),
            record.egress or "",
            str(record.reason),
        )
        sums = self._flow_sums.get(key)
        if sums is None:
            self._flow_sums[key] = [1, record.bytes_up, record.bytes_down]
        else:
            sums[0] += 1
            sums[1] += record.bytes_up
            sums[2] += record.bytes_down

    def flush_flows(self) -> None:
        """Add the flows summed since the last call to the Prometheus counters, and set
        the open-connection gauges."""
        for listener, count in list(self._connections.items()):
            self._connections_open.labels(listener).set(count)
        now = (self.lane_requests, self.lane_responses)
        for part, count, before in zip(
            ("request", "response"), now, self._lane_flushed, strict=True
        ):
            if count != before:
                self._lane.labels(part).inc(count - before)
        self._lane_flushed = now
        sums, self._flow_sums = self._flow_sums, {}
        for key, (flows, up, down) in sums.items():
            children = self._flow_children.get(key)
            if children is None:
                children = self._flow_children[key] = self._make_flow_children(key)
            children.requests.inc(flows)
            if children.tunnels is not None:
                children.tunnels.inc(flows)
            if up:
                children.bytes_up.inc(up)
            if down:
                children.bytes_down.inc(down)
            children.decisions.inc(flows)

    def _make_flow_children(self, key: tuple[str, str, str, str, str]) -> _FlowChildren:
        listener, kind, klass, egress, reason = key
        allowed = reason == Reason.ALLOWED
        tunnel = kind in TUNNEL_KINDS and allowed
        return _FlowChildren(
            requests=self._requests.labels(listener, kind, klass, egress),
            tunnels=self._tunnels.labels(listener, egress) if tunnel else None,
            bytes_up=self._bytes.labels("up", egress),
            bytes_down=self._bytes.labels("down", egress),
            decisions=self._decisions.labels("allow" if allowed else "deny", reason),
        )

    def observe_connect(self, egress: str, seconds: float) -> None:
        """Record how long one upstream connect from `egress` took."""
        child = self._connect_children.get(egress)
        if child is None:
            child = self._connect_children[egress] = self._connect_seconds.labels(egress)
        child.observe(seconds)

    def tunnel_opened(self) -> None:
        self._tunnels_open.inc()

    def tunnel_closed(self) -> None:
        self._tunnels_open.dec()

    def tunnel_spliced(self) -> None:
        self._tunnels_spliced.inc()

    def body_spliced(self) -> None:
        self._bodies_spliced.inc()

    def connection_opened(self, listener: str) -> None:
        self._connections[listener] = self._connections.get(listener, 0) + 1

    def connection_closed(self, listener: str) -> None:
        self._connections[listener] -= 1

    def set_egress(self, bind: str, public: str, up: bool) -> None:
        """Mark an egress IP in (1) or out (0) of service.

        A changed public address for the same bind address replaces the old series.
        """
        previous = self._egress_public.get(bind)
        if previous is not None and previous != public:
            self._egress_up.remove(bind, previous)
        self._egress_public[bind] = public
        self._egress_up.labels(bind, public).set(1 if up else 0)

    def set_quarantines(self, pairs: set[tuple[str, str]]) -> None:
        """The (egress, host) pairs quarantined now; others drop out of the series."""
        self._quarantined.clear()
        for egress, host in pairs:
            self._quarantined.labels(egress, host).set(1)

    def flowlog_dropped(self, n: int) -> None:
        """Add `n` newly dropped flow log records (a delta, not a total)."""
        if n > 0:
            self._flowlog_dropped.inc(n)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
