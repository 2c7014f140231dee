"""Redis-backed state behind the same interfaces as the local state.

- `FleetLimitStore` (a `RemoteLimitStore`): one Lua script per permit checks the
  destination's pause, claims a concurrency slot and takes a token, atomically and on
  Redis's clock. A slot is a lease (a sorted-set member scored by its expiry) that this
  process renews while it holds it, so a member that dies gives its slots back within
  `[fleet] lease_s` without anyone's help.
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
import itertools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from fixedip.fleet.link import Link
from fixedip.fleet.resp import ReplyError, StoreUnavailable
from fixedip.identity.health import MemoryHealthStore, Quarantine
from fixedip.identity.limits import SHARED_RECHECK_S, Blocked, LocalLimitStore

log = logging.getLogger("fixedip.fleet")

# KEYS: bucket, slots, pause. ARGV: rate per s, burst, concurrency (0: none), lease ms,
# lease id, extra tokens wanted, extra slots wanted. Returns {code, wait in microseconds,
# slots in use, extra tokens taken, extra slots taken}; code 0 granted, 1 paused, 2 no
# slot, 3 no token. The bucket is GCRA: one number, the microsecond it is full again.
# Extras (a member's small reserve) are taken only from what is there now, never waited
# for; extra slot i is leased as "<lease id>+i".
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {1, paused * 1000, 0, 0, 0} end
local conc = tonumber(ARGV[3])
local used = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  used = redis.call('ZCARD', KEYS[2])
  if used >= conc then return {2, 0, used, 0, 0} end
end
local rate = tonumber(ARGV[1])
local tokens = 0
if rate > 0 then
  local step = 1000000 / rate
  local span = tonumber(ARGV[2]) * step
  local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
  if full_at < now then full_at = now end
  local after = full_at + step
  local wait = after - now - span
  if wait > 1 then return {3, math.ceil(wait), used, 0, 0} end
  local room = math.floor((now + span - after) / step + 0.000001)
  tokens = math.max(0, math.min(tonumber(ARGV[6]), room))
  after = after + tokens * step
  redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.ceil(span / 1000) + 1000)
end
local slots = 0
if conc > 0 then
  local expiry = string.format('%.0f', now + tonumber(ARGV[4]) * 1000)
  redis.call('ZADD', KEYS[2], expiry, ARGV[5])
  used = used + 1
  slots = math.max(0, math.min(tonumber(ARGV[7]), conc - used))
  for i = 1, slots do
    redis.call('ZADD', KEYS[2], expiry, ARGV[5] .. '+' .. i)
  end
  used = used + slots
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2)
end
return {0, 0, used, tokens, slots}
"""

# KEYS: slots. ARGV: lease ms, mode ("XX": only extend leases still there; "": re-add),
# lease ids...
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = string.format('%.0f', now + tonumber(ARGV[1]) * 1000)
for i = 3, #ARGV do
  if ARGV[2] == 'XX' then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], expiry, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""

_REASONS: dict[int, Blocked] = {
    1: "destination_paused",
    2: "concurrency_limited",
    3: "rate_limited",
}


RESERVE_SHARE = 4  # a member keeps at most 1 / (4 x members) of a limit in reserve
MIN_RESERVE = 2  # smaller reserves are not kept: every permit asks Redis
MAX_RESERVE = 256  # keeps the script short and what a dying member strands small
RESERVE_TTL_S = 1.0  # reserve tokens older than this are dropped; idle spare slots returned


