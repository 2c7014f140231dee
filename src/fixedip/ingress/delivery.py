"""Delivery: spooled webhooks to their target, at least once.

A dispatcher claims due records per route (never more in flight than the route's
`concurrency`) and sends each as it arrived: same method, headers (minus hop-by-hop
ones), raw body and query, plus the delivery id header (the same id on every attempt,
so the target can de-duplicate), `Fixedip-Attempt`, the configured extra headers and,
when configured, an AWS SigV4 signature. Vendor headers are never rewritten.

Outcomes: 2xx delivered; network errors, timeouts, 3xx, 408, 429 and 5xx are retried
after `min(retry_max_s, retry_base_s * 2**(attempt-1))` scaled by a uniform random
factor (full jitter), or after the target's Retry-After when it sends one (up to a day), until
`max_attempts`; any other 4xx is dead at once. Ordering is not promised: retries and
concurrency let later webhooks overtake earlier ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fixedip.ingress.client import DeliveryClient, DeliveryError, Target
from fixedip.ingress.observe import DEAD, DELIVERED, RETRY, IngressMetrics, WebhookRecord
from fixedip.ingress.settings import HOP_BY_HOP, IngressRouteConfig
from fixedip.ingress.spool import Spool, SpoolRecord, SpoolUnavailable

if TYPE_CHECKING:
    from fixedip.observe.flowlog import FlowLog

log = logging.getLogger("fixedip.ingress")

POLL_S = 0.5
ATTEMPT_HEADER = "Fixedip-Attempt"
MAX_ERROR_CHARS = 200
RETRY_STATUSES = frozenset({408, 429})
# A target's Retry-After is honoured even beyond retry_max_s, up to this bound.
RETRY_AFTER_CAP_S = 86400.0


@dataclass(slots=True)
class DeliveryRoute:
    """A route as delivery uses it: settings, target, resolved extra headers, signer, TLS."""

    config: IngressRouteConfig
    target: Target
    extra_headers: list[tuple[str, str]]
    signer: Callable[[str, str, list[tuple[str, str]], bytes], list[tuple[str, str]]] | None
    ssl_context: ssl.SSLContext | None


@dataclass(slots=True)
class Outcome:
    state: str  # DELIVERED, RETRY or DEAD
    status: int | None
    error: str = ""
    retry_after_s: float | None = None


def classify(status: int, retry_after: str | None) -> Outcome:
    """What one HTTP answer from the target means for the record."""
    if 200 <= status < 300:
        return Outcome(DELIVERED, status)
    if status in RETRY_STATUSES or status >= 500 or 300 <= status < 400:
        return Outcome(RETRY, status, f"target answered {status}", parse_retry_after(retry_after))
    return Outcome(DEAD, status, f"target answered {status}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value[:9]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(config: IngressRouteConfig, attempts: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(retry_max_s, retry_base_s * 2**(attempts-1))]."""
    ceiling = min(config.retry_max_s, config.retry_base_s * 2.0 ** min(attempts - 1, 60))
    return rng.uniform(0.0, ceiling)


def forward_headers(
    headers: list[tuple[str, str]], delivery_id_header: str
) -> list[tuple[str, str]]:
    """The vendor's headers minus hop-by-hop ones (and those its Connection header names)."""
    named = set()
    for name, value in headers:
        if name.lower() == "connection":
            named |= {token.strip().lower() for token in value.split(",")}
    drop = HOP_BY_HOP | named | {delivery_id_header.lower(), ATTEMPT_HEADER.lower()}
    return [(name, value) for name, value in headers if name.lower() not in drop]


