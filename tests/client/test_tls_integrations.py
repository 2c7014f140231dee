"""FIXEDIP_URL=https://… with FIXEDIP_CA configures every integration the SDK offers, to
https:// vendors too (TLS inside TLS through the gateway's TLS listener)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fixedip.client import Gateway
from tests.client.conftest import client_entry, https_url, tls_listener
from tests.helpers import ALLOWED_EGRESS, RunningGateway, VendorServer


@pytest.fixture
def sdk(
    make_gateway: Callable[..., RunningGateway],
    ca: Any,
    ca_file: Path,
    tmp_path: Path,
    tls_vendor: VendorServer,
) -> Gateway:
    client = client_entry("billing", connect_ports=[tls_vendor.port])
    gw = make_gateway(clients=[client], **tls_listener(ca, tmp_path))
    return Gateway.from_env({"FIXEDIP_URL": https_url(gw), "FIXEDIP_CA": str(ca_file)})


def https(vendor: VendorServer, path: str) -> str:
    return vendor.url(path).replace("http:", "https:")


def test_requests_session(sdk: Gateway, tls_vendor: VendorServer, ca_file: Path) -> None:
    with sdk.requests_session() as session:
        r = session.get(https(tls_vendor, "/requests"), verify=str(ca_file), timeout=5)
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_httpx_sync_and_async(sdk: Gateway, tls_vendor: VendorServer, ca_file: Path) -> None:
    vendor_ctx = ssl.create_default_context(cafile=str(ca_file))
    with sdk.httpx(verify=vendor_ctx, timeout=5) as client:
        assert client.get(https(tls_vendor, "/sync")).json()["peer"] == ALLOWED_EGRESS

    async def main() -> str:
        async with sdk.httpx_async(verify=vendor_ctx, timeout=5) as client:
            r = await client.get(https(tls_vendor, "/async"))
            return str(r.json()["peer"])

    assert asyncio.run(main()) == ALLOWED_EGRESS


def test_aiohttp(sdk: Gateway, tls_vendor: VendorServer) -> None:
    kwargs = sdk.aiohttp_kwargs()

    async def main() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(https(tls_vendor, "/aiohttp"), **kwargs) as r,
        ):
            return str((await r.json())["peer"])

    assert asyncio.run(main()) == ALLOWED_EGRESS


def test_boto3_config_names_the_gateway_ca(sdk: Gateway, ca_file: Path) -> None:
    config = sdk.boto3_config()
    assert config.proxies_config == {"proxy_ca_bundle": str(ca_file)}
    assert config.proxies["https"].startswith("https://billing:")


def test_urllib(sdk: Gateway, tls_vendor: VendorServer, trust_test_ca: Path) -> None:
    import json

    with sdk.urllib_opener().open(https(tls_vendor, "/urllib"), timeout=5) as r:
        assert json.loads(r.read())["peer"] == ALLOWED_EGRESS
