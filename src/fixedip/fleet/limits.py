"""Fleet-wide rate and concurrency limits in Redis, decided locally most of the time.

One Lua script (ACQUIRE) checks a destination's pause, claims concurrency slots and takes
tokens, atomically and on Redis's clock. A slot is a lease (a sorted-set member scored by
its expiry) that this process renews every heartbeat, so a member that dies gives its
slots back within `[fleet] lease_s` without anyone's help.

A round trip per request costs several times the CPU of the rest of the limiter and
makes the request wait, so for limits that are high against the fleet's size each member
keeps a *reserve*: tokens and spare leased slots taken from Redis in one call, refilled
in the background when half is spent. Permits from the reserve, and releases of slots,
cost no Redis call; surplus spare slots go back in batches (benchmarks/fleet.py measures
the limiter's CPU per permit with and without the fleet store).

Why the fleet-wide bound still holds (what reaches a vendor in any window of t seconds
is at most rate x t + burst): with M members, each member keeps at most S tokens, and
every member takes from the shared bucket as if it held only burst - (M + 1) x S. Tokens
used in a window were either taken from the bucket in it (at most rate x t + burst -
(M + 1) x S) or held in a reserve when it began (at most M x S). The extra S in (M + 1)
leaves room for one member joining between two heartbeats; only several joining at once
can add up to S each until the others' next heartbeat, when they shrink their reserves.
Small limits (a vendor's 20/s) keep no reserve (S = 0): every permit asks Redis.
Concurrency is exact: spare slots are leases in Redis and count against the cap.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time

from fixedip.fleet.link import Link
from fixedip.fleet.resp import ReplyError, StoreUnavailable
from fixedip.identity.limits import SHARED_RECHECK_S, Blocked, LocalLimitStore

log = logging.getLogger("fixedip.fleet")

# KEYS: bucket, slots, pause. ARGV: rate per s, bucket capacity, concurrency (0: none),
# lease ms, lease id, extra tokens wanted, extra slots wanted, own (1: one permit for the
# caller first; 0: a refill, extras only). Returns {code, wait in microseconds, slots in
# use, extra tokens taken, extra slots taken}; code 0 granted, 1 paused, 2 no slot, 3 no
# token. The bucket is GCRA: one number, the microsecond it is full again. Extras are
# taken only from what is there now, never waited for; extra slot i is leased as
# "<lease id>+i".
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then return {1, paused * 1000, 0, 0, 0} end
local own = ARGV[8] == '1'
local conc = tonumber(ARGV[3])
local used = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  used = redis.call('ZCARD', KEYS[2])
  if own and used >= conc then return {2, 0, used, 0, 0} end
end
local rate = tonumber(ARGV[1])
local tokens = 0
if rate > 0 then
  local step = 1000000 / rate
  local span = tonumber(ARGV[2]) * step
  local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
  if full_at < now then full_at = now end
  if own then
    local wait = full_at + step - now - span
    if wait > 1 then return {3, math.ceil(wait), used, 0, 0} end
    full_at = full_at + step
  end
  local room = math.floor((now + span - full_at) / step + 0.000001)
  tokens = math.max(0, math.min(tonumber(ARGV[6]), room))
  if own or tokens > 0 then
    full_at = full_at + tokens * step
    redis.call('SET', KEYS[1], string.format('%.0f', full_at), 'PX', math.ceil(span / 1000) + 1000)
  end
end
local slots = 0
if conc > 0 then
  local expiry = string.format('%.0f', now + tonumber(ARGV[4]) * 1000)
  if own then
    redis.call('ZADD', KEYS[2], expiry, ARGV[5])
    used = used + 1
  end
  slots = math.max(0, math.min(tonumber(ARGV[7]), conc - used))
  for i = 1, slots do
    redis.call('ZADD', KEYS[2], expiry, ARGV[5] .. '+' .. i)
  end
  used = used + slots
  if own or slots > 0 then redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) * 2) end
end
return {0, 0, used, tokens, slots}
"""