@dataclass
class Deliverer:
    spool: Spool
    metrics: IngressMetrics
    flowlog: Callable[[], FlowLog]
    delivery_id_header: str
    keep_delivered: bool
    routes: dict[str, DeliveryRoute] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    _client: DeliveryClient = field(default_factory=DeliveryClient)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _claimed: dict[str, SpoolRecord] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    _next_due: float = 0.0
    _stopping: bool = False
    _loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch())

    def wake(self, route: str = "") -> None:
        self._wake.set()

    async def _dispatch(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = time.time()
            for path, route in list(self.routes.items()):
                free = route.config.concurrency - self._in_flight.get(path, 0)
                if free <= 0 or self._stopping:
                    continue
                try:
                    records = await self.spool.claim(path, now, free)
                except SpoolUnavailable as exc:
                    log.error("could not claim webhooks for delivery: %s", exc)
                    records = []
                for record in records:
                    self._start_delivery(route, record)
            wait = POLL_S
            if self._next_due:
                wait = max(0.0, min(wait, self._next_due - time.time()))
                if wait == 0.0:
                    self._next_due = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _start_delivery(self, route: DeliveryRoute, record: SpoolRecord) -> None:
        path = route.config.path
        self._in_flight[path] = self._in_flight.get(path, 0) + 1
        self._claimed[record.id] = record
        task = asyncio.get_running_loop().create_task(self._deliver(route, record))
        self._tasks[record.id] = task

    async def _deliver(self, route: DeliveryRoute, record: SpoolRecord) -> None:
        try:
            outcome, started = await self._attempt(route, record)
            await self._settle(route, record, outcome, started)
        finally:
            # Counted by path: a reload replaces the route objects, not what is in flight.
            self._in_flight[route.config.path] -= 1
            self._tasks.pop(record.id, None)
            self._wake.set()

    async def _attempt(self, route: DeliveryRoute, record: SpoolRecord) -> tuple[Outcome, float]:
        config = route.config
        target = route.target
        record.attempts += 1
        headers = forward_headers(record.headers, self.delivery_id_header)
        headers += route.extra_headers
        headers.append((self.delivery_id_header, record.id))
        headers.append((ATTEMPT_HEADER, str(record.attempts)))
        request_target = target.with_query(record.query)
        started = time.time()
        try:
            if route.signer is not None:
                url = f"{target.scheme}://{target.host_header}{request_target}"
                headers = route.signer(record.method, url, headers, record.body)
            answer = await self._client.send(
                target,
                record.method,
                request_target,
                headers,
                record.body,
                config.timeout_s,
                route.ssl_context,
            )
        except TimeoutError:
            return Outcome(RETRY, None, f"no answer within {config.timeout_s:g} s"), started
        except (DeliveryError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            text = str(exc) or type(exc).__name__
            return Outcome(RETRY, None, text[:MAX_ERROR_CHARS]), started
        return classify(answer.status, answer.retry_after), started

    async def _settle(
        self, route: DeliveryRoute, record: SpoolRecord, outcome: Outcome, started: float
    ) -> None:
        config = route.config
        now = time.time()
        state = outcome.state
        if state == RETRY and record.attempts >= config.max_attempts:
            state = DEAD
            outcome.error = f"{outcome.error}; gave up after {record.attempts} attempts"
        record.last_status = outcome.status
        record.last_error = outcome.error
        next_attempt = 0.0
        if state == RETRY:
            delay = backoff_s(config, record.attempts, self.rng)
            if outcome.retry_after_s is not None:
                delay = min(outcome.retry_after_s, RETRY_AFTER_CAP_S)
            next_attempt = now + delay
            if not self._next_due or next_attempt < self._next_due:
                self._next_due = next_attempt
        spool_state = {DELIVERED: "delivered", RETRY: "pending", DEAD: "dead"}[state]
        try:
            await self.spool.finish(
                record,
                spool_state,
                now=now,
                next_attempt=next_attempt,
                keep_delivered=self.keep_delivered,
            )
        except SpoolUnavailable as exc:
            # Still 'delivering' on disk: the next start delivers it again.
            log.error("could not record the outcome of %s: %s", record.id, exc)
        self._claimed.pop(record.id, None)
        counters = self.metrics.route(config.path)
        {DELIVERED: counters.delivered, RETRY: counters.retries, DEAD: counters.dead}[state].inc()
        if state == DEAD:
            log.warning(
                "webhook %s on %s is dead after %d attempts: %s",
                record.id,
                config.path,
                record.attempts,
                outcome.error,
            )
        self.flowlog().write(_attempt_record(record, config, outcome, state, started))

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let deliveries in flight finish for `grace_s`, cut the rest and
        put their records back to pending (a later start delivers them)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=1.0)
        with contextlib.suppress(SpoolUnavailable):
            await self.spool.release(list(self._claimed))
        self._claimed.clear()
        await self._client.close()


def _attempt_record(
    record: SpoolRecord, config: IngressRouteConfig, outcome: Outcome, state: str, started: float
) -> WebhookRecord:
    target = urlsplit(config.target)
    return WebhookRecord(
        start=started,
        kind="delivery",
        peer=record.source,
        method=record.method,
        host=target.hostname,
        port=target.port or (443 if target.scheme == "https" else 80),
        status=outcome.status,
        bytes_up=len(record.body),
        duration_s=time.time() - started,
        reason=state,
        delivery_id=record.id,
        route=config.path,
        attempt=record.attempts,
        error=outcome.error or None,
    )
