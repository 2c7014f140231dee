"""Two gateway processes with different egress IPs in one fleet, on a real Redis."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.fleet.gateways import VENDOR, Member, member_config
from tests.fleet.servers import RedisServer, free_port
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, DNSServer, VendorServer

BURST_S = 2.0
MAX_REQUESTS = 300  # per member: the load loop is bounded in count and time


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `check` until true; returns the seconds it took (a bound, not a target)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def pair(
    tmp_path: Path,
    start: Callable[[dict[str, Any]], Member],
    redis: RedisServer,
    dns: DNSServer,
    destination: dict[str, Any],
    **fleet: Any,
) -> tuple[Member, Member]:
    a = start(
        member_config(tmp_path, "gw-a", ALLOWED_EGRESS, redis.url, dns.port, destination, **fleet)
    )
    b = start(
        member_config(tmp_path, "gw-b", OTHER_EGRESS, redis.url, dns.port, destination, **fleet)
    )
    wait_until(lambda: a.fleet()["members"] == 2 and b.fleet()["members"] == 2, 10, "both joined")
    return a, b


def hammer(member: Member, url: str, until: float, statuses: list[int]) -> None:
    with requests.Session() as session:
        session.proxies = {"http": member.proxy}
        for _ in range(MAX_REQUESTS):
            if time.monotonic() >= until:
                return
            statuses.append(session.get(url, timeout=5).status_code)


def burst_through_both(
    tmp_path: Path,
    fleet_members: Any,
    redis: RedisServer,
    dns: DNSServer,
    vendor: VendorServer,
    rate: int,
    burst: int,
) -> tuple[Member, Member, list[int]]:
    """Both members hammer the vendor for BURST_S; asserts the fleet-wide bound."""
    a, b = pair(
        tmp_path,
        fleet_members,
        redis,
        dns,
        {"rate": f"{rate}/s", "burst": burst, "queue_timeout_s": 0},
    )
    url = f"http://{VENDOR}:{vendor.port}/"
    statuses: list[int] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=hammer, args=(m, url, started + BURST_S, statuses)) for m in (a, b)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    reached = len(vendor.seen)
    assert reached == statuses.count(200)
    assert reached <= rate * elapsed + burst  # one bucket for the fleet, not one per member
    assert {peer for peer, *_ in vendor.seen} == {ALLOWED_EGRESS, OTHER_EGRESS}
    assert 429 in statuses
    return a, b, statuses


def test_a_burst_through_two_members_stays_within_the_fleet_wide_rate(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    """A small limit: every permit is decided in Redis."""
    a, b, _ = burst_through_both(
        tmp_path, fleet_members, redis_server, dns, both_vendor, rate=5, burst=5
    )
    assert a.fleet()["reserved_permits"] == b.fleet()["reserved_permits"] == 0


def test_members_deciding_permits_from_their_reserves_stay_within_the_fleet_wide_rate(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    """A limit high enough for reserves (48 // (4 x 3) = 4 tokens a member): permits are
    decided without Redis, and the vendor still sees at most rate x t + burst."""
    a, b, _ = burst_through_both(
        tmp_path, fleet_members, redis_server, dns, both_vendor, rate=20, burst=48
    )
    assert a.fleet()["reserved_permits"] + b.fleet()["reserved_permits"] > 0


def test_the_slots_of_a_killed_member_come_back_within_the_lease(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    a, b = pair(
        tmp_path,
        fleet_members,
        redis_server,
        dns,
        {"concurrency": 1, "queue_timeout_s": 0},
        lease_s=2.0,
    )

    def hold_the_slot() -> None:
        with contextlib.suppress(requests.RequestException):  # a is killed under it
            requests.get(
                f"http://{VENDOR}:{both_vendor.port}/slow?s=8",
                proxies={"http": a.proxy},
                timeout=10,
            )

    slow = threading.Thread(target=hold_the_slot, daemon=True)
    slow.start()
    wait_until(lambda: len(both_vendor.seen) == 1, 5, "the slow request reached the vendor")
    url = f"http://{VENDOR}:{both_vendor.port}/"
    assert requests.get(url, proxies={"http": b.proxy}, timeout=5).status_code == 429
    a.kill()
    wait_until(
        lambda: requests.get(url, proxies={"http": b.proxy}, timeout=5).status_code == 200,
        10,
        "the dead member's slot came back",
    )


def test_traffic_continues_while_redis_is_down_and_the_member_rejoins(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    a, b = pair(tmp_path, fleet_members, redis_server, dns, {"rate": "1000/s", "burst": 100})
    url = f"http://{VENDOR}:{both_vendor.port}/"
    redis_server.stop()
    for member in (a, b):
        assert requests.get(url, proxies={"http": member.proxy}, timeout=5).status_code == 200
    wait_until(lambda: a.fleet()["degraded"], 5, "member a noticed Redis is gone")
    status, ready = a.admin("/readyz")
    assert status == 200 and "fleet degraded" in ready and "limits divided by 2" in ready
    assert "fixedip_fleet_degraded 1.0" in a.admin("/metrics")[1]
    a.process.wait_for_line("serving from local state")
    assert requests.get(url, proxies={"http": a.proxy}, timeout=5).status_code == 200

    redis_server.start()
    wait_until(lambda: not a.fleet()["degraded"] and not b.fleet()["degraded"], 10, "re-join")
    wait_until(lambda: a.fleet()["members"] == 2, 5, "membership re-synced")
    assert a.admin("/readyz") == (200, "ready\n")
    assert "fixedip_fleet_degraded 0.0" in a.admin("/metrics")[1]
    a.process.wait_for_line("re-joined Redis")
    assert requests.get(url, proxies={"http": b.proxy}, timeout=5).status_code == 200


def test_egress_and_metrics_list_every_member(
    tmp_path: Path, fleet_members: Any, redis_server: RedisServer, dns: DNSServer
) -> None:
    a, _ = pair(tmp_path, fleet_members, redis_server, dns, {})
    seen = a.fleet()["members_seen"]
    assert [m["member"] for m in seen] == ["gw-a", "gw-b"]
    assert [m["egress"][0]["public"] for m in seen] == [ALLOWED_EGRESS, OTHER_EGRESS]
    metrics = a.admin("/metrics")[1]
    assert 'fixedip_fleet_member_up{member="gw-b"} 1.0' in metrics
    assert "fixedip_fleet_members 2.0" in metrics


def test_workers_of_one_gateway_share_a_limit_through_the_fleet_store(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    rate, burst = 5, 5
    config = member_config(
        tmp_path,
        "gw-a",
        ALLOWED_EGRESS,
        redis_server.url,
        dns.port,
        {"rate": f"{rate}/s", "burst": burst, "queue_timeout_s": 0},
    )
    config["server"] = {"workers": 2}
    config["listen"] = {"http": f"127.0.0.1:{free_port()}", "socks": "", "admin": ""}
    member = fleet_members(config)
    member.process.addresses["http"] = ("127.0.0.1", int(config["listen"]["http"].split(":")[1]))
    url = f"http://{VENDOR}:{both_vendor.port}/"
    statuses: list[int] = []
    started = time.monotonic()
    threads = [
        threading.Thread(target=hammer, args=(member, url, started + BURST_S, statuses))
        for _ in range(4)  # several connections, spread over both workers by the kernel
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert 0 < len(both_vendor.seen) <= rate * elapsed + burst  # not multiplied by 2
    members = redis_server.cli("HKEYS", "fixedip:members")
    assert "gw-a.w0" in members and "gw-a.w1" in members  # each worker is a member


def test_a_block_seen_by_one_member_is_known_to_the_other(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    both_vendor: VendorServer,
) -> None:
    a, b = pair(tmp_path, fleet_members, redis_server, dns, {})
    blocked = f"http://{VENDOR}:{both_vendor.port}/status?code=403"
    for _ in range(3):  # the default rule: 3 within 60 s
        requests.get(blocked, proxies={"http": a.proxy}, timeout=5)

    def b_knows() -> bool:
        return any(
            q["egress"] == ALLOWED_EGRESS and q["host"] == VENDOR for q in b.fleet()["quarantines"]
        )

    wait_until(b_knows, 5, "member b learnt member a's quarantine")
