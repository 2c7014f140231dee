"""Webhook receipts de-duplicated across the fleet: a vendor's retry to another member's
relay is acknowledged as a duplicate and delivered once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fixedip.fleet.receipts import FleetReceipts
from tests.fleet.gateways import member_config
from tests.fleet.servers import RedisServer, free_port
from tests.fleet.test_store import joined, link_for
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, DNSServer
from tests.ingress.stubs import TargetStub


@pytest.fixture
def target() -> Iterator[TargetStub]:
    stub = TargetStub().start()
    yield stub
    stub.stop()


def relay_member(
    tmp_path: Path, name: str, egress: str, redis: RedisServer, dns: DNSServer, target: TargetStub
) -> tuple[dict[str, Any], str]:
    config = member_config(tmp_path, name, egress, redis.url, dns.port)
    port = free_port()
    spool = tmp_path / name
    spool.mkdir()
    config["ingress"] = {
        "listen": f"127.0.0.1:{port}",
        "spool": str(spool / "spool.db"),
        "routes": [
            {"path": "/hooks/orders", "target": target.url("/ok"), "dedupe_header": "X-Delivery"}
        ],
    }
    return config, f"http://127.0.0.1:{port}/hooks/orders"


def test_a_retry_to_another_members_relay_is_a_duplicate_and_delivered_once(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    target: TargetStub,
) -> None:
    config_a, url_a = relay_member(tmp_path, "gw-a", ALLOWED_EGRESS, redis_server, dns, target)
    config_b, url_b = relay_member(tmp_path, "gw-b", OTHER_EGRESS, redis_server, dns, target)
    fleet_members(config_a)
    fleet_members(config_b)
    body, headers = b'{"order": 7}', {"X-Delivery": "evt_123", "Content-Type": "application/json"}
    first = requests.post(url_a, data=body, headers=headers, timeout=5)
    retry = requests.post(url_b, data=body, headers=headers, timeout=5)
    assert first.status_code == 200 and "duplicate" not in first.json()
    assert retry.json() == {"id": first.json()["id"], "duplicate": True}
    other = requests.post(url_b, data=body, headers={"X-Delivery": "evt_124"}, timeout=5)
    assert "duplicate" not in other.json()
    target.wait_for(2)
    time.sleep(0.5)  # a wrongly spooled duplicate would have been delivered by now
    ids = sorted(d.delivery_id or "" for d in target.received())
    assert ids == sorted([first.json()["id"], other.json()["id"]])


def test_keys_added_while_degraded_are_written_back_on_rejoin(redis_server: RedisServer) -> None:
    async def main() -> tuple[str | None, str | None]:
        a = link_for(redis_server, "a")
        await joined(a)
        mine = FleetReceipts(a)
        redis_server.stop()
        assert await mine.seen("/hooks evt_1") is None  # degrades; nothing waits
        await mine.add("/hooks evt_1", "dlv_1", 60)
        local = await mine.seen("/hooks evt_1")
        redis_server.start()
        assert await a.try_join()
        b = link_for(redis_server, "b")
        await joined(b)
        return local, await FleetReceipts(b).seen("/hooks evt_1")

    assert asyncio.run(main()) == ("dlv_1", "dlv_1")
