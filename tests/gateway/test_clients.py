"""Every kind of client reaches the vendor from the allowlisted egress IP.

The stub vendor answers 200 only to 127.0.0.10 and 403 to anyone else, so a 200 here
proves the upstream socket was bound to the configured egress address.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import aiohttp
import httpx
import requests

from tests.helpers import (
    ALLOWED_EGRESS,
    OTHER_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    token_hash,
)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def curl_json(*args: str) -> tuple[int, dict]:
    out = curl(*args)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body) if body.startswith("{") else {}


def test_curl_forward_proxy_leaves_from_the_egress_ip(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    code, body = curl_json("-x", gateway.proxy_url(), vendor.url("/hello"))
    assert code == 200
    assert body["peer"] == ALLOWED_EGRESS
    assert body["path"] == "/hello"


def test_curl_connect_tunnel_leaves_from_the_egress_ip(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["127.0.0.1:*"],
                "connect_ports": [vendor.port],
            }
        ]
    )
    code, body = curl_json("-p", "-x", gw.proxy_url(), vendor.url("/tunnel"))
    assert code == 200
    assert body["peer"] == ALLOWED_EGRESS


def test_curl_socks5_hostname_resolves_at_the_gateway(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["localhost:*"],
                "connect_ports": [vendor.port],
            }
        ]
    )
    code, body = curl_json(
        "--socks5-hostname",
        gw.socks_url().split("://", 1)[1],
        vendor.url("/socks", host="localhost"),
    )
    assert code == 200
    assert body["peer"] == ALLOWED_EGRESS


def test_requests_through_the_proxy(gateway: RunningGateway, vendor: VendorServer) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url()}
        r = s.post(vendor.url("/orders"), json={"id": 1}, timeout=10)
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS
    assert r.json()["body_len"] == len(b'{"id": 1}')


def test_httpx_through_the_proxy(gateway: RunningGateway, vendor: VendorServer) -> None:
    with httpx.Client(proxy=gateway.proxy_url(), timeout=10) as client:
        r = client.get(vendor.url("/httpx"))
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_aiohttp_through_the_proxy(gateway: RunningGateway, vendor: VendorServer) -> None:
    async def fetch() -> tuple[int, dict]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(vendor.url("/aiohttp"), proxy=gateway.proxy_url()) as r,
        ):
            return r.status, await r.json()

    status, body = asyncio.run(fetch())
    assert status == 200
    assert body["peer"] == ALLOWED_EGRESS


def test_client_pinned_to_the_other_ip_is_blocked_by_the_vendor(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url("pinned")}
        r = s.get(vendor.url("/pinned"), timeout=10)
    assert r.status_code == 403
    assert r.json()["peer"] == OTHER_EGRESS


def test_curl_socks5_with_an_ip_address(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["127.0.0.1:*"],
                "connect_ports": [vendor.port],
            }
        ]
    )
    host, port = gw.socks
    code, body = curl_json(
        "--socks5", f"billing:{TOKENS['billing']}@{host}:{port}", vendor.url("/socks-ip")
    )
    assert code == 200
    assert body["peer"] == ALLOWED_EGRESS
