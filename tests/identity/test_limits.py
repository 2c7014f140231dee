"""Per-destination rate and concurrency shaping, in memory: bucket math on a fake clock,
FIFO queueing, timeouts with honest Retry-After, pauses, cancellation, host matching."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from fixedip.identity.limits import (
    MAX_PAUSE_S,
    DestinationLimits,
    Limiter,
    LimitExceeded,
    Limits,
    LocalLimitStore,
    Permit,
    TokenBucket,
    parse_rate,
)

T = TypeVar("T")
IP_A, IP_B = "127.0.0.10", "127.0.0.11"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(LocalLimitStore):
    """Counts bucket look-ups, to tell timer-driven waiting from polling."""

    def __init__(self) -> None:
        super().__init__()
        self.takes = 0

    def take_token(self, key: str, rate_per_s: float, burst: float) -> float:
        self.takes += 1
        return super().take_token(key, rate_per_s, burst)


class SharedStore(LocalLimitStore):
    """Stands in for a fleet store: other processes change its slots."""

    shared = True


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def policy(
    match: str = "api.vendor.example", rate: str | None = None, **keys: Any
) -> DestinationLimits:
    return DestinationLimits(match, rate=parse_rate(rate) if rate else None, **keys)


def limiter(rate: str | None = None, store: LocalLimitStore | None = None, **keys: Any) -> Limiter:
    return Limiter(policy(rate=rate, **keys), store)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


# parse_rate


@pytest.mark.parametrize(
    ("text", "per_s"),
    [("20/s", 20.0), ("600/min", 10.0), ("1.5/s", 1.5), (" 0.5/min ", 0.5 / 60)],
)
def test_parse_rate_reads_per_second_and_per_minute(text: str, per_s: float) -> None:
    rate = parse_rate(text)
    assert rate.per_s == pytest.approx(per_s)
    assert str(rate) == text.strip()


@pytest.mark.parametrize(
    "text",
    ["", "20", "20/h", "20/sec", "/s", "-1/s", "1e3/s", "abc/s", "20 / s", "0/s", "0.0/min"],
)
def test_parse_rate_refuses_bad_input_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r'e\.g\. "20/s" or "600/min"'):
        parse_rate(text)


def test_parse_rate_refuses_a_bare_number_from_toml() -> None:
    with pytest.raises(ValueError, match=r'write it as a string, e\.g\. "20/s"'):
        parse_rate(20)  # type: ignore[arg-type]


# TokenBucket


def test_bucket_starts_full_and_lets_the_burst_through_at_once() -> None:
    bucket = TokenBucket(1.0, 3, clock=FakeClock())
    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(1.0)


def test_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, 1, clock=clock)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_take() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_take() == 0.0


def test_bucket_with_a_fractional_rate_spaces_tokens_exactly() -> None:
    clock = FakeClock()
    bucket = TokenBucket(parse_rate("1.5/s").per_s, 1, clock=clock)
    for _ in range(30):  # float steps of 2/3 s must never leave a sliver of a wait
        assert bucket.try_take() == 0.0
        clock.advance(1 / 1.5)


def test_bucket_idle_for_long_caps_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 5, clock=clock)
    for _ in range(5):
        bucket.try_take()
    clock.advance(3600)
    assert bucket.tokens == 5
    assert [bucket.try_take() for _ in range(5)] == [0.0] * 5
    assert bucket.try_take() == pytest.approx(0.1)


def test_bucket_never_takes_part_of_a_request() -> None:
    bucket = TokenBucket(1.0, 3, clock=FakeClock())
    assert bucket.try_take(2) == 0.0
    assert bucket.try_take(2) == pytest.approx(1.0)
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.try_take(1) == 0.0


def test_bucket_refuses_a_take_larger_than_its_burst() -> None:
    with pytest.raises(ValueError, match="cannot take 4 tokens"):
        TokenBucket(1.0, 3, clock=FakeClock()).try_take(4)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.nan, 1), (1.0, 0.5)])
def test_bucket_refuses_a_shape_that_can_never_give_a_token(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="a bucket"):
        TokenBucket(rate, burst)


# LocalLimitStore


def test_store_never_counts_more_slots_than_the_limit() -> None:
    store = LocalLimitStore()
    assert [store.claim_slot("k", 2) for _ in range(3)] == [True, True, False]
    store.release_slot("k")
    assert store.slots_in_use("k") == 1
    assert store.claim_slot("k", 2)


def test_store_pause_keeps_the_later_deadline_and_then_expires() -> None:
    clock = FakeClock()
    store = LocalLimitStore(clock)
    store.pause("k", 10)
    store.pause("k", 2)
    assert store.paused_for("k") == pytest.approx(10)
    clock.advance(10)
    assert store.paused_for("k") == 0.0


# DestinationLimits


@pytest.mark.parametrize(
    ("rate", "burst", "size"),
    [
        ("20/s", None, 20),
        ("600/min", None, 10),
        ("1/min", None, 1),
        ("1.5/s", None, 2),
        ("20/s", 40, 40),
    ],
)
def test_burst_defaults_to_one_second_of_the_rate(rate: str, burst: int | None, size: int) -> None:
    assert policy(rate=rate, burst=burst).bucket_size == size


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"burst": 10}, "burst needs a rate"),
        ({"rate": "1/s", "burst": 0}, "burst must be at least 1"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"queue_timeout_s": -1}, "queue_timeout_s must be 0 or more"),
        ({"queue_timeout_s": math.inf}, "queue_timeout_s must be 0 or more"),
        ({"max_waiters": -1}, "max_waiters must be 0 or more"),
    ],
)
def test_destination_limits_refuse_bad_values_naming_the_key(
    keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"destination 'api.vendor.example': {message}"):
        policy(**keys)


# Limiter: admitting


def test_limiter_without_rate_or_concurrency_admits_everyone() -> None:
    lim = limiter()
    assert all(lim.try_acquire() is not None for _ in range(100))


def test_try_acquire_gives_a_permit_until_the_cap_then_none() -> None:
    lim = limiter(concurrency=2)
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None
    assert lim.in_use() == 2


def test_a_release_hands_the_slot_to_the_waiter() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=1)
        held = await lim.acquire()
        task = asyncio.create_task(lim.acquire())
        await settle()
        assert lim.waiting() == 1 and not task.done()
        held.release()
        permit = await task
        assert lim.in_use() == 1 and lim.waiting() == 0
        permit.release()

    run(main())


def test_waiters_are_served_in_arrival_order() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=1)
        order: list[int] = []

        async def client(i: int) -> None:
            async with await lim.acquire():
                order.append(i)
                await asyncio.sleep(0)

        held = await lim.acquire()
        tasks = [asyncio.create_task(client(i)) for i in range(6)]
        await settle()
        held.release()
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert lim.in_use() == 0

    run(main())


def test_a_newcomer_does_not_jump_the_queue_when_a_slot_frees() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=1)
        held = await lim.acquire()
        waiter = asyncio.create_task(lim.acquire())
        await settle()
        held.release()
        assert lim.try_acquire() is None  # the slot is free, but it is the waiter's
        (await waiter).release()
        assert lim.try_acquire() is not None

    run(main())


def test_rate_limited_waiters_are_woken_by_timers_in_order_not_by_polling() -> None:
    async def main() -> None:
        store = CountingStore()
        lim = limiter("100/s", store, burst=1, queue_timeout_s=1)
        order: list[int] = []

        async def client(i: int) -> None:
            await lim.acquire()
            order.append(i)

        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(4)))
        assert order == [0, 1, 2, 3]
        assert time.monotonic() - started >= 0.025  # 3 tokens after the burst, 10 ms apart
        assert store.takes <= 12  # about two looks per waiter; polling would be hundreds

    run(main())


# Limiter: refusing


def test_waiting_longer_than_queue_timeout_for_a_slot_raises_with_retry_after() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=0.05)
        await lim.acquire()
        with pytest.raises(LimitExceeded) as refused:
            await lim.acquire()
        assert refused.value.reason == "concurrency_limited"
        assert refused.value.retry_after_s == 1.0
        assert "waited 0.05 s" in refused.value.detail
        assert lim.waiting() == 0 and lim.in_use() == 1

    run(main())


def test_retry_after_for_a_rate_limit_is_when_the_next_token_comes() -> None:
    async def main() -> None:
        lim = limiter("1/min", LocalLimitStore(FakeClock()), queue_timeout_s=0.05)
        await lim.acquire()
        with pytest.raises(LimitExceeded) as refused:
            await lim.acquire()
        assert refused.value.reason == "rate_limited"
        assert refused.value.retry_after_s == 60.0

    run(main())


def test_a_full_queue_refuses_at_once_counting_those_ahead() -> None:
    async def main() -> None:
        lim = limiter("1/min", LocalLimitStore(FakeClock()), queue_timeout_s=1, max_waiters=2)
        await lim.acquire()
        waiters = [asyncio.create_task(lim.acquire()) for _ in range(2)]
        await settle()
        with pytest.raises(LimitExceeded) as refused:
            await lim.acquire()
        assert "2 already waiting, queue full" in refused.value.detail
        assert refused.value.reason == "rate_limited"
        assert refused.value.retry_after_s == 180.0  # two tokens for those ahead, then ours
        assert lim.waiting() == 2  # refused without waiting its turn
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert lim.waiting() == 0

    run(main())


def test_zero_queue_timeout_refuses_without_queueing() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=0)
        await lim.acquire()
        with pytest.raises(LimitExceeded, match="queue_timeout_s is 0"):
            await lim.acquire()
        assert lim.waiting() == 0

    run(main())


# Limiter: per egress IP


def test_per_egress_ip_gives_each_ip_its_own_slots_and_bucket() -> None:
    lim = limiter("1/min", LocalLimitStore(FakeClock()), concurrency=5, per_egress_ip=True)
    assert lim.try_acquire(IP_A) is not None
    assert lim.try_acquire(IP_A) is None
    assert lim.try_acquire(IP_B) is not None
    assert (lim.in_use(IP_A), lim.in_use(IP_B)) == (1, 1)


def test_without_per_egress_ip_all_ips_share_one_pool() -> None:
    lim = limiter(concurrency=1)
    assert lim.try_acquire(IP_A) is not None
    assert lim.try_acquire(IP_B) is None


# Limiter: pause


def test_pause_holds_permits_back_until_it_has_passed() -> None:
    async def main() -> None:
        lim = limiter(queue_timeout_s=1)
        lim.pause(IP_A, 0.1)
        assert lim.try_acquire() is None
        started = time.monotonic()
        await lim.acquire()
        assert time.monotonic() - started >= 0.09

    run(main())


def test_pause_longer_than_the_queue_timeout_refuses_with_the_rest_of_the_pause() -> None:
    async def main() -> None:
        lim = limiter(store=LocalLimitStore(FakeClock()), queue_timeout_s=0.05)
        lim.pause(IP_A, 30)
        with pytest.raises(LimitExceeded) as refused:
            await lim.acquire()
        assert refused.value.reason == "destination_paused"
        assert refused.value.retry_after_s == 30.0

    run(main())


def test_pause_with_per_egress_ip_stops_only_that_ip() -> None:
    lim = limiter(per_egress_ip=True)
    lim.pause(IP_A, 30)
    assert lim.try_acquire(IP_A) is None
    assert lim.try_acquire(IP_B) is not None


def test_pause_ignores_nonsense_and_caps_what_it_honours() -> None:
    store = LocalLimitStore(FakeClock())
    lim = limiter(store=store)
    for seconds in (0, -5, math.nan):
        lim.pause("", seconds)
    assert lim.try_acquire() is not None
    lim.pause("", 10**9)
    assert store.paused_for(lim.store_key("")) == MAX_PAUSE_S


# Limiter: cancellation and release


@pytest.mark.parametrize("blocked_by", ["slot", "token"])
def test_a_cancelled_waiter_leaves_no_slot_and_no_token_taken(blocked_by: str) -> None:
    async def main() -> None:
        clock = FakeClock()
        concurrency = 1 if blocked_by == "slot" else 2
        lim = limiter(
            "1/s",
            LocalLimitStore(clock),
            burst=2 if blocked_by == "slot" else 1,
            concurrency=concurrency,
            queue_timeout_s=1,
        )
        held = await lim.acquire()
        task = asyncio.create_task(lim.acquire())
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (lim.waiting(), lim.in_use()) == (0, 1)
        held.release()
        assert lim.in_use() == 0
        if blocked_by == "token":
            clock.advance(1)
        assert lim.try_acquire() is not None  # exactly one token left, as before the wait
        assert lim.try_acquire() is None

    run(main())


def test_a_waiter_cancelled_right_after_its_wake_up_passes_the_turn_on() -> None:
    async def main() -> None:
        lim = limiter(concurrency=1, queue_timeout_s=1)
        held = await lim.acquire()
        first = asyncio.create_task(lim.acquire())
        second = asyncio.create_task(lim.acquire())
        await settle()
        held.release()  # wakes `first`, which is cancelled before it runs
        first.cancel()
        permit = await second
        assert first.cancelled()
        assert (lim.waiting(), lim.in_use()) == (0, 1)
        permit.release()
        assert lim.in_use() == 0

    run(main())


def test_release_is_idempotent() -> None:
    lim = limiter(concurrency=2)
    first, second = lim.try_acquire(), lim.try_acquire()
    assert first is not None and second is not None
    first.release()
    first.release()
    assert first.released and lim.in_use() == 1
    second.release()
    assert lim.in_use() == 0


def test_async_with_releases_the_permit_even_on_error() -> None:
    async def main() -> Permit:
        lim = limiter(concurrency=1)
        permit = await lim.acquire()
        with pytest.raises(RuntimeError):
            async with permit:
                raise RuntimeError("upstream broke")
        assert lim.in_use() == 0
        return permit

    assert run(main()).released


# Limiter: shared store and reload


def test_with_a_shared_store_a_waiter_notices_a_slot_freed_elsewhere() -> None:
    async def main() -> None:
        store = SharedStore()
        lim = limiter(store=store, concurrency=1, queue_timeout_s=1)
        assert store.claim_slot(lim.store_key(""), 1)  # another worker holds it
        task = asyncio.create_task(lim.acquire())
        await asyncio.sleep(0.02)
        store.release_slot(lim.store_key(""))  # wakes nobody here
        permit = await asyncio.wait_for(task, 0.3)
        assert not permit.released

    run(main())


def test_reload_keeps_waiters_and_a_raised_cap_admits_them_at_once() -> None:
    async def main() -> None:
        old = Limits([policy(concurrency=1, queue_timeout_s=1)])
        lim = old.for_host("api.vendor.example")
        assert lim is not None
        held = await lim.acquire()
        task = asyncio.create_task(lim.acquire())
        await settle()
        new = Limits([policy(concurrency=2, queue_timeout_s=1)], previous=old)
        assert new.for_host("api.vendor.example") is lim
        await asyncio.wait_for(task, 0.3)
        assert lim.in_use() == 2
        held.release()
        assert lim.in_use() == 1

    run(main())


def test_a_permit_held_across_a_reload_that_drops_the_cap_still_frees_its_slot() -> None:
    old = Limits([policy(concurrency=1)])
    lim = old.for_host("api.vendor.example")
    assert lim is not None
    held = lim.try_acquire()
    assert held is not None
    uncapped = Limits([policy()], previous=old)
    held.release()
    capped = Limits([policy(concurrency=1)], previous=uncapped)
    again = capped.for_host("api.vendor.example")
    assert again is not None and again.try_acquire() is not None


# Limits: matching


def test_for_host_takes_the_first_match_exact_glob_or_star() -> None:
    limits = Limits([policy("api.vendor.example"), policy("*.vendor.example"), policy("*")])
    exact, glob, star = limits.limiters
    assert limits.for_host("api.vendor.example") is exact
    assert limits.for_host("API.Vendor.Example.") is exact
    assert limits.for_host("a.b.vendor.example") is glob
    assert limits.for_host("vendor.example") is star  # a glob never covers its apex
    assert limits.for_host("[2001:db8::1]") is star


def test_an_earlier_glob_shadows_a_later_exact_name() -> None:
    limits = Limits([policy("*.vendor.example"), policy("api.vendor.example")])
    assert limits.for_host("api.vendor.example") is limits.limiters[0]


def test_for_host_is_none_when_no_destination_matches() -> None:
    limits = Limits([policy("*.vendor.example")])
    for host in ("vendor.example", "evilvendor.example", "other.example", "203.0.113.7"):
        assert limits.for_host(host) is None


def test_destinations_keep_separate_state_in_one_store() -> None:
    limits = Limits([policy("a.example", concurrency=1), policy("b.example", concurrency=1)])
    a, b = limits.for_host("a.example"), limits.for_host("b.example")
    assert a is not None and b is not None
    assert a.try_acquire() is not None
    assert b.try_acquire() is not None


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("api.vendor.example:443", "not a host name"),
        ("10.0.0.0/8", "not a host name"),
        ("", "not a host name"),
        ("203.0.113.7", "is an address"),
        ("a..example", "empty label"),
        ("api.*.example", "'\\*' may only stand alone as the first label"),
    ],
)
def test_limits_refuse_a_bad_match_with_a_sentence(match: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        Limits([DestinationLimits(match)])
    assert ":*" not in str(refused.value)


def test_limits_refuse_a_destination_listed_twice() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        Limits([policy("api.vendor.example"), policy("API.vendor.example")])
