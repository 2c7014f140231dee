"""The Redis-backed stores against a real redis-server: the same behaviour as the local
state, shared between members, and local state (limits divided) while Redis is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fixedip.config import parse
from fixedip.fleet.limits import RESERVE_CHECK_S, FleetLimitStore
from fixedip.fleet.link import Link
from fixedip.fleet.resp import Redis
from fixedip.fleet.store import CanaryLock, FleetHealthStore
from fixedip.identity.health import Health, Quarantine
from fixedip.identity.limits import DestinationLimits, Limiter, LimitExceeded, parse_rate
from tests.fleet.servers import RedisServer


def link_for(server: RedisServer, member: str, **fleet: Any) -> Link:
    keys = {"redis": server.url, "member": member, "lease_s": 1.0, **fleet}
    body = "\n".join(
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in keys.items()
    )
    config = parse(f'[egress]\nips = ["127.0.0.10"]\n[fleet]\n{body}\n', "fleet.toml")
    assert config.fleet is not None
    return Link(config.fleet, member)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def joined(*links: Link) -> None:
    for link in links:
        assert await link.try_join()


def test_commands_round_trip_in_order_on_one_connection(redis_server: RedisServer) -> None:
    async def main() -> list[Any]:
        redis = Redis("127.0.0.1", redis_server.port)
        await redis.connect(1.0)
        futures = [redis.send("INCR", "n") for _ in range(100)]
        replies = await asyncio.gather(*futures)
        redis.close()
        return replies

    assert run(main()) == list(range(1, 101))


def test_auth_is_sent_when_the_url_has_a_password(tmp_path: Any) -> None:
    directory = tmp_path / "r"
    directory.mkdir()
    server = RedisServer(directory, password="s3cret-pw").start()
    try:

        async def main() -> Any:
            link = link_for(server, "gw-a")
            assert await link.try_join(), link.degraded_reason
            return await link.call("PING")

        assert run(main()) == b"PONG"
    finally:
        server.stop()


def test_a_wrong_password_leaves_the_member_degraded_with_the_reason(tmp_path: Any) -> None:
    directory = tmp_path / "r"
    directory.mkdir()
    server = RedisServer(directory, password="right").start()
    try:
        wrong = RedisServer(directory, password="wrong")
        wrong.port = server.port

        async def main() -> Link:
            link = link_for(wrong, "gw-a")
            assert not await link.try_join()
            return link

        link = run(main())
        assert link.degraded and "WRONGPASS" in link.degraded_reason
    finally:
        server.stop()


def test_a_token_bucket_is_shared_by_two_members(redis_server: RedisServer) -> None:
    """20/s with burst 5, asked by two members for 1 s: at most 5 + 20 granted in all."""

    async def main() -> int:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        stores = [FleetLimitStore(a), FleetLimitStore(b)]
        granted = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for store in stores:
                result = await store.attempt("api.vendor.test", 20.0, 5.0, None)
                assert result is not None
                granted += result[0] == 0.0
            await asyncio.sleep(0.005)
        return granted

    granted = run(main())
    assert 5 <= granted <= 5 + 20 + 1  # one token may fall due at the very end


def test_a_refused_token_says_how_long_until_the_next(redis_server: RedisServer) -> None:
    async def main() -> Any:
        link = link_for(redis_server, "a")
        await joined(link)
        store = FleetLimitStore(link)
        assert await store.attempt("v", 2.0, 1.0, None) == (0.0, None)
        return await store.attempt("v", 2.0, 1.0, None)

    wait, why = run(main())
    assert why == "rate_limited" and 0.3 < wait <= 0.5


def test_concurrency_slots_are_counted_across_members_and_released(
    redis_server: RedisServer,
) -> None:
    async def main() -> list[Any]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        sa, sb = FleetLimitStore(a), FleetLimitStore(b)
        out = [await sa.attempt("v", 0.0, 0.0, 2), await sb.attempt("v", 0.0, 0.0, 2)]
        out.append(await sb.attempt("v", 0.0, 0.0, 2))
        sa.release_slot("v")
        await a.call("PING")  # the release is sent without waiting; let it land
        out.append(await sb.attempt("v", 0.0, 0.0, 2))
        return out

    first, second, third, fourth = run(main())
    assert first == second == (0.0, None)
    assert third is not None and third[1] == "concurrency_limited"
    assert fourth == (0.0, None)


def test_the_slots_of_a_member_that_stops_renewing_come_back_after_the_lease(
    redis_server: RedisServer,
) -> None:
    async def main() -> tuple[Any, Any, Any]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        dead, alive = FleetLimitStore(a), FleetLimitStore(b)
        taken = await dead.attempt("v", 0.0, 0.0, 1)
        refused = await alive.attempt("v", 0.0, 0.0, 1)
        await asyncio.sleep(1.2)  # lease_s = 1 and `dead` never renews
        return taken, refused, await alive.attempt("v", 0.0, 0.0, 1)

    taken, refused, later = run(main())
    assert taken == (0.0, None)
    assert refused is not None and refused[1] == "concurrency_limited"
    assert later == (0.0, None)


def test_renewed_leases_outlive_the_lease_time(redis_server: RedisServer) -> None:
    async def main() -> Any:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        holder, other = FleetLimitStore(a), FleetLimitStore(b)
        await holder.attempt("v", 0.0, 0.0, 1)
        for _ in range(6):
            await asyncio.sleep(0.3)
            holder.renew()
        return await other.attempt("v", 0.0, 0.0, 1)

    refused = run(main())
    assert refused is not None and refused[1] == "concurrency_limited"


def test_a_pause_set_by_one_member_holds_for_the_other(redis_server: RedisServer) -> None:
    async def main() -> Any:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        FleetLimitStore(a).pause("v", 5.0)
        await a.call("PING")
        return await FleetLimitStore(b).attempt("v", 100.0, 10.0, None)

    wait, why = run(main())
    assert why == "destination_paused" and 4.0 < wait <= 5.0


def test_a_limiter_on_the_fleet_store_queues_and_refuses_like_a_local_one(
    redis_server: RedisServer,
) -> None:
    async def main() -> tuple[int, str]:
        link = link_for(redis_server, "a")
        await joined(link)
        policy = DestinationLimits("v", rate=parse_rate("10/s"), burst=1, queue_timeout_s=0.05)
        limiter = Limiter(policy, FleetLimitStore(link))
        assert limiter.try_acquire() is None  # remote: always through acquire()
        granted = 0
        for _ in range(5):
            try:
                (await limiter.acquire()).release()
                granted += 1
            except LimitExceeded as exc:
                return granted, exc.reason
        return granted, ""

    granted, reason = run(main())
    assert granted == 1 and reason == "rate_limited"  # the next token is 100 ms away


def test_without_redis_limits_are_divided_by_the_last_known_member_count(
    redis_server: RedisServer,
) -> None:
    async def main() -> tuple[bool, int, int]:
        link = link_for(redis_server, "a")
        await joined(link)
        link.members = 2
        store = FleetLimitStore(link)
        redis_server.stop()
        assert await store.attempt("v", 0.0, 0.0, 4) is None  # lost: the caller goes local
        policy = DestinationLimits("v", concurrency=4, queue_timeout_s=0)
        limiter = Limiter(policy, store)
        permits = []
        while (permit := limiter.try_acquire()) is not None:
            permits.append(permit)
        return link.degraded, len(permits), store.slots_in_use("v")

    degraded, granted, in_use = run(main())
    assert degraded and granted == 2 and in_use == 2


def test_slots_taken_while_degraded_become_leases_on_rejoin(redis_server: RedisServer) -> None:
    async def main() -> Any:
        link = link_for(redis_server, "a", lease_s=30.0)
        await joined(link)
        store = FleetLimitStore(link)
        redis_server.stop()
        await store.attempt("v", 0.0, 0.0, 1)
        assert link.degraded and store.claim_slot("v", 1)
        redis_server.start()
        assert await link.try_join()
        other = link_for(redis_server, "b")
        await joined(other)
        return await FleetLimitStore(other).attempt("v", 0.0, 0.0, 1)

    refused = run(main())
    assert refused is not None and refused[1] == "concurrency_limited"


def test_a_quarantine_seen_by_one_member_is_known_to_the_other(redis_server: RedisServer) -> None:
    async def main() -> tuple[frozenset[str], frozenset[str]]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        store_a, store_b = FleetHealthStore(a), FleetHealthStore(b)
        health_a, health_b = Health(store=store_a), Health(store=store_b)
        for _ in range(3):
            health_a.observe("127.0.0.10", "api.vendor.test", 403)
        await store_b.pull()
        seen = health_b.excluded("api.vendor.test")
        store_a.remove("127.0.0.10", "api.vendor.test")
        await store_b.pull()
        return seen, health_b.excluded("api.vendor.test")

    seen, after = run(main())
    assert seen == {"127.0.0.10"} and after == frozenset()


def test_quarantines_learnt_while_degraded_are_written_back_on_rejoin(
    redis_server: RedisServer,
) -> None:
    async def main() -> frozenset[str]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a)
        store_a = FleetHealthStore(a)
        redis_server.stop()
        a.degrade("test: Redis stopped")
        store_a.put(Quarantine("127.0.0.11", "v.test", 1, "status 403", 0.0, time.monotonic() + 60))
        redis_server.start()
        assert await a.try_join()
        await joined(b)
        store_b = FleetHealthStore(b)
        await store_b.pull()
        return Health(store=store_b).excluded("v.test")

    assert run(main()) == {"127.0.0.11"}


def test_a_canary_runs_once_for_the_fleet_and_both_get_its_result(
    redis_server: RedisServer,
) -> None:
    runs: list[str] = []

    def runner(name: str) -> Callable[[], Awaitable[int]]:
        async def run_canary() -> int:
            runs.append(name)
            await asyncio.sleep(0.3)
            return 403

        return run_canary

    async def main() -> list[Any]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        return list(
            await asyncio.gather(
                CanaryLock(a).run_once("127.0.0.10", "v.test", 2.0, runner("a")),
                CanaryLock(b).run_once("127.0.0.10", "v.test", 2.0, runner("b")),
            )
        )

    assert run(main()) == [403, 403]
    assert len(runs) == 1


def test_nothing_waits_on_a_redis_that_does_not_answer(redis_server: RedisServer) -> None:
    """A stopped (SIGSTOP) Redis: calls give up after timeout_ms, then the member degrades."""
    import os
    import signal

    async def main() -> tuple[float, bool]:
        link = link_for(redis_server, "a", timeout_ms=30)
        await joined(link)
        store = FleetLimitStore(link)
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            for _ in range(3):
                assert await store.attempt("v", 10.0, 1.0, None) is None
            return time.monotonic() - started, link.degraded
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)

    spent, degraded = run(main())
    assert degraded
    assert spent < 5.0  # three timeouts of 30 ms, not a hang (bounded, not a benchmark)


def test_reserves_for_high_limits_never_let_the_fleet_exceed_them(
    redis_server: RedisServer,
) -> None:
    """100/s with burst 40 for two members. The worst case for reserves: both fill
    theirs, wait until the shared bucket is full again, then spend everything at once.
    What they get in the window is still at most 100 x t + 40: the bucket they share
    holds 40 less every reserve (module docstring of fixedip.fleet.limits)."""
    rate, burst = 100.0, 40.0

    async def main() -> tuple[int, int, float]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        a.members = b.members = 2
        stores = [FleetLimitStore(a), FleetLimitStore(b)]
        for store in stores:  # fill both reserves, then let the bucket fill again
            assert await store.attempt("v", rate, burst, None) == (0.0, None)
        await asyncio.sleep(2 * burst / rate)
        granted = reserved = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            for store in stores:
                if store.try_reserved("v", rate, burst, None):
                    granted += 1
                    reserved += 1
                    continue
                result = await store.attempt("v", rate, burst, None)
                assert result is not None
                granted += result[0] == 0.0
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - started
        return granted, reserved, elapsed

    granted, reserved, elapsed = run(main())
    assert reserved >= 2 * 3  # both reserves (40 // (4 x 3) = 3 each) were spent
    assert granted <= rate * elapsed + burst


def test_a_reserve_decides_most_permits_and_refills_before_it_runs_out(
    redis_server: RedisServer,
) -> None:
    """A high limit (the benchmark's): after the first call, permits come from the
    reserve and a refill in the background keeps it from running dry."""

    async def main() -> tuple[int, int, int]:
        link = link_for(redis_server, "a")
        await joined(link)
        store = FleetLimitStore(link)
        assert await store.attempt("v", 1e6, 1e5, 10_000) == (0.0, None)
        store.release_slot("v")
        local = misses = 0
        for _ in range(2000):
            if store.try_reserved("v", 1e6, 1e5, 10_000):
                local += 1
                store.release_slot("v")
            else:
                misses += 1
                assert await store.attempt("v", 1e6, 1e5, 10_000) == (0.0, None)
                store.release_slot("v")
            if local % 50 == 0:
                await asyncio.sleep(0.002)  # lets a refill's answer in, as a busy loop would
        await link.call("PING")
        return local, misses, store.round_trips

    local, misses, round_trips = run(main())
    assert local + misses == 2000
    assert misses == 0  # the reserve never ran dry
    assert round_trips <= 2000 // 50  # a refill per half reserve (128), not per permit


def test_a_pause_set_by_another_member_stops_a_reserve_within_its_check_period(
    redis_server: RedisServer,
) -> None:
    """A member with a reserve hears of another member's pause (an upstream Retry-After)
    at its next check of Redis, at most RESERVE_CHECK_S after the last one."""

    async def main() -> tuple[bool, bool, Any]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        mine, theirs = FleetLimitStore(a), FleetLimitStore(b)
        assert await mine.attempt("v", 1000.0, 1000.0, None) == (0.0, None)  # a reserve
        theirs.pause("v", 30.0)
        await b.call("PING")  # the pause is in Redis
        right_after = mine.try_reserved("v", 1000.0, 1000.0, None)  # not heard of yet
        deadline = time.monotonic() + RESERVE_CHECK_S + 2.0
        stopped = False
        while time.monotonic() < deadline and not stopped:
            stopped = not mine.try_reserved("v", 1000.0, 1000.0, None)
            await asyncio.sleep(0.05)  # 20 permits a second: the reserve lasts longer
        return right_after, stopped, await mine.attempt("v", 1000.0, 1000.0, None)

    right_after, stopped, attempt = run(main())
    assert right_after
    assert stopped
    assert attempt is not None and attempt[1] == "destination_paused"


def test_spare_slots_count_against_the_cap_and_go_back_when_idle(
    redis_server: RedisServer,
) -> None:
    async def main() -> tuple[int, Any, Any]:
        a, b = link_for(redis_server, "a"), link_for(redis_server, "b")
        await joined(a, b)
        a.members = b.members = 2
        mine, theirs = FleetLimitStore(a), FleetLimitStore(b)
        assert await mine.attempt("v", 0.0, 0.0, 24) == (0.0, None)  # 1 used + 2 spare
        taken = 0
        while (await theirs.attempt("v", 0.0, 0.0, 24)) == (0.0, None):
            taken += 1
            assert taken <= 24
        refused = await theirs.attempt("v", 0.0, 0.0, 24)
        await asyncio.sleep(1.1)
        mine.renew()  # unused for longer than SPARE_IDLE_S: the spares go back
        await a.call("PING")
        return taken, refused, await theirs.attempt("v", 0.0, 0.0, 24)

    taken, refused, later = run(main())
    # never more than the cap, counting both members' spares (24 // (4 x 3) = 2 each)
    assert taken <= 24 - 3 - 2
    assert refused is not None and refused[1] == "concurrency_limited"
    assert later == (0.0, None)


def test_rediss_connects_over_tls_verified_against_ca_file(tmp_path: Any) -> None:
    import subprocess

    import trustme

    from tests.fleet.servers import REDIS_SERVER, _wait_port, free_port

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "cert.pem"), "--tls-key-file", str(tmp_path / "key.pem"),
         "--tls-ca-cert-file", str(tmp_path / "ca.pem"), "--tls-auth-clients", "no",
         "--dir", str(tmp_path), "--save", "", "--requirepass", "pw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, proc, "redis-server (TLS)")
        config = parse(
            f'[egress]\nips = ["127.0.0.10"]\n[fleet]\nredis = "rediss://:pw@127.0.0.1:{port}/0"\n'
            f'member = "a"\nca_file = "{tmp_path / "ca.pem"}"\n',
            "fleet.toml",
        )
        assert config.fleet is not None

        async def main() -> Any:
            assert config.fleet is not None
            link = Link(config.fleet, "a")
            assert await link.try_join(), link.degraded_reason
            return await link.call("PING")

        assert run(main()) == b"PONG"
    finally:
        proc.kill()
        proc.wait(5)
