"""Route mode: plain HTTP in, HTTPS out from the fixed IP, the vendor's credential
injected by the gateway (the function never holds it), TLS verified."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import trustme

from tests.helpers import ALLOWED_EGRESS, TOKENS, RunningGateway, basic, token_hash, url_of
from tests.helpers import _VendorHandler as VendorHandler

AUTH = {"Proxy-Authorization": basic("billing", TOKENS["billing"])}


@pytest.fixture
def tls_vendor(tmp_path: Path) -> Iterator[tuple[int, str, ThreadingHTTPServer]]:
    ca = trustme.CA()
    server = ThreadingHTTPServer(("127.0.0.1", 0), VendorHandler)
    server.allowed = {ALLOWED_EGRESS}  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    ca_file = tmp_path / "vendor-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], str(ca_file), server
    server.shutdown()
    server.server_close()


def route_gateway(make_gateway, tmp_path: Path, port: int, ca_file: str, **route) -> RunningGateway:
    secret = tmp_path / "vendor.key"
    secret.write_text("sk_live_s3cret\n")
    return make_gateway(
        routes=[
            {
                "name": "vendor",
                "base_url": f"https://localhost:{port}/api",
                "auth": {"bearer": f"file:{secret}"},
                "ca_file": ca_file,
                **route,
            }
        ],
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["localhost:*"]}
        ],
    )


def test_route_by_path_injects_the_credential_over_tls_from_the_egress_ip(
    make_gateway, tmp_path, tls_vendor
) -> None:
    port, ca_file, _ = tls_vendor
    gw = route_gateway(make_gateway, tmp_path, port, ca_file)
    r = requests.post(
        url_of(gw.http, "/r/vendor/charges?x=1"),
        data=b"{}",
        headers={
            **AUTH,
            "Authorization": "Bearer the-functions-own",
            "X-Forwarded-For": "10.9.9.9",
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["peer"] == ALLOWED_EGRESS
    assert seen["path"] == "/api/charges?x=1"
    assert seen["headers"]["authorization"] == "Bearer sk_live_s3cret"
    assert seen["headers"]["host"] == f"localhost:{port}"
    assert "x-forwarded-for" not in seen["headers"] and "proxy-authorization" not in seen["headers"]


def test_route_by_proxy_name_route_fixedip(make_gateway, tmp_path, tls_vendor) -> None:
    port, ca_file, _ = tls_vendor
    gw = route_gateway(make_gateway, tmp_path, port, ca_file)
    with requests.Session() as s:
        s.proxies = {"http": gw.proxy_url()}
        for i in range(3):  # keep-alive to the vendor over the pooled TLS connection
            r = s.get(f"http://vendor.route.fixedip/v1/items/{i}", timeout=10)
            assert r.status_code == 200 and r.json()["path"] == f"/api/v1/items/{i}"


def test_unknown_route_is_404_and_nothing_is_sent(make_gateway, tmp_path, tls_vendor) -> None:
    port, ca_file, server = tls_vendor
    gw = route_gateway(make_gateway, tmp_path, port, ca_file)
    r = requests.get(url_of(gw.http, "/r/nope/x"), headers=AUTH, timeout=10)
    assert r.status_code == 404 and "no_such_route" in r.headers["Proxy-Status"]
    assert server.seen == []  # type: ignore[attr-defined]


def test_route_needs_client_credentials(make_gateway, tmp_path, tls_vendor) -> None:
    port, ca_file, _ = tls_vendor
    gw = route_gateway(make_gateway, tmp_path, port, ca_file)
    assert requests.get(url_of(gw.http, "/r/vendor/x"), timeout=10).status_code == 407


def test_an_untrusted_vendor_certificate_is_refused(make_gateway, tmp_path, tls_vendor) -> None:
    port, _, server = tls_vendor
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    gw = route_gateway(make_gateway, tmp_path, port, str(other_ca))
    r = requests.get(url_of(gw.http, "/r/vendor/x"), headers=AUTH, timeout=10)
    assert r.status_code == 502 and "tls_certificate_error" in r.headers["Proxy-Status"]
    assert server.seen == []  # type: ignore[attr-defined]


def test_a_missing_secret_is_a_config_error(tmp_path) -> None:
    from fixedip.config import ConfigError, from_mapping

    data = {
        "egress": {"ips": ["127.0.0.10"]},
        "routes": [
            {
                "name": "vendor",
                "base_url": "https://api.vendor.example",
                "auth": {"bearer": "env:FIXEDIP_TEST_NOT_SET"},
            }
        ],
    }
    with pytest.raises(
        ConfigError,
        match=r"routes\[0\]\.auth: environment variable 'FIXEDIP_TEST_NOT_SET' is not set",
    ):
        from_mapping(data, "gw.toml")
