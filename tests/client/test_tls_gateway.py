"""https:// gateways (the gateway's TLS listener): verified against FIXEDIP_CA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import boto3
import pytest
import requests

from fixedip.client import ConfigurationError, Gateway, verify_egress
from tests.client.conftest import MotoServer
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, VendorServer


def test_whoami_over_tls_with_the_ca(tls_gateway_url: str, ca_file: Path) -> None:
    gw = Gateway.from_env({"FIXEDIP_URL": tls_gateway_url, "FIXEDIP_CA": str(ca_file)})
    assert gw.whoami()["egress_ip"] == ALLOWED_EGRESS
    assert verify_egress([ALLOWED_EGRESS, OTHER_EGRESS], gateway=gw).ip == ALLOWED_EGRESS


def test_an_untrusted_gateway_certificate_is_a_configuration_error(tls_gateway_url: str) -> None:
    with pytest.raises(ConfigurationError, match="FIXEDIP_CA"):
        Gateway(tls_gateway_url).whoami()


def test_httpx_through_a_tls_gateway(
    tls_gateway_url: str, ca_file: Path, vendor: VendorServer
) -> None:
    with Gateway(tls_gateway_url, ca=str(ca_file)).httpx(timeout=5) as client:
        r = client.get(vendor.url("/over-tls"))
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_aiohttp_through_a_tls_gateway(
    tls_gateway_url: str, ca_file: Path, vendor: VendorServer
) -> None:
    kwargs = Gateway(tls_gateway_url, ca=str(ca_file)).aiohttp_kwargs()

    async def main() -> dict[str, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(vendor.url("/aiohttp-tls"), **kwargs) as r,
        ):
            assert r.status == 200
            return await r.json()

    assert asyncio.run(main())["peer"] == ALLOWED_EGRESS


def test_an_echo_through_a_tls_gateway(
    tls_gateway_url: str, ca_file: Path, vendor: VendorServer
) -> None:
    gw = Gateway(tls_gateway_url, ca=str(ca_file))
    assert verify_egress(gateway=gw, echo_url=vendor.url("/echo")).echo_ip == ALLOWED_EGRESS


def test_a_requests_session_verifies_the_tls_gateway(
    tls_gateway_url: str, ca_file: Path, vendor: VendorServer
) -> None:
    with Gateway(tls_gateway_url, ca=str(ca_file)).requests_session() as session:
        r = session.get(vendor.url("/requests-tls"), timeout=5)
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_a_requests_session_refuses_a_gateway_the_ca_does_not_vouch_for(
    tls_gateway_url: str, tmp_path: Path, vendor: VendorServer
) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with (
        Gateway(tls_gateway_url, ca=str(other)).requests_session() as session,
        pytest.raises(requests.exceptions.ProxyError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        session.get(vendor.url("/requests-tls"), timeout=5)


def test_boto3_through_a_tls_gateway(
    tls_gateway_url: str, ca_file: Path, moto: MotoServer, aws_credentials: None
) -> None:
    config = Gateway(tls_gateway_url, ca=str(ca_file)).boto3_config()
    sts = boto3.client("sts", endpoint_url=moto.endpoint, config=config)
    assert sts.get_caller_identity()["Account"]
    assert moto.peers[-1] == ALLOWED_EGRESS
