"""Real HTTP clients through the gateway's TLS listener, configured the way their own
documentation says (no SDK): requests/urllib3 2, httpx sync and async, aiohttp, boto3
against a moto server that itself speaks TLS. Each reaches a plain and a TLS vendor (TLS
inside TLS), and each refuses a gateway whose certificate its CA does not vouch for.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import httpx
import pytest
import requests
import trustme
from botocore.config import Config as BotoConfig
from requests.adapters import HTTPAdapter

from tests.helpers import ALLOWED_EGRESS, RunningGateway, VendorServer, token_hash
from tests.tlskit import GatewayPKI, TLSVendor, https_proxy_url, tls_overrides

MakeGateway = Callable[..., RunningGateway]


@pytest.fixture
def gw(make_gateway: MakeGateway, pki: GatewayPKI, https_vendor: TLSVendor) -> RunningGateway:
    client = {
        "name": "billing",
        "token_hash": token_hash("billing"),
        "allow": ["127.0.0.1:*"],
        "connect_ports": [https_vendor.port],
    }
    return make_gateway(**tls_overrides(pki, clients=[client]))


def both_cas(pki: GatewayPKI, vendor: TLSVendor) -> ssl.SSLContext:
    """For clients that verify the gateway and the vendor with one context."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    context.load_verify_locations(cafile=str(vendor.ca_file))
    return context


def stranger_ca(tmp_path: Path) -> Path:
    path = tmp_path / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


# --- requests / urllib3 2 ------------------------------------------------------------------