# KEYS: slots. ARGV: lease ms, mode ("XX": only extend leases still there; "": re-add),
# lease ids...
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = string.format('%.0f', now + tonumber(ARGV[1]) * 1000)
local i = 3
while i <= #ARGV do
  local batch = {}
  if ARGV[2] == 'XX' then batch[1] = 'XX' end
  local last = math.min(#ARGV, i + 999)
  for j = i, last do
    batch[#batch + 1] = expiry
    batch[#batch + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], unpack(batch))
  i = last + 1
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""

_REASONS: dict[int, Blocked] = {
    1: "destination_paused",
    2: "concurrency_limited",
    3: "rate_limited",
}

RESERVE_SHARE = 4  # all reserves together hold at most 1/4 of a limit
MIN_RESERVE = 2  # smaller reserves are not kept: every permit asks Redis
# Tokens run out with throughput (a refill per half reserve), slots only with more
# requests in flight at once (a released slot goes back to the spares): a larger cap
# for tokens, and a small one for slots, which a dying member strands for lease_s.
MAX_TOKENS = 1024
MAX_SLOTS = 256
RESERVE_CHECK_S = 1.0  # a reserve in use asks Redis at least this often (another's pause)
SPARE_IDLE_S = 1.0  # spare slots unused for this long go back at the next heartbeat
MAX_RELEASE_BATCH = 512  # lease ids per ZREM


def reserve_size(limit: float, members: int, most: int) -> int:
    """The most one of `members` keeps of `limit` (tokens of a burst, or slots), at most
    `most`; 0 when that would be too small to save round trips. Room is left for one
    more member."""
    size = min(most, int(limit // (RESERVE_SHARE * (max(1, members) + 1))))
    return size if size >= MIN_RESERVE else 0


class _Key:
    """This process's part of one limit key."""

    __slots__ = (
        "burst",
        "checked_at",
        "concurrency",
        "held",
        "rate",
        "refill",
        "spare",
        "spare_target",
        "token_target",
        "tokens",
        "used_at",
    )

    def __init__(self) -> None:
        self.held: list[str] = []  # lease ids of the permits held now
        self.spare: list[str] = []  # leased in Redis, not in use yet
        self.tokens = 0  # reserve tokens, taken from the shared bucket
        self.token_target = 0
        self.spare_target = 0
        self.refill: asyncio.Future[None] | None = None  # a Redis call for this key in flight
        self.checked_at = 0.0  # the last answer from Redis for this key
        self.used_at = 0.0  # the last permit from the reserve
        self.rate = 0.0
        self.burst = 0.0
        self.concurrency = 0


class FleetLimitStore:
    """Buckets, leased slots and pauses in Redis, with a small reserve per member for
    high limits; see the module docstring for why the fleet never exceeds a limit."""

    shared = True

    def __init__(self, link: Link) -> None:
        self.link = link
        self.lease_ms = max(1, round(link.settings.lease_s * 1000))
        self._local = LocalLimitStore(parts=link.members)
        self._keys: dict[str, _Key] = {}
        self._ids = itertools.count()
        self._in_use: dict[str, int] = {}  # slot counts Redis reported last
        self._tasks: set[asyncio.Task[object]] = set()
        self.round_trips = 0  # permit and refill calls sent to Redis (/egress shows both)
        self.reserved_permits = 0  # permits decided here, from the reserve
        self._acquire = link.redis.script(ACQUIRE)
        self._renew = link.redis.script(RENEW)
        link.on_rejoin.append(self.resync)
        link.on_change.append(lambda degraded: self._drop_reserves() if degraded else None)

    def _state(self, key: str) -> _Key:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        return state

    def _capacity(self, burst: float) -> float:
        """The bucket every member of this fleet takes from: burst less all reserves."""
        members = max(1, self.link.members)
        return burst - (members + 1) * reserve_size(burst, members, MAX_TOKENS)

    # the request path ---------------------------------------------------------------
    def try_reserved(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> bool:
        """A permit from this member's reserve, without asking Redis; False if there is
        none (or the destination is paused here). Starts a refill when half is spent."""
        state = self._keys.get(key)
        if state is None:
            return False
        if (rate_per_s and state.tokens <= 0) or (concurrency and not state.spare):
            return False
        if self._local.paused_for(key) > 0:
            return False
        if concurrency:
            state.held.append(state.spare.pop())
        if rate_per_s:
            state.tokens -= 1
        self.reserved_permits += 1
        now = time.monotonic()
        state.used_at = now
        if state.refill is None and (
            (rate_per_s and state.tokens * 2 < state.token_target)
            or (concurrency and len(state.spare) * 2 < state.spare_target)
            or now - state.checked_at > RESERVE_CHECK_S
        ):
            self._refill_soon(key, state, rate_per_s, burst, concurrency or 0)
        return True

    def _refill_soon(
        self, key: str, state: _Key, rate_per_s: float, burst: float, concurrency: int
    ) -> None:
        loop = asyncio.get_running_loop()
        state.refill = loop.create_future()
        task = loop.create_task(self._call(key, state, rate_per_s, burst, concurrency, own=False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def attempt(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> tuple[float, Blocked | None] | None:
        state = self._state(key)
        if state.refill is not None:  # one call per key at a time: share its answer
            await asyncio.wait((state.refill,))
            if self.link.degraded:
                return None
            if self.try_reserved(key, rate_per_s, burst, concurrency):
                return 0.0, None
        return await self._call(key, state, rate_per_s, burst, concurrency or 0, own=True)

    async def _call(
        self, key: str, state: _Key, rate_per_s: float, burst: float, concurrency: int, *, own: bool
    ) -> tuple[float, Blocked | None] | None:
        """One ACQUIRE: a permit for the caller (own) and/or the reserve topped up."""
        link = self.link
        members = max(1, link.members)
        state.rate, state.burst, state.concurrency = rate_per_s, burst, concurrency
        # One call per key tops the reserve up: a refill started by try_reserved, or the
        # first caller that finds none in flight (later ones wait for it in attempt).
        done = None if own else state.refill
        extra_tokens = extra_slots = 0
        if done is not None or state.refill is None:
            if rate_per_s:
                state.token_target = reserve_size(burst, members, MAX_TOKENS)
                extra_tokens = max(0, state.token_target - state.tokens)
            if concurrency:
                state.spare_target = reserve_size(concurrency, members, MAX_SLOTS)
                extra_slots = max(0, state.spare_target - len(state.spare))
            if done is None and (extra_tokens or extra_slots):
                done = state.refill = asyncio.get_running_loop().create_future()
        lease = self._lease_id()
        args = [
            repr(float(rate_per_s)),
            repr(float(self._capacity(burst))),
            concurrency,
            self.lease_ms,
            lease,
            extra_tokens,
            extra_slots,
            1 if own else 0,
        ]
        self.round_trips += 1
        try:
            reply = await link.redis.run_script(
                self._acquire, self._keys_of(key), args, timeout_s=link.timeout_s
            )
        except StoreUnavailable as exc:
            link.failed(exc)
            return None
        except ReplyError as exc:  # a broken server (NOSCRIPT is retried with EVAL)
            log.warning("fleet: the limit script failed (%s): serving from local state", exc)
            link.degrade(f"limit script failed: {exc}")
            return None
        finally:
            if done is not None:
                if state.refill is done:
                    state.refill = None
                done.set_result(None)
        link.succeeded()
        code, wait_us, used, tokens, slots = reply
        self._in_use[key] = used
        state.checked_at = time.monotonic()
        if link.degraded:  # degraded meanwhile: what was taken expires in Redis
            return None
        if slots:
            state.spare.extend(f"{lease}+{i}" for i in range(1, slots + 1))
        state.tokens += tokens
        if code == 0:
            if own and concurrency:
                state.held.append(lease)
            return 0.0, None
        if code == 1:  # another member's pause: the reserve waits too
            self._local.pause(key, wait_us / 1e6)
        if code == 2:
            return SHARED_RECHECK_S, "concurrency_limited"
        return wait_us / 1e6, _REASONS.get(code, "rate_limited")

    def _drop_reserves(self) -> None:
        """Degraded: reserves are Redis's; they expire there by themselves."""
        for state in self._keys.values():
            state.spare.clear()
            state.tokens = 0

    @property
    def remote(self) -> bool:
        return not self.link.degraded

    def _keys_of(self, key: str) -> list[str]:
        base = self.link.key("lim", key)
        return [f"{base}:b", f"{base}:s", f"{base}:p"]

    def _lease_id(self) -> str:
        return f"{self.link.member_id}:{next(self._ids)}"

    # the synchronous LimitStore: local state while degraded --------------------------
    def take_token(self, key: str, rate_per_s: float, burst: float) -> float:
        self._local.parts = self.link.members
        return self._local.take_token(key, rate_per_s, burst)

    def claim_slot(self, key: str, limit: int) -> bool:
        self._local.parts = self.link.members
        state = self._state(key)
        if len(state.held) >= max(1, math.ceil(limit / max(1, self.link.members))):
            return False
        state.held.append(self._lease_id())
        return True

    def release_slot(self, key: str) -> None:
        """The slot goes back to the spares; a surplus goes back to Redis in one batch."""
        state = self._keys.get(key)
        if state is None or not state.held:
            return
        lease = state.held.pop()
        if self.link.degraded:
            return
        spare = state.spare
        spare.append(lease)
        target = state.spare_target
        if len(spare) > target + target // 2:
            surplus = spare[target:]
            del spare[target:]
            self._give_back(key, surplus)

    def _give_back(self, key: str, leases: list[str]) -> None:
        slots = self._keys_of(key)[1]
        for i in range(0, len(leases), MAX_RELEASE_BATCH):
            self.link.redis.fire("ZREM", slots, *leases[i : i + MAX_RELEASE_BATCH])

    def slots_in_use(self, key: str) -> int:
        state = self._keys.get(key)
        held = len(state.held) if state is not None else 0
        if self.link.degraded:
            return held
        return self._in_use.get(key, held)

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
                self._keys_of(key)[2],
                ms,
            )

    def paused_for(self, key: str) -> float:
        return self._local.paused_for(key)

    # background ------------------------------------------------------------------
    def renew(self) -> None:
        """Every heartbeat: extend every lease this process holds, give back spare
        slots unused for SPARE_IDLE_S, and shrink reserves to the member count now."""
        now = time.monotonic()
        members = max(1, self.link.members)
        for key, state in list(self._keys.items()):
            if state.spare:
                keep = reserve_size(state.concurrency, members, MAX_SLOTS)
                if now - state.used_at > SPARE_IDLE_S:
                    keep = 0
                if len(state.spare) > keep:
                    self._give_back(key, state.spare[keep:])
                    del state.spare[keep:]
                state.spare_target = min(state.spare_target, keep)
            if state.rate:
                cap = reserve_size(state.burst, members, MAX_TOKENS)
                state.tokens = min(state.tokens, cap)  # the rest is dropped, never used
                state.token_target = min(state.token_target, cap)
            leases = [*state.held, *state.spare]
            if leases:
                self.link.redis.fire(
                    "EVALSHA", self._renew, 1, self._keys_of(key)[1], self.lease_ms, "XX", *leases
                )

    async def resync(self) -> None:
        """On re-join: the slots held now (also those taken while degraded) become leases."""
        self._drop_reserves()
        for key, state in list(self._keys.items()):
            if state.held:
                await self.link.redis.call(
                    "EVALSHA",
                    self._renew,
                    1,
                    self._keys_of(key)[1],
                    self.lease_ms,
                    "",
                    *state.held,
                    timeout_s=1.0,
                )

    def held(self) -> int:
        return sum(len(state.held) for state in self._keys.values())
