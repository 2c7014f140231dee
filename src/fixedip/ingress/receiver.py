"""The webhook listener: check, spool, and only then acknowledge.

Answers, in the order they are checked:

- 404 `unknown_path`: no route has this exact path;
- 403 `source_not_allowed`: the peer address is outside the route's `source_cidrs`;
- 413 `too_large`: the body exceeds the route's `max_body_bytes`;
- 408 `body_timeout`: the body did not arrive within `body_timeout_s`;
- 401 `missing_signature` / `bad_signature` / `timestamp_out_of_tolerance`;
- 200 `duplicate`: the vendor's own delivery id was acknowledged before;
- 503 `spool_full` / `spool_error` / `overloaded` (MAX_IN_FLIGHT requests in progress)
  with Retry-After: nothing was stored, send again;
- 200 `accepted` with `{"id": ...}`: the request is committed to disk.

The request is stored exactly as received: method, path, query, headers in their
original order and case, raw body, source address and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from fixedip.bounded import remember
from fixedip.ingress.observe import ACCEPTED, DUPLICATE, IngressMetrics, receipt_record
from fixedip.ingress.receipts import ReceiptStore, receipt_key
from fixedip.ingress.settings import IngressRouteConfig
from fixedip.ingress.signatures import Verifier
from fixedip.ingress.spool import Spool, SpoolFull, SpoolRecord, SpoolUnavailable

if TYPE_CHECKING:
    from fixedip.observe.flowlog import FlowLog

log = logging.getLogger("fixedip.ingress")

SPOOL_RETRY_AFTER_S = 30
READ_CHUNK_BYTES = 65536
MAX_CACHED_SOURCES = 4096
# Requests being read or committed at once; beyond it 503 (bounds memory under a flood).
MAX_IN_FLIGHT = 1024
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ReceiveRoute:
    """A route as the receiver uses it: its settings, a ready verifier, and the verdicts
    on source addresses seen so far (vendors send from a few addresses, again and again)."""

    config: IngressRouteConfig
    verifier: Verifier
    sources: dict[str, bool] = field(default_factory=dict)

    def allows(self, peer: str) -> bool:
        verdict = self.sources.get(peer)
        if verdict is None:
            verdict = remember(self.sources, peer, _allowed(peer, self.config), MAX_CACHED_SOURCES)
        return verdict


class Receiver:
    """The aiohttp low-level handler; `routes` may be swapped on reload."""

    def __init__(
        self,
        spool: Spool,
        receipts: ReceiptStore,
        metrics: IngressMetrics,
        flowlog: Callable[[], FlowLog],
        on_spooled: Callable[[str], None],
        dedupe_ttl_s: float,
        body_timeout_s: float,
    ) -> None:
        self.routes: dict[str, ReceiveRoute] = {}
        self.spool = spool
        self.receipts = receipts
        self.metrics = metrics
        self.flowlog = flowlog
        self.on_spooled = on_spooled
        self.dedupe_ttl_s = dedupe_ttl_s
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.in_flight >= MAX_IN_FLIGHT:
            raw_path = request.raw_path.partition("?")[0]
            if raw_path not in self.routes:
                raw_path = "*"  # never a metric label per unknown path
            return self._unavailable(
                time.time(), request.remote or "", request.method, raw_path, "overloaded", 0
            )
        self.in_flight += 1
        try:
            return await self._handle(request)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.time()
        peer = request.remote or ""
        raw_path, _, query = request.raw_path.partition("?")
        route = self.routes.get(raw_path)
        if route is None:
            return self._refuse(start, peer, request.method, raw_path, 404, "unknown_path", 0)
        config = route.config
        path = config.path
        counters = self.metrics.route(path)
        counters.received.inc()
        if not route.allows(peer):
            return self._refuse(start, peer, request.method, path, 403, "source_not_allowed", 0)
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(request, config.max_body_bytes)
        except TimeoutError:
            return self._refuse(start, peer, request.method, path, 408, "body_timeout", 0)
        if body is None:
            return self._refuse(start, peer, request.method, path, 413, "too_large", 0)
        why = route.verifier.check(request.headers, body, start)
        if why is not None:
            return self._refuse(start, peer, request.method, path, 401, why, len(body))
        key = None
        if self.dedupe_ttl_s > 0 and config.vendor_id_header:
            key = receipt_key(path, request.headers.get(config.vendor_id_header))
        if key is not None:
            original = await self.receipts.seen(key)
            if original is not None:
                counters.duplicates.inc()
                self._log(start, peer, request.method, path, 200, DUPLICATE, len(body), original)
                return _json(200, {"id": original, "duplicate": True})
        record = SpoolRecord(
            route=path,
            method=request.method,
            path=raw_path,
            query=query,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body,
            source=peer,
            received=start,
        )
        try:
            await self.spool.append(record)
        except SpoolFull as exc:
            log.warning("webhook on %s refused with 503: %s", path, exc)
            return self._unavailable(start, peer, request.method, path, "spool_full", len(body))
        except SpoolUnavailable as exc:
            log.error("webhook on %s refused with 503: %s", path, exc)
            return self._unavailable(start, peer, request.method, path, "spool_error", len(body))
        if key is not None:
            await self.receipts.add(key, record.id, self.dedupe_ttl_s)
        counters.spooled.inc()
        self.on_spooled(path)
        self.metrics.ack_seconds.observe(time.time() - start)
        self._log(start, peer, request.method, path, 200, ACCEPTED, len(body), record.id)
        return web.Response(body=b'{"id":"%s"}' % record.id.encode(), content_type=JSON)

    def _refuse(
        self, start: float, peer: str, method: str, path: str, status: int, reason: str, size: int
    ) -> web.Response:
        if status != 404:  # unknown paths are scanners' noise: no per-path series
            self.metrics.rejected.labels(path, reason).inc()
        self._log(start, peer, method, path, status, reason, size, None)
        response = _json(status, {"error": reason})
        if status in (408, 413):
            response.force_close()  # the rest of the body was not read
        return response

    def _unavailable(
        self, start: float, peer: str, method: str, path: str, reason: str, size: int
    ) -> web.Response:
        response = self._refuse(start, peer, method, path, 503, reason, size)
        response.headers["Retry-After"] = str(SPOOL_RETRY_AFTER_S)
        return response

    def _log(
        self,
        start: float,
        peer: str,
        method: str,
        path: str,
        status: int,
        reason: str,
        size: int,
        delivery_id: str | None,
    ) -> None:
        record = receipt_record(start, peer, method, path, status, reason, size)
        record.delivery_id = delivery_id
        self.flowlog().write(record)


def _allowed(peer: str, config: IngressRouteConfig) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in config.source_cidrs)


async def _read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The raw body, or None as soon as it is known to exceed `limit`."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while True:
        chunk = await request.content.read(READ_CHUNK_BYTES)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            return None


def _json(status: int, payload: dict[str, object]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type=JSON)
