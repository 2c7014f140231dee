"""Redis-backed state behind the same interfaces as the local state.

- `FleetLimitStore` (a `RemoteLimitStore`, in `fixedip.fleet.limits`): token buckets,
  leased concurrency slots and pauses shared by the fleet, with a small reserve per
  member for high limits.
- `FleetHealthStore` (a `HealthStore`): quarantines are read from a local mirror (no
  Redis call on the request path), written through to one Redis hash with wall-clock
  times, and pulled every heartbeat, so a block seen by one member is known to all.
- `CanaryLock`: a canary for an (egress IP, destination) runs once for the fleet; the
  members that did not run it take its result from Redis.

While the link is degraded every store serves from local state: limits divided by the
last known member count. On re-join the slots held and quarantines learnt meanwhile are
written back before the store is used again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from fixedip.fleet.link import Link
from fixedip.fleet.resp import StoreUnavailable
from fixedip.identity.health import MemoryHealthStore, Quarantine

log = logging.getLogger("fixedip.fleet")


class FleetHealthStore:
    """Quarantines shared by the fleet; reads never leave the process."""

    def __init__(
        self,
        link: Link,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self._mirror = MemoryHealthStore()
        self._hash = link.key("quarantine")
        self._clock, self._wall = clock, wall
        link.on_rejoin.append(self.resync)

    # HealthStore ---------------------------------------------------------------------
    def get(self, egress: str, host: str) -> Quarantine | None:
        return self._mirror.get(egress, host)

    def put(self, quarantine: Quarantine) -> None:
        self._mirror.put(quarantine)
        if not self.link.degraded:
            self.link.redis.fire("HSET", self._hash, _field(quarantine), self._encode(quarantine))

    def remove(self, egress: str, host: str) -> None:
        self._mirror.remove(egress, host)
        if not self.link.degraded:
            self.link.redis.fire("HDEL", self._hash, f"{egress}|{host}")

    def for_host(self, host: str) -> Collection[Quarantine]:
        return self._mirror.for_host(host)

    def all(self) -> list[Quarantine]:
        return self._mirror.all()

    # sync ---------------------------------------------------------------------------
    def _encode(self, q: Quarantine) -> str:
        offset = self._wall() - self._clock()
        return json.dumps(
            {
                "egress": q.egress,
                "host": q.host,
                "level": q.level,
                "reason": q.reason,
                "since": round(q.since + offset, 3),
                "until": round(q.until + offset, 3),
                "awaiting_canary": q.awaiting_canary,
            }
        )

    def _decode(self, raw: bytes) -> Quarantine | None:
        try:
            entry = json.loads(raw)
            offset = self._clock() - self._wall()
            return Quarantine(
                str(entry["egress"]),
                str(entry["host"]),
                int(entry["level"]),
                str(entry["reason"]),
                float(entry["since"]) + offset,
                float(entry["until"]) + offset,
                bool(entry["awaiting_canary"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    async def _remote(self) -> dict[tuple[str, str], Quarantine]:
        reply = await self.link.call("HGETALL", self._hash)
        out = {}
        items = reply if isinstance(reply, list) else []
        for raw in items[1::2]:
            q = self._decode(raw)
            if q is not None:
                out[(q.egress, q.host)] = q
        return out

    async def pull(self) -> None:
        """Replace the mirror with the fleet's quarantines (every heartbeat)."""
        remote = await self._remote()
        mirror = MemoryHealthStore()
        for q in remote.values():
            mirror.put(q)
        self._mirror = mirror

    async def resync(self) -> None:
        """On re-join: quarantines learnt while degraded are written back (the later
        back-off wins), then the fleet's are read."""
        remote = await self._remote()
        for q in self._mirror.all():
            theirs = remote.get((q.egress, q.host))
            if theirs is None or theirs.until < q.until:
                await self.link.call("HSET", self._hash, _field(q), self._encode(q))
        await self.pull()


def _field(q: Quarantine) -> str:
    return f"{q.egress}|{q.host}"


CANARY_POLL_S = 0.1
CANARY_RESULT_TTL_MS = 10_000


class CanaryLock:
    """Run a canary once for the fleet: the first member takes a short lock and runs
    it; the others wait for its result in Redis and report that instead."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def run_once(
        self, egress: str, host: str, timeout_s: float, run: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The canary's result (from this member's run or another's); None when another
        member ran it and no result arrived in time."""
        link = self.link
        if link.degraded:
            return await run()
        lock, result_key = link.key("canary", egress, host), link.key("canary-result", egress, host)
        hold_ms = max(1, round((timeout_s + 1.0) * 1000))
        try:
            taken = await link.call("SET", lock, link.member_id, "NX", "PX", hold_ms)
        except StoreUnavailable:
            return await run()
        if taken is not None:
            link.redis.fire("DEL", result_key)  # an older run's answer is not this one's
            result = await run()
            link.redis.fire("SET", result_key, json.dumps(result), "PX", CANARY_RESULT_TTL_MS)
            return result
        deadline = time.monotonic() + timeout_s + 1.0
        while time.monotonic() < deadline:
            await asyncio.sleep(CANARY_POLL_S)
            try:
                raw = await link.call("GET", result_key)
            except StoreUnavailable:
                return await run()
            if raw is not None:
                try:
                    return json.loads(raw)
                except ValueError:
                    return None
        return None