class FleetLimitStore:
    """Buckets, leased slots and pauses in Redis; see the module docstring.

    High limits: when a destination's burst or concurrency is large against the fleet's
    size, each Redis round trip also takes a small reserve (at most a 1/(4 x members)
    share, whatever is there at once) that later permits use without asking Redis
    (`try_reserved`). Reserved tokens and slots were taken from the shared bucket and
    lease set, so the fleet never exceeds a limit; a reserve only delays another
    member's turn, and is dropped after RESERVE_TTL_S unused. Small limits (a vendor's
    20/s) keep no reserve: every permit is decided in Redis.
    """

    shared = True

    def __init__(self, link: Link) -> None:
        self.link = link
        self.lease_ms = max(1, round(link.settings.lease_s * 1000))
        self._local = LocalLimitStore(parts=link.members)
        self._held: dict[str, list[str]] = {}  # lease ids this process holds, per key
        self._spare: dict[str, list[str]] = {}  # leased in Redis, not in use yet
        self._spare_target: dict[str, int] = {}
        self._tokens: dict[str, tuple[int, float]] = {}  # reserve: (count, when taken)
        self._used_at: dict[str, float] = {}  # last permit from the reserve, per key
        self._refilling: set[str] = set()  # keys with a reserve request in flight
        self._ids = itertools.count()
        self._in_use: dict[str, int] = {}  # slot counts Redis reported last
        self._acquire = link.redis.script(ACQUIRE)
        self._renew = link.redis.script(RENEW)
        link.on_rejoin.append(self.resync)
        link.on_change.append(lambda degraded: self._drop_reserves() if degraded else None)

    def _reserve_size(self, limit: float) -> int:
        size = min(MAX_RESERVE, int(limit // (RESERVE_SHARE * max(1, self.link.members))))
        return size if size >= MIN_RESERVE else 0

    def try_reserved(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> bool:
        """A permit from this member's reserve, without asking Redis; False if there is
        none (or the destination is paused here)."""
        now = time.monotonic()
        if rate_per_s:
            entry = self._tokens.get(key)
            if entry is None or entry[0] <= 0 or now - entry[1] > RESERVE_TTL_S:
                return False
        if concurrency:
            spare = self._spare.get(key)
            if not spare:
                return False
        if self._local.paused_for(key) > 0:
            return False
        if concurrency:
            self._held.setdefault(key, []).append(self._spare[key].pop())
        if rate_per_s:
            count, taken = self._tokens[key]
            self._tokens[key] = (count - 1, taken)
        self._used_at[key] = now
        return True

    def _drop_reserves(self) -> None:
        """Degraded: reserves are Redis's; they expire there by themselves."""
        self._spare.clear()
        self._tokens.clear()

    @property
    def remote(self) -> bool:
        return not self.link.degraded

    def _keys(self, key: str) -> list[str]:
        base = self.link.key("lim", key)
        return [f"{base}:b", f"{base}:s", f"{base}:p"]

    def _lease_id(self) -> str:
        return f"{self.link.member_id}:{next(self._ids)}"

    async def attempt(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> tuple[float, Blocked | None] | None:
        link = self.link
        lease = self._lease_id()
        extra_tokens = extra_slots = 0
        refill = key not in self._refilling  # one reserve request in flight per key
        if refill and rate_per_s:
            size = self._reserve_size(burst)
            entry = self._tokens.get(key)
            fresh = entry[0] if entry and time.monotonic() - entry[1] <= RESERVE_TTL_S else 0
            extra_tokens = max(0, size - fresh)
        if refill and concurrency:
            target = self._spare_target[key] = self._reserve_size(concurrency)
            extra_slots = max(0, target - len(self._spare.get(key, ())))
        if extra_tokens or extra_slots:
            self._refilling.add(key)
        else:
            refill = False
        args = [
            repr(float(rate_per_s)),
            repr(float(burst)),
            concurrency or 0,
            self.lease_ms,
            lease,
            extra_tokens,
            extra_slots,
        ]
        try:
            reply = await link.redis.run_script(
                self._acquire, self._keys(key), args, timeout_s=link.timeout_s
            )
        except StoreUnavailable as exc:
            link.failed(exc)
            return None
        except ReplyError as exc:  # a broken server (NOSCRIPT is retried with EVAL)
            log.warning("fleet: the limit script failed (%s): serving from local state", exc)
            link.degrade(f"limit script failed: {exc}")
            return None
        finally:
            if refill:
                self._refilling.discard(key)
        link.succeeded()
        code, wait_us, used, tokens, slots = reply
        self._in_use[key] = used
        if code == 0:
            now = time.monotonic()
            if concurrency:
                self._held.setdefault(key, []).append(lease)
                if slots:
                    spare = self._spare.setdefault(key, [])
                    spare.extend(f"{lease}+{i}" for i in range(1, slots + 1))
            if tokens:
                entry = self._tokens.get(key)
                kept = entry[0] if entry and now - entry[1] <= RESERVE_TTL_S else 0
                self._tokens[key] = (kept + tokens, now)
            if tokens or slots:
                self._used_at[key] = now
            return 0.0, None
        if code == 2:
            return SHARED_RECHECK_S, "concurrency_limited"
        return wait_us / 1e6, _REASONS.get(code, "rate_limited")

    # the synchronous LimitStore: local state while degraded --------------------------
    def take_token(self, key: str, rate_per_s: float, burst: float) -> float:
        self._local.parts = self.link.members
        return self._local.take_token(key, rate_per_s, burst)

    def claim_slot(self, key: str, limit: int) -> bool:
        self._local.parts = self.link.members
        held = self._held.setdefault(key, [])
        if len(held) >= max(1, math.ceil(limit / max(1, self.link.members))):
            if not held:
                del self._held[key]
            return False
        held.append(self._lease_id())
        return True

    def release_slot(self, key: str) -> None:
        held = self._held.get(key)
        if not held:
            return
        lease = held.pop()
        if not held:
            del self._held[key]
        if self.link.degraded:
            return
        spare = self._spare.get(key)
        if spare is not None and len(spare) < self._spare_target.get(key, 0):
            spare.append(lease)  # still leased: the next permit here uses it
        else:
            self.link.redis.fire("ZREM", self._keys(key)[1], lease)

    def slots_in_use(self, key: str) -> int:
        if self.link.degraded:
            return len(self._held.get(key, ()))
        return self._in_use.get(key, len(self._held.get(key, ())))

    def pause(self, key: str, seconds: float) -> None:
        self._local.pause(key, seconds)
        if not self.link.degraded:
            ms = max(1, round(seconds * 1000))
            # Keep the later deadline: only set when longer than what is there.
            self.link.redis.fire(
                "EVAL",
                "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then "
                "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end return 1",
                1,
                self._keys(key)[2],
                ms,
            )

    def paused_for(self, key: str) -> float:
        return self._local.paused_for(key)

    # background ------------------------------------------------------------------
    def renew(self) -> None:
        """Extend every lease this process holds (call every heartbeat); give back spare
        slots nobody here used for RESERVE_TTL_S."""
        now = time.monotonic()
        for key, spare in list(self._spare.items()):
            if spare and now - self._used_at.get(key, 0.0) > RESERVE_TTL_S:
                self.link.redis.fire("ZREM", self._keys(key)[1], *spare)
                spare.clear()
        for key in set(self._held) | {k for k, v in self._spare.items() if v}:
            leases = [*self._held.get(key, ()), *self._spare.get(key, ())]
            self.link.redis.fire(
                "EVALSHA", self._renew, 1, self._keys(key)[1], self.lease_ms, "XX", *leases
            )

    async def resync(self) -> None:
        """On re-join: the slots held now (also those taken while degraded) become leases."""
        self._drop_reserves()
        for key, leases in list(self._held.items()):
            if leases:
                await self.link.redis.call(
                    "EVALSHA",
                    self._renew,
                    1,
                    self._keys(key)[1],
                    self.lease_ms,
                    "",
                    *leases,
                    timeout_s=1.0,
                )

    def held(self) -> int:
        return sum(len(v) for v in self._held.values())


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
