"""Rate and concurrency shaping per destination (`[[destinations]]` rate, burst,
per_egress_ip, concurrency, queue_timeout_s).

The gateway asks `Limits.for_host(host)` for the destination's `Limiter` and holds a
`Permit` from it around every forwarded request, CONNECT tunnel and SOCKS5 tunnel.
A permit needs a token from the destination's bucket (rate, burst) *and* a concurrency
slot; callers that find neither wait in one FIFO queue per key, for at most
`queue_timeout_s`, and are then refused with `LimitExceeded`, which carries the
Retry-After to send. Waiters wake on timers (`loop.call_later`) and on releases, never
by polling. `pause()` honours an upstream Retry-After: no permits for that key until it
has passed.

With `per_egress_ip`, every egress IP has its own bucket, slots and pause (vendors that
count per IP); otherwise the key a caller passes is ignored and the destination shares
one of each.

All state lives behind `LimitStore`; this module ships the in-process `LocalLimitStore`.
A store shared by workers or a fleet (Redis) must guarantee:

- `take_token` is one atomic read-modify-write per key, computed on the *store's* clock
  (e.g. Redis TIME inside a Lua script): monotonic clocks of different processes and
  hosts share no origin, so callers never pass a time. The bucket is one timestamp per
  key (GCRA, see `TokenBucket`), so an atomic update is cheap.
- `claim_slot` checks and increments in one step and never exceeds the limit;
  `release_slot` decrements. Slots held by a member that dies must come back by
  themselves (a lease per member, refreshed while alive), or they leak for good.
- `pause` keeps the later of the current and the new deadline and expires by itself.
- `shared` is True: a slot freed in another process wakes no local waiter, so a waiter
  blocked on a slot re-checks every `SHARED_RECHECK_S`. FIFO order holds per process.
- Store errors propagate out of `acquire`; the gateway decides whether to fail open.

A store reached over the network (the fleet's Redis, `fixedip.fleet.store`) also
implements `RemoteLimitStore`: while it is reachable a permit is one awaited `attempt`
(or comes from a reserve it took ahead, `try_reserved`), and when it is not, the
synchronous methods above serve from local state.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, cast

from fixedip.bounded import remember
from fixedip.policy.rules import Rule, normalise_host, parse_rule

QUEUE_TIMEOUT_S = 5.0
MAX_WAITERS = 1000
MAX_PAUSE_S = 3600.0  # an upstream Retry-After longer than this is capped
MAX_RETRY_AFTER_S = 3600
SHARED_RECHECK_S = 0.1
DEFAULT_HOLD_S = 1.0  # assumed permit lifetime until one has been released
HOLD_EWMA_WEIGHT = 0.2
EARLY_S = 1e-6  # a token due within this is taken now: float rounding, not a real wait
MAX_HOST_CACHE = 4096

Blocked = Literal["rate_limited", "concurrency_limited", "destination_paused"]
"""Why a caller had to wait; the values are the Reason names the gateway reports."""

_RATE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/(s|min)")
_PERIOD_S = {"s": 1.0, "min": 60.0}
_RATE_HINT = 'write a positive number per second or per minute, e.g. "20/s" or "600/min"'


@dataclass(frozen=True, slots=True)
class Rate:
    """A steady rate, as written in the configuration (`text`) and in tokens per second."""

    per_s: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> Rate:
    """Parse `"20/s"`, `"600/min"` or `"1.5/s"`; a ValueError says how to write it."""
    if not isinstance(text, str):  # TOML `rate = 20` arrives as a number
        raise ValueError(f'rate {text!r} needs a unit: write it as a string, e.g. "{text}/s"')
    spelled = text.strip()
    found = _RATE.fullmatch(spelled)
    if found is None:
        raise ValueError(f'rate "{text}" is not understood: {_RATE_HINT}')
    count = float(found[1])
    if count <= 0:
        raise ValueError(f'rate "{text}" lets nothing through: {_RATE_HINT}')
    return Rate(per_s=count / _PERIOD_S[found[2]], text=spelled)


class TokenBucket:
    """A token bucket kept as one timestamp, the moment it will be full again (GCRA).

    It starts full. Each token pushes that moment `1 / rate_per_s` later; a take is
    allowed while the moment stays within `burst / rate_per_s` of now. A long idle
    therefore caps at `burst` by construction.
    """

    __slots__ = ("_clock", "_full_at", "burst", "rate_per_s")

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"a bucket needs a positive rate, not {rate_per_s}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"a bucket's burst must be at least 1, not {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._full_at = clock()

    @property
    def tokens(self) -> float:
        """How many tokens could be taken now."""
        behind = max(0.0, self._full_at - self._clock())
        return max(0.0, self.burst - behind * self.rate_per_s)

    def try_take(self, n: float = 1) -> float:
        """Take `n` tokens and return 0.0, or take none and return the seconds until
        `n` will be there."""
        if not 0 < n <= self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of {self.burst}")
        now = self._clock()
        full_at = max(self._full_at, now) + n / self.rate_per_s
        wait = full_at - now - self.burst / self.rate_per_s
        if wait > EARLY_S:
            return wait
        self._full_at = full_at
        return 0.0


class LimitStore(Protocol):
    """Bucket, slot and pause state per key; see the module docstring for what a
    shared implementation must guarantee."""

    @property
    def shared(self) -> bool:
        """True when other processes change this state (releases wake no local waiter)."""
        ...

    def take_token(self, key: str, rate_per_s: float, burst: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        ...

    def claim_slot(self, key: str, limit: int) -> bool:
        """Count one more holder of `key` unless `limit` are already counted."""
        ...

    def release_slot(self, key: str) -> None: ...

    def slots_in_use(self, key: str) -> int: ...

    def pause(self, key: str, seconds: float) -> None:
        """No tokens or slots for `key` for `seconds` (a longer pause already set stays)."""
        ...

    def paused_for(self, key: str) -> float:
        """Seconds the pause on `key` still lasts; 0.0 when there is none."""
        ...


class RemoteLimitStore(LimitStore, Protocol):
    """A store reached over the network (a fleet's Redis): a permit costs one awaited
    round trip, so `Limiter.try_acquire` defers to `acquire` while `remote` is True.
    When the store cannot be asked, `attempt` returns None and the Limiter uses the
    synchronous methods, which then serve from local state."""

    @property
    def remote(self) -> bool:
        """True while attempts go to the shared store (False: degraded, serve locally)."""
        ...

    async def attempt(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> tuple[float, Blocked | None] | None:
        """Pause check, slot claim and token take in one atomic step: (0.0, None) when
        a permit was granted, (seconds to wait, why) when not, None if not asked."""
        ...

    def try_reserved(
        self, key: str, rate_per_s: float, burst: float, concurrency: int | None
    ) -> bool:
        """A permit from what this process took ahead from the shared store, without a
        round trip; False when it has none."""
        ...


class LocalLimitStore:
    """The in-process store: exact, cheap, and per process (one gateway worker).

    With `parts` > 1 every limit is divided by it (rate, burst and concurrency, each at
    least 1): N processes that cannot share state then never let more through together
    than one would (workers without a fleet store, a fleet member cut off from Redis).
    A bucket whose rate or burst changed (a reload) starts again, full.
    """

    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic, parts: int = 1) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._slots: dict[str, int] = {}
        self._paused: dict[str, float] = {}
        self.parts = parts

    def take_token(self, key: str, rate_per_s: float, burst: float) -> float:
        if self.parts > 1:
            rate_per_s, burst = rate_per_s / self.parts, max(1.0, burst / self.parts)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate_per_s != rate_per_s or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(rate_per_s, burst, self._clock)
        return bucket.try_take()

    def claim_slot(self, key: str, limit: int) -> bool:
        if self.parts > 1:
            limit = max(1, math.ceil(limit / self.parts))
        count = self._slots.get(key, 0)
        if count >= limit:
            return False
        self._slots[key] = count + 1
        return True

    def release_slot(self, key: str) -> None:
        count = self._slots.get(key, 0) - 1
        if count > 0:
            self._slots[key] = count
        else:
            self._slots.pop(key, None)

    def slots_in_use(self, key: str) -> int:
        return self._slots.get(key, 0)

    def pause(self, key: str, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._paused.get(key, -math.inf):
            self._paused[key] = until

    def paused_for(self, key: str) -> float:
        until = self._paused.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._paused[key]
            return 0.0
        return left


class LimitExceeded(Exception):
    """No permit within the wait allowed, or the queue was full.

    `retry_after_s` is whole seconds, at least 1: the value for the Retry-After header.
    `reason` says what blocked (a `Blocked` value, named like the gateway's Reason).
    """

    def __init__(self, retry_after_s: float, reason: Blocked, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}, retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
        self.reason: Blocked = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    """One `[[destinations]]` entry's shaping keys. Without `burst`, a rate lets one
    second's worth through at once (at least 1)."""

    match: str
    rate: Rate | None = None
    burst: int | None = None
    per_egress_ip: bool = False
    concurrency: int | None = None
    queue_timeout_s: float = QUEUE_TIMEOUT_S
    max_waiters: int = MAX_WAITERS

    def __post_init__(self) -> None:
        where = f"destination '{self.match}'"
        if self.burst is not None:
            if self.rate is None:
                raise ValueError(f'{where}: burst needs a rate, e.g. rate = "20/s"')
            if self.burst < 1:
                raise ValueError(f"{where}: burst must be at least 1, not {self.burst}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(
                f"{where}: concurrency must be at least 1, not {self.concurrency} "
                "(leave it out for no cap)"
            )
        if not (math.isfinite(self.queue_timeout_s) and self.queue_timeout_s >= 0):
            raise ValueError(
                f"{where}: queue_timeout_s must be 0 or more seconds, not {self.queue_timeout_s}"
            )
        if self.max_waiters < 0:
            raise ValueError(f"{where}: max_waiters must be 0 or more, not {self.max_waiters}")

    @property
    def bucket_size(self) -> int:
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate.per_s)) if self.rate is not None else 0


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake: asyncio.Future[None] | None = None