class ProxyTLS(HTTPAdapter):
    """urllib3 2 verifies an HTTPS proxy with `proxy_ssl_context`; requests on its own
    does not pass one (for http:// URLs it would not verify the proxy at all)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__()

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["proxy_ssl_context"] = self.context
        return super().proxy_manager_for(proxy, **kwargs)


def requests_session(gw: RunningGateway, gateway_ca: Path) -> requests.Session:
    session = requests.Session()
    session.proxies = {"http": https_proxy_url(gw), "https": https_proxy_url(gw)}
    adapter = ProxyTLS(ssl.create_default_context(cafile=str(gateway_ca)))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def test_requests_to_plain_and_tls_vendors(
    gw: RunningGateway, pki: GatewayPKI, vendor: VendorServer, https_vendor: TLSVendor
) -> None:
    with requests_session(gw, pki.ca_file) as session:
        plain = session.get(vendor.url("/requests"), timeout=5)
        nested = session.get(
            https_vendor.url("/requests"), verify=str(https_vendor.ca_file), timeout=5
        )
    assert plain.json()["peer"] == ALLOWED_EGRESS
    assert nested.json()["peer"] == ALLOWED_EGRESS


def test_requests_refuses_a_gateway_its_ca_does_not_vouch_for(
    gw: RunningGateway, vendor: VendorServer, tmp_path: Path
) -> None:
    with (
        requests_session(gw, stranger_ca(tmp_path)) as session,
        pytest.raises(requests.exceptions.ProxyError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        session.get(vendor.url("/never"), timeout=5)
    assert vendor.seen == []


# --- httpx ---------------------------------------------------------------------------------


def test_httpx_sync_to_plain_and_tls_vendors(
    gw: RunningGateway, pki: GatewayPKI, vendor: VendorServer, https_vendor: TLSVendor
) -> None:
    proxy = httpx.Proxy(https_proxy_url(gw), ssl_context=pki.client_context())
    vendor_ctx = ssl.create_default_context(cafile=str(https_vendor.ca_file))
    with httpx.Client(proxy=proxy, verify=vendor_ctx, timeout=5) as client:
        assert client.get(vendor.url("/httpx")).json()["peer"] == ALLOWED_EGRESS
        assert client.get(https_vendor.url("/httpx")).json()["peer"] == ALLOWED_EGRESS


def test_httpx_async_to_plain_and_tls_vendors(
    gw: RunningGateway, pki: GatewayPKI, vendor: VendorServer, https_vendor: TLSVendor
) -> None:
    async def main() -> list[str]:
        proxy = httpx.Proxy(https_proxy_url(gw), ssl_context=pki.client_context())
        vendor_ctx = ssl.create_default_context(cafile=str(https_vendor.ca_file))
        async with httpx.AsyncClient(proxy=proxy, verify=vendor_ctx, timeout=5) as client:
            answers = await asyncio.gather(
                client.get(vendor.url("/httpx-async")), client.get(https_vendor.url("/httpx-async"))
            )
        return [r.json()["peer"] for r in answers]

    assert asyncio.run(main()) == [ALLOWED_EGRESS, ALLOWED_EGRESS]


def test_httpx_refuses_a_gateway_its_ca_does_not_vouch_for(
    gw: RunningGateway, vendor: VendorServer, tmp_path: Path
) -> None:
    context = ssl.create_default_context(cafile=str(stranger_ca(tmp_path)))
    proxy = httpx.Proxy(https_proxy_url(gw), ssl_context=context)
    with httpx.Client(proxy=proxy, timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.get(vendor.url("/never"))
    assert vendor.seen == []


# --- aiohttp (TLS in TLS needs Python >= 3.11) ----------------------------------------------


def test_aiohttp_to_plain_and_tls_vendors(
    gw: RunningGateway, pki: GatewayPKI, vendor: VendorServer, https_vendor: TLSVendor
) -> None:
    context = both_cas(pki, https_vendor)

    async def main() -> list[str]:
        peers = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for url in (vendor.url("/aiohttp"), https_vendor.url("/aiohttp")):
                async with session.get(url, proxy=https_proxy_url(gw), ssl=context) as r:
                    peers.append((await r.json())["peer"])
        return peers

    assert asyncio.run(main()) == [ALLOWED_EGRESS, ALLOWED_EGRESS]


def test_aiohttp_refuses_a_gateway_its_ca_does_not_vouch_for(
    gw: RunningGateway, vendor: VendorServer, tmp_path: Path
) -> None:
    context = ssl.create_default_context(cafile=str(stranger_ca(tmp_path)))

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await session.get(vendor.url("/never"), proxy=https_proxy_url(gw), ssl=context)

    with pytest.raises(aiohttp.ClientConnectorError):
        asyncio.run(main())
    assert vendor.seen == []


# --- boto3 against moto, which speaks TLS itself -----------------------------------------


class TLSMoto:
    """moto's server (werkzeug) with a certificate from the vendor's CA, recording the
    peer address of every request (200s prove they left from the egress IP)."""

    def __init__(self, vendor: TLSVendor) -> None:
        from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        vendor.ca.issue_cert("127.0.0.1").configure_cert(context)
        app = DomainDispatcherApplication(create_backend_app)
        self.peers: list[str] = []

        def recording(environ: dict[str, Any], start_response: Any) -> Any:
            self.peers.append(environ.get("REMOTE_ADDR", ""))
            return app(environ, start_response)

        self.server = make_server(
            "127.0.0.1", 0, recording, True, request_handler=MotoRequestHandler, ssl_context=context
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def tls_moto(https_vendor: TLSVendor) -> Iterator[TLSMoto]:
    moto = TLSMoto(https_vendor)
    yield moto
    moto.stop()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_boto3_through_the_tls_listener_to_a_tls_moto(
    make_gateway: MakeGateway,
    pki: GatewayPKI,
    https_vendor: TLSVendor,
    tls_moto: TLSMoto,
    aws: None,
) -> None:
    port = tls_moto.server.server_port
    client = {"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:*"]}
    gw = make_gateway(**tls_overrides(pki, clients=[{**client, "connect_ports": [port]}]))
    config = BotoConfig(
        proxies={"https": https_proxy_url(gw)},
        proxies_config={"proxy_ca_bundle": str(pki.ca_file)},
        retries={"max_attempts": 1},
    )
    sts = boto3.client(
        "sts", endpoint_url=tls_moto.endpoint, verify=str(https_vendor.ca_file), config=config
    )
    assert sts.get_caller_identity()["Account"]
    assert tls_moto.peers == [ALLOWED_EGRESS]


def test_boto3_refuses_a_gateway_its_proxy_ca_bundle_does_not_vouch_for(
    make_gateway: MakeGateway,
    pki: GatewayPKI,
    https_vendor: TLSVendor,
    tls_moto: TLSMoto,
    aws: None,
    tmp_path: Path,
) -> None:
    from botocore.exceptions import ProxyConnectionError, SSLError

    gw = make_gateway(**tls_overrides(pki))
    config = BotoConfig(
        proxies={"https": https_proxy_url(gw)},
        proxies_config={"proxy_ca_bundle": str(stranger_ca(tmp_path))},
        retries={"max_attempts": 1},
    )
    sts = boto3.client(
        "sts", endpoint_url=tls_moto.endpoint, verify=str(https_vendor.ca_file), config=config
    )
    with pytest.raises((SSLError, ProxyConnectionError)):
        sts.get_caller_identity()
    assert tls_moto.peers == []
