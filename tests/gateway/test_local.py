"""Requests addressed to the gateway itself, and its admin listener."""

from __future__ import annotations

import requests

from tests.gateway.test_decisions import raw_request
from tests.helpers import (
    ALLOWED_EGRESS,
    OTHER_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    url_of,
)

AUTH = {"Proxy-Authorization": basic("billing", TOKENS["billing"])}


def test_whoami_reports_the_egress_ip_for_this_client(gateway: RunningGateway) -> None:
    r = requests.get(url_of(gateway.http, "/whoami"), headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert r.json() == {
        "client": "billing",
        "egress_ip": ALLOWED_EGRESS,
        "egress_ips": [ALLOWED_EGRESS, OTHER_EGRESS],
        "strategy": "failover",
    }


def test_whoami_for_a_pinned_client_shows_only_its_ip(gateway: RunningGateway) -> None:
    r = requests.get(
        url_of(gateway.http, "/whoami"),
        headers={"Proxy-Authorization": basic("pinned", TOKENS["pinned"])},
        timeout=5,
    )
    assert r.json()["egress_ips"] == [OTHER_EGRESS]
    assert r.json()["strategy"] == "pinned"


def test_egress_view_lists_the_clients_pool(gateway: RunningGateway) -> None:
    r = requests.get(url_of(gateway.http, "/egress"), headers=AUTH, timeout=5)
    assert [e["ip"] for e in r.json()["egress"]] == [ALLOWED_EGRESS, OTHER_EGRESS]


def test_whoami_needs_credentials(gateway: RunningGateway) -> None:
    r = requests.get(url_of(gateway.http, "/whoami"), timeout=5)
    assert r.status_code == 407


def test_other_origin_form_requests_get_400(gateway: RunningGateway, vendor: VendorServer) -> None:
    out = raw_request(gateway, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert vendor.seen == []


def test_admin_health_readiness_metrics_and_egress(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    requests.get(vendor.url("/m"), proxies={"http": gateway.proxy_url()}, timeout=5)
    base = url_of(gateway.admin, "")
    assert requests.get(base + "/healthz", timeout=5).text == "ok\n"
    assert requests.get(base + "/readyz", timeout=5).status_code == 200
    metrics = requests.get(base + "/metrics", timeout=5).text
    assert (
        'fixedip_requests_total{egress="127.0.0.10",kind="http",listener="http",'
        'status_class="2xx"} 1.0' in metrics
    )
    assert "fixedip_upstream_connect_seconds_bucket" in metrics
    assert 'fixedip_egress_up{egress="127.0.0.11",public="127.0.0.11"} 1.0' in metrics
    egress = requests.get(base + "/egress", timeout=5).json()["egress"]
    assert [e["bind"] for e in egress] == [ALLOWED_EGRESS, OTHER_EGRESS]
