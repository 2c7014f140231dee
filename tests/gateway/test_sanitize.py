"""Header sanitising: what identifies the caller never reaches the vendor."""

from __future__ import annotations

import requests

from tests.helpers import RunningGateway, VendorServer, token_hash

LEAKY = {
    "X-Forwarded-For": "10.1.2.3",
    "X-Forwarded-Host": "internal.example",
    "X-Forwarded-Proto": "https",
    "X-Real-IP": "10.1.2.3",
    "True-Client-IP": "10.1.2.3",
    "CF-Connecting-IP": "10.1.2.3",
    "Forwarded": "for=10.1.2.3",
    "Via": "1.1 internal-proxy",
    "Cookie": "session=abc",
    "Referer": "https://intranet.example/",
    "Origin": "https://intranet.example",
    "X-Internal-User": "alice",
    "Authorization": "Bearer vendor-key",
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "fn/1.0",
    "X-Correlation-ID": "abc-123",
    "X-Custom": "kept?",
}


def seen_headers(gw: RunningGateway, vendor: VendorServer, path: str = "/h") -> dict[str, str]:
    r = requests.post(
        vendor.url(path), data=b"{}", headers=LEAKY, proxies={"http": gw.proxy_url()}, timeout=10
    )
    assert r.status_code == 200
    return r.json()["headers"]


def destinations_gateway(make_gateway, *destinations: dict) -> RunningGateway:
    return make_gateway(
        destinations=list(destinations),
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:*"]}
        ],
    )


def test_standard_preset_applies_by_default(gateway: RunningGateway, vendor: VendorServer) -> None:
    seen = seen_headers(gateway, vendor)
    for name in (
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "forwarded",
        "via",
    ):
        assert name not in seen
    for name in ("cookie", "referer", "origin", "x-internal-user", "authorization", "x-custom"):
        assert name in seen
    assert seen["content-length"] == "2" and seen["host"] == f"127.0.0.1:{vendor.port}"


def test_strict_preset_also_strips_cookie_referer_origin_and_extras(
    make_gateway, vendor: VendorServer
) -> None:
    gw = destinations_gateway(
        make_gateway,
        {"match": "127.0.0.1", "sanitize": "strict", "sanitize_extra": ["X-Internal-User"]},
    )
    seen = seen_headers(gw, vendor)
    for name in ("x-forwarded-for", "via", "cookie", "referer", "origin", "x-internal-user"):
        assert name not in seen
    assert seen["authorization"] == "Bearer vendor-key" and seen["x-custom"] == "kept?"


def test_allowlist_preset_passes_only_listed_names_and_framing(
    make_gateway, vendor: VendorServer
) -> None:
    gw = destinations_gateway(
        make_gateway,
        {"match": "127.0.0.1", "sanitize": "allowlist", "sanitize_extra": ["X-Custom"]},
    )
    seen = seen_headers(gw, vendor)
    assert set(seen) == {
        "host",
        "content-length",
        "authorization",
        "content-type",
        "accept",
        "user-agent",
        "x-correlation-id",
        "x-custom",
    }


def test_first_matching_destination_wins(make_gateway, vendor: VendorServer, dns) -> None:
    dns.table["api.vendor.test"] = ["127.0.0.1"]
    gw = make_gateway(
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        destinations=[
            {"match": "api.vendor.test", "sanitize": "allowlist"},
            {"match": "*.vendor.test", "sanitize": "strict"},
        ],
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["*.vendor.test:*"]}
        ],
    )
    r = requests.get(
        f"http://api.vendor.test:{vendor.port}/",
        headers=LEAKY,
        proxies={"http": gw.proxy_url()},
        timeout=10,
    )
    assert "x-custom" not in r.json()["headers"]  # allowlist, not strict


def test_unmatched_host_falls_back_to_standard(make_gateway, vendor: VendorServer) -> None:
    gw = destinations_gateway(
        make_gateway, {"match": "*.elsewhere.example", "sanitize": "allowlist"}
    )
    seen = seen_headers(gw, vendor)
    assert "x-custom" in seen and "x-forwarded-for" not in seen


def test_the_gateway_adds_no_via_or_forwarded_headers(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    r = requests.get(vendor.url("/plain"), proxies={"http": gateway.proxy_url()}, timeout=10)
    seen = r.json()["headers"]
    for name in ("via", "x-forwarded-for", "forwarded", "proxy-authorization"):
        assert name not in seen