class Permit:
    """Leave to send one request or hold one tunnel. `release()` frees the concurrency
    slot; it may be called any number of times, and `async with` calls it."""

    __slots__ = ("_key", "_limiter", "_released", "_slot", "_started")

    def __init__(self, limiter: Limiter, key: str, slot: bool) -> None:
        self._limiter = limiter
        self._key = key
        self._slot = slot  # a reload may add or drop the cap while this is held
        self._started = time.monotonic()
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            if self._slot:
                self._limiter._release(self._key, time.monotonic() - self._started)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Limiter:
    """The shaping of one destination. `key` arguments name the egress IP; they are
    ignored unless the destination counts `per_egress_ip`."""

    def __init__(self, policy: DestinationLimits, store: LimitStore | None = None) -> None:
        self.match = policy.match
        self._store: LimitStore = store if store is not None else LocalLimitStore()
        self._remote: RemoteLimitStore | None = (
            cast(RemoteLimitStore, store) if hasattr(store, "attempt") else None
        )
        self._queues: dict[str, deque[_Waiter]] = {}
        self._blocked: dict[str, Blocked] = {}
        self._hold_s: float | None = None
        self.policy = policy
        self._rate_per_s = policy.rate.per_s if policy.rate is not None else 0.0
        self._burst = float(policy.bucket_size)

    def reconfigure(self, policy: DestinationLimits) -> None:
        """Apply a reloaded policy for the same `match`, keeping waiters, held permits
        and what was learnt; waiters re-check at once (a cap may have been raised)."""
        if policy.match != self.match:
            raise ValueError(f"cannot turn the limiter for '{self.match}' into '{policy.match}'")
        self.policy = policy
        self._rate_per_s = policy.rate.per_s if policy.rate is not None else 0.0
        self._burst = float(policy.bucket_size)
        for skey in list(self._queues):
            self._wake_head(skey)

    def store_key(self, key: str) -> str:
        """The key this limiter's state has in the store."""
        return f"{self.match}@{key}" if self.policy.per_egress_ip else self.match

    def try_acquire(self, key: str = "") -> Permit | None:
        """A permit now, without waiting, or None (then `await acquire(key)`).

        Never jumps the queue: while anyone waits for `key`, this returns None.
        """
        skey = self.store_key(key)
        if skey in self._queues:
            return None
        remote = self._remote
        if remote is not None and remote.remote:
            concurrency = self.policy.concurrency
            if remote.try_reserved(skey, self._rate_per_s, self._burst, concurrency):
                return Permit(self, skey, slot=concurrency is not None)
            return None
        outcome = self._attempt(skey)
        return outcome if isinstance(outcome, Permit) else None

    async def acquire(self, key: str = "") -> Permit:
        """A permit, waiting in FIFO order for at most `queue_timeout_s`.

        Raises LimitExceeded on timeout or when `max_waiters` already wait. Cancelling
        the wait takes nothing: no token or slot is held while waiting.
        """
        loop = asyncio.get_running_loop()
        skey = self.store_key(key)
        delay = math.inf
        queue = self._queues.get(skey)
        if queue is None:  # empty queues are dropped, so nobody waits
            if self._remote is not None and self._remote.remote:
                outcome = await self._attempt_remote(skey)
                queue = self._queues.get(skey)  # others may have queued meanwhile
            else:
                outcome = self._attempt(skey)
            if isinstance(outcome, Permit):
                return outcome
            delay = outcome
            if queue is None:
                queue = deque()
        if len(queue) >= self.policy.max_waiters:
            raise self._exceeded(skey, len(queue), f"{len(queue)} already waiting, queue full")
        if self.policy.queue_timeout_s <= 0:
            raise self._exceeded(skey, len(queue), "queue_timeout_s is 0")
        self._queues[skey] = queue
        deadline = loop.time() + self.policy.queue_timeout_s
        waiter = _Waiter()
        queue.append(waiter)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise self._exceeded(
                        skey,
                        queue.index(waiter),
                        f"waited {self.policy.queue_timeout_s:g} s",
                    )
                await self._sleep(loop, waiter, min(delay, left))
                delay = math.inf
                if queue[0] is waiter:
                    if self._remote is not None and self._remote.remote:
                        outcome = await self._attempt_remote(skey)
                    else:
                        outcome = self._attempt(skey)
                    if isinstance(outcome, Permit):
                        return outcome
                    delay = outcome
        finally:
            was_head = queue[0] is waiter
            queue.remove(waiter)
            if was_head:
                self._wake_head(skey)
            if not queue:
                del self._queues[skey]

    def pause(self, key: str, seconds: float) -> None:
        """Hand out no permits for `key` for `seconds` (an upstream's Retry-After);
        capped at MAX_PAUSE_S. Waiters wait, or time out."""
        if seconds > 0:
            self._store.pause(self.store_key(key), min(seconds, MAX_PAUSE_S))

    def in_use(self, key: str = "") -> int:
        """Permits held now for `key` (by this process, or the fleet with a shared store)."""
        return self._store.slots_in_use(self.store_key(key))

    def waiting(self, key: str = "") -> int:
        """Callers of this process queued for `key`."""
        return len(self._queues.get(self.store_key(key), ()))

    def _attempt(self, skey: str) -> Permit | float:
        """A permit, or the seconds after which trying again may succeed."""
        store, concurrency = self._store, self.policy.concurrency
        paused = store.paused_for(skey)
        if paused > 0:
            self._blocked[skey] = "destination_paused"
            return paused
        if concurrency is not None and not store.claim_slot(skey, concurrency):
            self._blocked[skey] = "concurrency_limited"
            return SHARED_RECHECK_S if store.shared else math.inf
        if self._rate_per_s:
            wait = store.take_token(skey, self._rate_per_s, self._burst)
            if wait > 0:
                if concurrency is not None:
                    store.release_slot(skey)
                self._blocked[skey] = "rate_limited"
                return wait
        return Permit(self, skey, slot=concurrency is not None)

    async def _attempt_remote(self, skey: str) -> Permit | float:
        """`_attempt` through a remote store; falls back to it when the store is not asked."""
        assert self._remote is not None
        concurrency = self.policy.concurrency
        if self._remote.try_reserved(skey, self._rate_per_s, self._burst, concurrency):
            return Permit(self, skey, slot=concurrency is not None)
        result = await self._remote.attempt(skey, self._rate_per_s, self._burst, concurrency)
        if result is None:
            return self._attempt(skey)
        wait, blocked = result
        if wait <= 0:
            return Permit(self, skey, slot=concurrency is not None)
        self._blocked[skey] = blocked or "rate_limited"
        return wait

    def _release(self, skey: str, held_s: float) -> None:
        self._store.release_slot(skey)
        if self._hold_s is None:
            self._hold_s = held_s
        else:
            self._hold_s += HOLD_EWMA_WEIGHT * (held_s - self._hold_s)
        self._wake_head(skey)

    def _wake_head(self, skey: str) -> None:
        queue = self._queues.get(skey)
        if queue:
            wake = queue[0].wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    @staticmethod
    async def _sleep(loop: asyncio.AbstractEventLoop, waiter: _Waiter, seconds: float) -> None:
        wake = waiter.wake = loop.create_future()
        timer = loop.call_later(seconds, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            waiter.wake = None

    def _exceeded(self, skey: str, ahead: int, detail: str) -> LimitExceeded:
        """Refusal for a caller with `ahead` waiters before it, with an honest estimate
        of when it would have been served."""
        reason = self._blocked.get(skey, "concurrency_limited")
        behind_rate = (ahead + 1) / self._rate_per_s if self._rate_per_s else 0.0
        behind_slots = 0.0
        concurrency = self.policy.concurrency
        if concurrency is not None:
            to_free = self._store.slots_in_use(skey) + ahead + 1 - concurrency
            if to_free > 0:
                hold_s = DEFAULT_HOLD_S if self._hold_s is None else self._hold_s
                behind_slots = hold_s * math.ceil(to_free / concurrency)
        estimate = self._store.paused_for(skey) + max(behind_rate, behind_slots)
        retry = max(1, min(MAX_RETRY_AFTER_S, math.ceil(estimate)))
        return LimitExceeded(float(retry), reason, f"{self.match}: {detail}")


def _resolve(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)


class Limits:
    """Every destination's Limiter; `for_host` picks the first whose `match` covers a
    host: an exact name or `*.glob` (any depth, never the apex), as in allow rules, or
    `*` for any host.

    On reload pass `previous`: its store is kept (buckets, slots, pauses), and a
    destination whose `match` stays keeps its Limiter, so permits still held and callers
    still waiting carry over to the new policy.
    """

    def __init__(
        self,
        policies: Sequence[DestinationLimits],
        store: LimitStore | None = None,
        previous: Limits | None = None,
    ) -> None:
        rules: list[Rule] = []
        for policy in policies:
            rule = _parse_match(policy.match)
            if any(rule.host == seen.host for seen in rules):
                raise ValueError(
                    f"destination '{policy.match}' is listed twice: the first match wins, "
                    "so merge the two entries"
                )
            rules.append(rule)
        if store is None:
            store = previous.store if previous is not None else LocalLimitStore()
        self.store: LimitStore = store
        kept = {limiter.match: limiter for limiter in previous.limiters} if previous else {}
        self._entries: list[tuple[Rule, Limiter]] = []
        for rule, policy in zip(rules, policies, strict=True):
            limiter = kept.get(policy.match)
            if limiter is None or limiter._store is not store:
                limiter = Limiter(policy, store)
            else:
                limiter.reconfigure(policy)
            self._entries.append((rule, limiter))
        self._cache: dict[str, Limiter | None] = {}

    @property
    def limiters(self) -> list[Limiter]:
        return [limiter for _, limiter in self._entries]

    def for_host(self, host: str) -> Limiter | None:
        """The Limiter for a destination host as the client spelled it, or None."""
        host = normalise_host(host)
        try:
            return self._cache[host]
        except KeyError:
            pass
        found = next(
            (limiter for rule, limiter in self._entries if rule.matches_name(host, 1)), None
        )
        return remember(self._cache, host, found, MAX_HOST_CACHE)


def _parse_match(text: str) -> Rule:
    spelled = text.strip()
    hint = "write a host name or *.glob without a port, e.g. api.vendor.example or *.vendor.example"
    if not spelled or ":" in spelled or "/" in spelled:
        raise ValueError(f"match '{text}' is not a host name: {hint}")
    try:
        rule = parse_rule(f"{spelled}:*")
    except ValueError as error:
        raise ValueError(str(error).replace(f"'{spelled}:*'", f"match '{spelled}'")) from None
    if rule.host is None:
        raise ValueError(f"match '{text}' is an address: destinations match names; {hint}")
    return rule
