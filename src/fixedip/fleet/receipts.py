"""Webhook receipts de-duplicated fleet-wide: the ingress relay's `ReceiptStore` on Redis.

A vendor that retries may reach another member (its DNS or load balancer picks one), so
the key made of the route and the vendor's delivery id lives in Redis, with the relay's
`dedupe_ttl_s` as its expiry (longer than the vendors' retry windows). The relay's rule
holds: `seen()` before spooling, `add()` after the commit, so the worst case is a
duplicate, never a loss.

Each member keeps the keys it added in a bounded local map too: while degraded it
answers from there (a retry to the same member is still caught), and on re-join writes
back the keys Redis does not have.
"""

from __future__ import annotations

import time

from fixedip.fleet.link import Link
from fixedip.fleet.resp import StoreUnavailable

MAX_LOCAL_KEYS = 100_000


class FleetReceipts:
    def __init__(self, link: Link, max_local: int = MAX_LOCAL_KEYS) -> None:
        self.link = link
        self._local: dict[str, tuple[str, float]] = {}  # key -> (delivery id, wall expiry)
        self._max_local = max_local
        link.on_rejoin.append(self.resync)

    def _key(self, key: str) -> str:
        return self.link.key("receipt", key)

    async def seen(self, key: str) -> str | None:
        link = self.link
        if not link.degraded:
            try:
                value = await link.redis.call("GET", self._key(key), timeout_s=link.timeout_s)
            except StoreUnavailable as exc:
                link.failed(exc)
            else:
                link.succeeded()
                return value.decode() if isinstance(value, bytes) else None
        entry = self._local.get(key)
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    async def add(self, key: str, delivery_id: str, ttl_s: float) -> None:
        self._local.pop(key, None)
        self._local[key] = (delivery_id, time.time() + ttl_s)
        while len(self._local) > self._max_local:
            del self._local[next(iter(self._local))]
        if not self.link.degraded:
            ttl_ms = max(1, round(ttl_s * 1000))
            self.link.redis.fire("SET", self._key(key), delivery_id, "PX", ttl_ms)

    async def resync(self) -> None:
        """On re-join: keys added while degraded, unless Redis has them already."""
        now = time.time()
        for key, (delivery_id, expires) in list(self._local.items()):
            if expires > now:
                ttl_ms = max(1, round((expires - now) * 1000))
                await self.link.redis.call(
                    "SET", self._key(key), delivery_id, "PX", ttl_ms, "NX", timeout_s=1.0
                )
