"""Egress strategies: which static IP each upstream connection leaves from.

The failover test removes an address from `lo` inside this suite's own network namespace
(198.18.0.0/15, per the test-network rules); the root namespace is never touched.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.gateway.test_decisions import proxied_get
from tests.helpers import (
    ALLOWED_EGRESS,
    OTHER_EGRESS,
    RunningGateway,
    VendorServer,
    token_hash,
    url_of,
)


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    """These tests are about spreading traffic, not blocks: the vendor accepts both IPs
    (with the default vendor, 127.0.0.11's 403s would rightly get it quarantined)."""
    server = VendorServer({ALLOWED_EGRESS, OTHER_EGRESS, "198.18.0.10"})
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


def peers_of(gw: RunningGateway, vendor: VendorServer, n: int, user: str = "billing") -> list[str]:
    # A fresh client connection each time; separate paths keep the answers apart.
    return [proxied_get(gw, vendor.url(f"/n{i}"), user=user).json()["peer"] for i in range(n)]


def test_round_robin_spreads_connections_over_every_ip(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(egress={"strategy": "round-robin"})
    counts = collections.Counter(peers_of(gw, vendor, 10))
    assert counts == {ALLOWED_EGRESS: 5, OTHER_EGRESS: 5}


def test_failover_uses_the_first_ip_while_it_is_usable(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(egress={"strategy": "failover", "ips": [OTHER_EGRESS, ALLOWED_EGRESS]})
    assert set(peers_of(gw, vendor, 4)) == {OTHER_EGRESS}


def test_failover_moves_to_the_next_ip_when_the_first_disappears(
    make_gateway, vendor: VendorServer
) -> None:
    first = "198.18.0.10"
    subprocess.run(["ip", "addr", "add", f"{first}/32", "dev", "lo"], check=True)
    try:
        gw = make_gateway(
            egress={
                "strategy": "failover",
                "ips": [first, ALLOWED_EGRESS, OTHER_EGRESS],
                "health_check_s": 0.2,
            }
        )
        assert proxied_get(gw, vendor.url("/before")).json()["peer"] == first
        subprocess.run(["ip", "addr", "del", f"{first}/32", "dev", "lo"], check=True)
        gw.call(gw.gateway.upstreams.close_all)  # drop the pooled connection from `first`
        r = proxied_get(gw, vendor.url("/after"))
        assert r.status_code == 200 and r.json()["peer"] == ALLOWED_EGRESS
        egress = requests.get(url_of(gw.admin, "/egress"), timeout=5).json()["egress"]
        assert egress[0]["state"] == "down" and "not assigned" in egress[0]["reason"]
        # The address comes back; the health check returns it to service.
        subprocess.run(["ip", "addr", "add", f"{first}/32", "dev", "lo"], check=True)
        for _ in range(50):
            egress = requests.get(url_of(gw.admin, "/egress"), timeout=5).json()["egress"]
            if egress[0]["state"] == "up":
                break
            __import__("time").sleep(0.1)
        assert egress[0]["state"] == "up"
        gw.call(gw.gateway.upstreams.close_all)
        assert proxied_get(gw, vendor.url("/back")).json()["peer"] == first
    finally:
        subprocess.run(["ip", "addr", "del", f"{first}/32", "dev", "lo"], capture_output=True)


def test_pinned_client_never_moves_to_another_ip(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(egress={"strategy": "round-robin"})
    assert set(peers_of(gw, vendor, 4, user="pinned")) == {OTHER_EGRESS}


def test_pinned_client_whose_ip_is_down_gets_503(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway()
    gw.call(
        lambda: gw.gateway.runtime.pool.mark_down(
            gw.gateway.runtime.pool.get(__import__("ipaddress").ip_address(OTHER_EGRESS)), "test"
        )
    )
    r = proxied_get(gw, vendor.url("/pinned-down"), user="pinned")
    assert r.status_code == 503
    assert vendor.seen == []


def test_pinned_strategy_keeps_each_client_on_one_ip(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        egress={"strategy": "pinned"},
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:*"]},
            {"name": "other", "token_hash": token_hash("other"), "allow": ["127.0.0.1:*"]},
        ],
    )
    assert len(set(peers_of(gw, vendor, 4))) == 1
    assert len(set(peers_of(gw, vendor, 4, user="other"))) == 1


def test_public_address_is_what_whoami_and_egress_report(make_gateway) -> None:
    gw = make_gateway(
        egress={"ips": [{"bind": ALLOWED_EGRESS, "public": "203.0.113.7"}]},
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:*"]}
        ],
    )
    r = requests.get(
        url_of(gw.http, "/whoami"), headers={"Proxy-Authorization": _basic()}, timeout=5
    )
    assert r.json()["egress_ip"] == "203.0.113.7"
    admin = requests.get(url_of(gw.admin, "/egress"), timeout=5).json()["egress"]
    assert admin[0] == {**admin[0], "bind": ALLOWED_EGRESS, "public": "203.0.113.7"}


def _basic() -> str:
    from tests.helpers import TOKENS, basic

    return basic("billing", TOKENS["billing"])
