"""urllib through an https:// gateway: urllib's ProxyHandler cannot, the SDK's handler
can (TLS to the gateway, TLS inside TLS to https:// vendors), and nothing falls back
to plain text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from fixedip.client import Gateway
from tests.client.conftest import client_entry, https_url, tls_listener
from tests.helpers import ALLOWED_EGRESS, TOKENS, RunningGateway, VendorServer, read_flow_log


@pytest.fixture
def tls_gw(
    make_gateway: Callable[..., RunningGateway], ca: Any, tmp_path: Path, tls_vendor: VendorServer
) -> RunningGateway:
    client = client_entry("billing", connect_ports=[tls_vendor.port])
    return make_gateway(clients=[client], **tls_listener(ca, tmp_path))


def fetch(opener: urllib.request.OpenerDirector, url: str) -> dict[str, Any]:
    with opener.open(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def test_urllib_reaches_an_http_vendor_through_a_tls_gateway(
    tls_gw: RunningGateway, ca_file: Path, vendor: VendorServer, tmp_path: Path
) -> None:
    opener = Gateway(https_url(tls_gw), ca=str(ca_file)).urllib_opener()
    answer = fetch(opener, vendor.url("/urllib"))
    assert answer["peer"] == ALLOWED_EGRESS
    assert "proxy-authorization" not in answer["headers"]  # the gateway's, not the vendor's
    record = read_flow_log(tmp_path / "flow.jsonl", 1)[-1]
    assert (record["listener"], record["kind"]) == ("https", "http")


def test_urllib_reaches_an_https_vendor_tls_inside_tls(
    tls_gw: RunningGateway,
    ca_file: Path,
    tls_vendor: VendorServer,
    trust_test_ca: Path,
    tmp_path: Path,
) -> None:
    opener = Gateway(https_url(tls_gw), ca=str(ca_file)).urllib_opener()
    url = tls_vendor.url("/urllib-tls").replace("http:", "https:")
    answer = fetch(opener, url)
    assert answer["peer"] == ALLOWED_EGRESS
    assert "proxy-authorization" not in answer["headers"]
    record = read_flow_log(tmp_path / "flow.jsonl", 1)[-1]
    assert (record["listener"], record["kind"], record["status"]) == ("https", "connect", 200)


def test_urllib_refuses_a_gateway_its_ca_does_not_vouch_for(
    tls_gw: RunningGateway, vendor: VendorServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    opener = Gateway(https_url(tls_gw), ca=str(stranger)).urllib_opener()
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(opener, vendor.url("/never"))
    assert vendor.seen == []


def test_proxy_variables_in_the_environment_are_not_followed(
    tls_gw: RunningGateway, ca_file: Path, vendor: VendorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """urllib's default ProxyHandler reads *_PROXY: with an https:// gateway nothing may
    go to a (plain) proxy named there instead."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    opener = Gateway(https_url(tls_gw), ca=str(ca_file)).urllib_opener()
    assert fetch(opener, vendor.url("/env"))["peer"] == ALLOWED_EGRESS


def test_a_wrong_token_is_a_407_for_plain_and_tls_vendors(
    tls_gw: RunningGateway,
    ca_file: Path,
    vendor: VendorServer,
    tls_vendor: VendorServer,
    trust_test_ca: Path,
) -> None:
    wrong = https_url(tls_gw).replace(TOKENS["billing"], "not-the-token")
    opener = Gateway(wrong, ca=str(ca_file)).urllib_opener()
    with pytest.raises(urllib.error.HTTPError) as refused:
        fetch(opener, vendor.url("/x"))
    assert refused.value.code == 407
    with pytest.raises(urllib.error.URLError, match="407"):
        fetch(opener, tls_vendor.url("/x").replace("http:", "https:"))
    assert vendor.seen == [] and tls_vendor.seen == []
