"""Gateway: reading FIXEDIP_*, refusing unsafe URLs, choosing a healthy gateway, and the
settings it hands each client library."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fixedip.client import (
    ConfigurationError,
    Gateway,
    GatewayUnavailable,
    MissingDependency,
)
from tests.client.conftest import dead_url
from tests.helpers import TOKENS, RunningGateway

URL = "http://billing:s3cret@10.0.1.5:3128"


def test_from_env_reads_the_url_ca_expected_ips_and_no_proxy(ca_file: Path) -> None:
    gw = Gateway.from_env(
        {
            "FIXEDIP_URL": URL,
            "FIXEDIP_CA": str(ca_file),
            "FIXEDIP_EXPECTED_IPS": "203.0.113.7, 203.0.113.8",
            "FIXEDIP_NO_PROXY": "internal.example,10.0.0.0/8",
        }
    )
    assert gw.url == URL
    assert gw.ca == str(ca_file)
    assert gw.expected_ips == ("203.0.113.7", "203.0.113.8")
    assert gw.no_proxy == ("internal.example", "10.0.0.0/8")


def test_an_empty_fixedip_no_proxy_sends_everything_through_the_gateway() -> None:
    env = Gateway.from_env({"FIXEDIP_URL": URL, "FIXEDIP_NO_PROXY": ""}).env()
    assert env["NO_PROXY"] == ""


def test_from_env_without_fixedip_url_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="FIXEDIP_URL is not set"):
        Gateway.from_env({})


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIXEDIP_URL", URL)
    assert Gateway.from_env().url == URL


def test_proxies_send_both_schemes_through_the_gateway() -> None:
    assert Gateway(URL).proxies == {"http": URL, "https": URL}


def test_env_sets_both_spellings_and_keeps_metadata_endpoints_off_the_proxy() -> None:
    env = Gateway(URL).env()
    assert env["HTTP_PROXY"] == env["https_proxy"] == URL
    assert env["NO_PROXY"] == env["no_proxy"]
    assert {"169.254.169.254", "169.254.170.2", "localhost"} <= set(env["NO_PROXY"].split(","))


def test_repr_and_errors_never_show_the_token() -> None:
    assert "s3cret" not in repr(Gateway(URL))
    assert "billing:***@10.0.1.5:3128" in repr(Gateway(URL))
    with pytest.raises(ConfigurationError) as info:
        Gateway("http://billing:s3cret@8.8.8.8:3128")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5://billing:t@10.0.0.1:1080", "use http://"),
        ("http://billing:t@10.0.0.1", "give the host and the port"),
        ("http://10.0.0.1:3128", "client name and token"),
        ("http://billing@10.0.0.1:3128", "client name and token"),
        ("http://billing:t@10.0.0.1:3128/proxy", "no path"),
        ("http://billing:t@10.0.0.1:99999", "give the host and the port"),
    ],
)
def test_malformed_gateway_urls_are_refused_with_a_hint(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Gateway(url)


@pytest.mark.parametrize(
    "host",
    ["8.8.8.8", "1.1.1.1", "[2606:4700:4700::1111]"],
)
def test_plain_http_to_a_public_address_is_refused(host: str) -> None:
    with pytest.raises(ConfigurationError, match="in the clear"):
        Gateway(f"http://billing:t@{host}:3128")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.1.5",
        "172.16.4.4",
        "192.168.1.10",
        "100.64.0.9",
        "[fd00::5]",
        "[::1]",
        "localhost",
        "gateway",
        "fixedip.internal",
        "gw.eu-west-1.compute.internal",
        "gw.local",
    ],
)
def test_plain_http_to_loopback_and_private_addresses_is_accepted(host: str) -> None:
    assert Gateway(f"http://billing:t@{host}:3128").url.startswith("http://billing:t@")


def test_allow_insecure_accepts_plain_http_to_a_public_address() -> None:
    assert Gateway("http://billing:t@8.8.8.8:3128", allow_insecure=True).url
    assert Gateway.from_env(
        {"FIXEDIP_URL": "http://billing:t@8.8.8.8:3128", "FIXEDIP_ALLOW_INSECURE": "1"}
    ).url


def _resolving_to(address: str) -> Any:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    return getaddrinfo


def test_a_name_that_resolves_to_a_public_address_is_refused_when_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = Gateway("http://billing:t@gw.example.com:3128")
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to("8.8.4.4"))
    with pytest.raises(ConfigurationError, match=r"resolves to 8\.8\.4\.4"):
        _ = gw.proxies


def test_a_name_that_resolves_to_a_private_address_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _resolving_to("10.0.1.5"))
    gw = Gateway("http://billing:t@gw.corp.example.com:3128")
    assert gw.proxies["https"] == "http://billing:t@gw.corp.example.com:3128"


def test_https_gateways_are_accepted_on_public_addresses_with_a_ca(ca_file: Path) -> None:
    gw = Gateway("https://billing:t@gw.example.com:3129", ca=str(ca_file))
    assert gw.url == "https://billing:t@gw.example.com:3129"


def test_a_missing_ca_file_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="FIXEDIP_CA"):
        Gateway(URL, ca="/nonexistent/ca.pem")


def test_expected_ips_must_be_addresses() -> None:
    with pytest.raises(ConfigurationError, match="not an IP address"):
        Gateway.from_env({"FIXEDIP_URL": URL, "FIXEDIP_EXPECTED_IPS": "gw.example.com"})


def test_route_names_the_gateways_route_host() -> None:
    assert Gateway(URL).route("Stripe") == "http://stripe.route.fixedip"
    with pytest.raises(ConfigurationError, match="DNS label"):
        Gateway(URL).route("no/such route")


def test_the_first_healthy_gateway_is_chosen(gateway: RunningGateway) -> None:
    down = dead_url()
    gw = Gateway(f"{down},{gateway.proxy_url()}")
    assert gw.url == gateway.proxy_url()
    assert gw.proxies["http"] == gateway.proxy_url()


def test_the_first_gateway_is_preferred_when_it_is_up(gateway: RunningGateway) -> None:
    gw = Gateway([gateway.proxy_url(), dead_url()])
    assert gw.url == gateway.proxy_url()


def test_no_healthy_gateway_names_each_failure() -> None:
    first, second = dead_url(), dead_url()
    with pytest.raises(GatewayUnavailable) as info:
        _ = Gateway(f"{first},{second}").proxies
    assert len(info.value.failures) == 2
    assert TOKENS["billing"] not in str(info.value)


def test_a_single_gateway_is_used_without_probing() -> None:
    down = dead_url()
    assert Gateway(down).url == down


def test_boto3_config_carries_the_proxy_and_the_gateway_ca(ca_file: Path) -> None:
    config = Gateway(URL).boto3_config(region_name="eu-west-1")
    assert config.proxies == {"http": URL, "https": URL}
    assert config.region_name == "eu-west-1"
    tls = Gateway("https://billing:t@10.0.0.1:3129", ca=str(ca_file)).boto3_config()
    assert tls.proxies_config == {"proxy_ca_bundle": str(ca_file)}


def test_a_missing_optional_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("httpx", "botocore", "botocore.config"):
        monkeypatch.setitem(sys.modules, name, None)
    gw = Gateway(URL)
    with pytest.raises(MissingDependency, match="pip install httpx"):
        gw.httpx()
    with pytest.raises(MissingDependency, match="pip install boto3"):
        gw.boto3_config()
