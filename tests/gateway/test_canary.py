"""Canaries: a probe from each egress IP confirms or clears a suspected block."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import (
    ALLOWED_EGRESS,
    OTHER_EGRESS,
    RunningGateway,
    VendorServer,
    token_hash,
    url_of,
    wait_for,
)


def canary_gateway(make_gateway, dns, vendor: VendorServer) -> RunningGateway:
    dns.table["vendor.test"] = ["127.0.0.1"]
    return make_gateway(
        egress={"strategy": "round-robin"},
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        destinations=[
            {
                "match": "vendor.test",
                "canary": {"url": f"http://vendor.test:{vendor.port}/canary", "timeout_s": 2},
            }
        ],
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["vendor.test:*"]}
        ],
    )


def quarantined(gw: RunningGateway) -> set[str]:
    egress = requests.get(url_of(gw.admin, "/egress"), timeout=5).json()["egress"]
    return {e["bind"] for e in egress if e["quarantined_for"]}


def test_start_up_canary_quarantines_a_blocked_ip_before_any_request(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = canary_gateway(make_gateway, dns, vendor)  # the vendor answers 403 to 127.0.0.11
    assert wait_for(lambda: quarantined(gw) == {OTHER_EGRESS})
    canaries = [(peer, method) for peer, _, method, path in vendor.seen if path == "/canary"]
    assert ("127.0.0.11", "OPTIONS") in canaries and ("127.0.0.10", "OPTIONS") in canaries
    peers = {
        requests.get(
            f"http://vendor.test:{vendor.port}/x", proxies={"http": gw.proxy_url()}, timeout=5
        ).json()["peer"]
        for _ in range(4)
    }
    assert peers == {ALLOWED_EGRESS}


@pytest.fixture
def open_vendor() -> Iterator[VendorServer]:
    server = VendorServer({ALLOWED_EGRESS, OTHER_EGRESS})
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_403_the_canary_does_not_confirm_never_takes_an_ip_out(
    make_gateway, dns, open_vendor: VendorServer
) -> None:
    gw = canary_gateway(make_gateway, dns, open_vendor)  # both IPs fine; /status answers 403
    for _ in range(8):  # "bad credentials": 403s from both IPs, well past 3 within 60 s
        r = requests.get(
            f"http://vendor.test:{open_vendor.port}/status?code=403",
            proxies={"http": gw.proxy_url()},
            timeout=5,
        )
        assert r.status_code == 403
    assert wait_for(lambda: sum(p == "/canary" for _, _, _, p in open_vendor.seen) >= 4)
    time.sleep(0.3)
    assert quarantined(gw) == set()
