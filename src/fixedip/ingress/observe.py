"""What the relay tells operators: Prometheus metrics and flow-log records.

Metrics live in the registry they are given: the gateway's when the relay runs beside
the proxy (one /metrics), or a registry of the relay's own. Flow-log records are
`FlowRecord`s with `kind` = `webhook` (a receipt) or `delivery` (one attempt), plus the
delivery id, route and attempt number; like every flow record they never carry a body,
a header value or a secret.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fixedip.observe.flowlog import FlowRecord, encode_fields

ACK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
DELIVERED = "delivered"
RETRY = "retry"
DEAD = "dead"


@dataclass(slots=True, init=False)
class WebhookRecord(FlowRecord):
    """A receipt (`kind="webhook"`) or a delivery attempt (`kind="delivery"`)."""

    delivery_id: str | None = None
    route: str | None = None
    attempt: int | None = None
    error: str | None = None

    def __init__(
        self,
        *,
        start: float,
        kind: str,
        peer: str,
        method: str | None,
        status: int | None,
        reason: str,
        bytes_up: int,
        duration_s: float,
        route: str,
        host: str | None = None,
        port: int | None = None,
        delivery_id: str | None = None,
        attempt: int | None = None,
        error: str | None = None,
    ) -> None:
        # Written out because FlowRecord's is: a compiled subclass cannot combine a
        # generated __init__ with a written one. (Not super(): slots=True makes a new
        # class, which the zero-argument form does not know in pure Python.)
        FlowRecord.__init__(
            self,
            start,
            "ingress",
            kind,
            peer,
            None,
            method,
            host,
            port,
            None,
            None,
            None,
            status,
            bytes_up=bytes_up,
            duration_s=duration_s,
            reason=reason,
        )
        self.delivery_id = delivery_id
        self.route = route
        self.attempt = attempt
        self.error = error

    @property
    def decision(self) -> str:
        """`allow` for an accepted receipt or a delivered attempt, else `deny`."""
        return "allow" if self.reason in (ACCEPTED, DUPLICATE, DELIVERED) else "deny"

    def to_json(self) -> str:
        return encode_fields(self.fields())

    def fields(self) -> dict[str, Any]:
        fields = FlowRecord.fields(self)
        fields["decision"] = self.decision
        fields["delivery_id"] = self.delivery_id
        fields["route"] = self.route
        fields["attempt"] = self.attempt
        fields["error"] = self.error
        return fields


def receipt_record(
    start: float, peer: str, method: str, route: str, status: int, reason: str, size: int
) -> WebhookRecord:
    return WebhookRecord(
        start=start,
        kind="webhook",
        peer=peer,
        method=method,
        status=status,
        bytes_up=size,
        duration_s=time.time() - start,
        reason=reason,
        route=route,
    )


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    received: Any
    spooled: Any
    duplicates: Any
    delivered: Any
    retries: Any
    dead: Any


class IngressMetrics:
    """`fixedip_ingress_*` counters and gauges, labelled by route path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.received = Counter(
            "fixedip_ingress_received", "Webhook requests received.", ["route"], registry=registry
        )
        self.rejected = Counter(
            "fixedip_ingress_rejected",
            "Webhook requests refused, by reason.",
            ["route", "reason"],
            registry=registry,
        )
        self.spooled = Counter(
            "fixedip_ingress_spooled",
            "Webhooks committed to the spool.",
            ["route"],
            registry=registry,
        )
        self.duplicates = Counter(
            "fixedip_ingress_duplicates",
            "Receipts acknowledged without spooling: the vendor's id was seen before.",
            ["route"],
            registry=registry,
        )
        self.delivered = Counter(
            "fixedip_ingress_delivered", "Webhooks delivered (2xx).", ["route"], registry=registry
        )
        self.retries = Counter(
            "fixedip_ingress_retries",
            "Delivery attempts that failed and were scheduled again.",
            ["route"],
            registry=registry,
        )
        self.dead = Counter(
            "fixedip_ingress_dead",
            "Webhooks given up on (dead letter).",
            ["route"],
            registry=registry,
        )
        self.depth = Gauge(
            "fixedip_ingress_spool_records",
            "Undelivered records in the spool by state (pending, delivering, dead).",
            ["state"],
            registry=registry,
        )
        self.oldest_pending = Gauge(
            "fixedip_ingress_oldest_pending_age_seconds",
            "Age of the oldest record not yet delivered (0 when none).",
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "fixedip_ingress_ack_seconds",
            "Time from request to acknowledgement (spool commit included).",
            buckets=ACK_BUCKETS_S,
            registry=registry,
        )
        self._routes: dict[str, RouteMetrics] = {}

    def route(self, path: str) -> RouteMetrics:
        """The counters of one route, looked up once (labels() is slow on the hot path)."""
        children = self._routes.get(path)
        if children is None:
            children = self._routes[path] = RouteMetrics(
                received=self.received.labels(path),
                spooled=self.spooled.labels(path),
                duplicates=self.duplicates.labels(path),
                delivered=self.delivered.labels(path),
                retries=self.retries.labels(path),
                dead=self.dead.labels(path),
            )
        return children

    def set_spool(self, stats: dict[str, Any], now: float) -> None:
        for state, count in stats["counts"].items():
            self.depth.labels(state).set(count)
        oldest = stats.get("oldest_pending")
        self.oldest_pending.set(max(0.0, now - oldest) if oldest else 0.0)
