"""The TLS listener: the same proxy session behind TLS, and nothing without a good handshake.

Real clients (curl, Python's ssl) on loopback; the gateway and the vendor each have a
certificate from their own test CA.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    read_flow_log,
)
from tests.tlskit import (
    GatewayPKI,
    TLSVendor,
    forward_get,
    https_address,
    https_proxy_url,
    read_response,
    tls_connect,
    tls_overrides,
)

MakeGateway = Callable[..., RunningGateway]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def billing(**fields: object) -> dict[str, object]:
    from tests.helpers import token_hash

    return {
        "name": "billing",
        "token_hash": token_hash("billing"),
        "allow": ["127.0.0.1:*"],
        **fields,
    }


# --- curl through the TLS listener ------------------------------------------------------


def test_curl_reaches_an_http_vendor_through_the_tls_listener(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, tmp_path: Path
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    out = curl("-x", https_proxy_url(gw), "--proxy-cacert", str(pki.ca_file), vendor.url("/a"))
    assert out.returncode == 0, out.stderr
    assert f'"peer": "{ALLOWED_EGRESS}"' in out.stdout
    record = read_flow_log(tmp_path / "flow.jsonl", 1)[-1]
    assert (record["listener"], record["kind"], record["client"]) == ("https", "http", "billing")


def test_curl_reaches_an_https_vendor_tls_in_tls(
    make_gateway: MakeGateway,
    pki: GatewayPKI,
    https_vendor: TLSVendor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = make_gateway(**tls_overrides(pki, clients=[billing(connect_ports=[https_vendor.port])]))
    out = curl(
        "-x",
        https_proxy_url(gw),
        "--proxy-cacert",
        str(pki.ca_file),
        "--cacert",
        str(https_vendor.ca_file),
        https_vendor.url("/tls-in-tls"),
    )
    assert out.returncode == 0, out.stderr
    assert f'"peer": "{ALLOWED_EGRESS}"' in out.stdout
    record = read_flow_log(tmp_path / "flow.jsonl", 1)[-1]
    assert (record["listener"], record["kind"], record["status"]) == ("https", "connect", 200)
    assert record["bytes_down"] > 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_same_policy_applies_on_the_tls_listener(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    proxy = f"https://{https_address(gw)[0]}:{https_address(gw)[1]}"
    no_token = curl("-i", "-x", proxy, "--proxy-cacert", str(pki.ca_file), vendor.url("/"))
    assert "407" in no_token.stdout.splitlines()[0]
    denied = curl(
        "-i", "-x", https_proxy_url(gw), "--proxy-cacert", str(pki.ca_file), "http://127.0.0.1:9/"
    )
    assert "403" in denied.stdout.splitlines()[0]
    assert "proxy-status:" in denied.stdout.lower()
    assert vendor.seen == []


def test_whoami_over_the_tls_listener(make_gateway: MakeGateway, pki: GatewayPKI) -> None:
    gw = make_gateway(**tls_overrides(pki))
    with tls_connect(https_address(gw), pki.client_context()) as sock:
        sock.sendall(
            f"GET /whoami HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        )
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200")
    assert ALLOWED_EGRESS.encode() in response


# --- the handshake ------------------------------------------------------------------------


def test_alpn_is_http_1_1_and_tls_1_3_is_preferred(
    make_gateway: MakeGateway, pki: GatewayPKI
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    context = pki.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(https_address(gw), context) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_2_clients_are_served_and_older_ones_refused(
    make_gateway: MakeGateway, pki: GatewayPKI
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    context = pki.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(https_address(gw), context) as sock:
        assert sock.version() == "TLSv1.2"
    old = pki.client_context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        tls_connect(https_address(gw), old).close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_returning_client_resumes_its_session(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, version: ssl.TLSVersion
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    context = pki.client_context()
    context.maximum_version = version
    with tls_connect(https_address(gw), context) as first:
        # TLS 1.3 tickets arrive after the handshake: read a response first.
        assert forward_get(first, vendor.url("/1")).startswith(b"HTTP/1.1 200")
        session = first.session
        assert not first.session_reused
    with tls_connect(https_address(gw), context, session=session) as second:
        assert second.session_reused
        assert forward_get(second, vendor.url("/2")).startswith(b"HTTP/1.1 200")
    metrics = _metrics(gw)
    assert 'fixedip_tls_handshakes_total{result="resumed"} 1.0' in metrics


def _metrics(gw: RunningGateway) -> str:
    import urllib.request

    host, port = gw.admin
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


# --- fail closed ----------------------------------------------------------------------------


def test_a_client_with_the_wrong_ca_gets_no_response(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, tmp_path: Path
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    out = curl("-x", https_proxy_url(gw), "--proxy-cacert", str(other), vendor.url("/"))
    assert out.returncode != 0
    assert out.stdout == ""
    assert vendor.seen == []
    assert 'fixedip_tls_handshakes_total{result="failed"} 1.0' in _metrics(gw)


def test_plain_text_sent_to_the_tls_port_is_not_forwarded(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, tmp_path: Path
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    with socket.create_connection(https_address(gw), timeout=5) as sock:
        forward = forward_get(sock, vendor.url("/plain"))
    assert not forward.startswith(b"HTTP/")  # no proxy answer: the handshake failed
    assert vendor.seen == []
    # The plain listener still works, and its record is the only one.
    out = curl("-x", gw.proxy_url(), vendor.url("/ok"))
    assert out.returncode == 0
    records = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert [r["listener"] for r in records] == ["http"]


def test_mutual_tls_requires_a_client_certificate_from_client_ca(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, tmp_path: Path
) -> None:
    client_ca = trustme.CA(organization_name="fixedip test client CA")
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    overrides = tls_overrides(pki)
    overrides["tls"] = pki.settings(client_ca=client_ca_file)
    gw = make_gateway(**overrides)

    with_cert = pki.client_context()
    client_ca.issue_cert("billing@functions").configure_cert(with_cert)
    with tls_connect(https_address(gw), with_cert) as sock:
        assert forward_get(sock, vendor.url("/mtls")).startswith(b"HTTP/1.1 200")

    stranger = pki.client_context()
    trustme.CA().issue_cert("billing@functions").configure_cert(stranger)
    for context in (pki.client_context(), stranger):
        # TLS 1.3: the client may think the handshake done and send its token at once;
        # the gateway refuses the certificate and never reads what follows.
        try:
            with tls_connect(https_address(gw), context) as sock:
                answer = forward_get(sock, vendor.url("/no-cert"))
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert not answer.startswith(b"HTTP/")
    assert [path for *_, path in vendor.seen] == ["/mtls"]
    records = read_flow_log(tmp_path / "flow.jsonl", 1)
    time.sleep(0.3)  # a record for a refused connection would be written by now
    records = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert len(records) == 1


def test_a_silent_connection_is_closed_at_the_handshake_timeout(
    make_gateway: MakeGateway, pki: GatewayPKI
) -> None:
    gw = make_gateway(**tls_overrides(pki, timeouts={"tls_handshake_s": 0.3}))
    with socket.create_connection(https_address(gw), timeout=5) as sock:
        assert sock.recv(1) == b""  # closed by the gateway, long before the 5 s timeout
    assert 'fixedip_tls_handshakes_total{result="timeout"} 1.0' in _metrics(gw)


def test_handshakes_over_the_cap_are_refused_before_any_tls(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer
) -> None:
    gw = make_gateway(
        **tls_overrides(pki, limits={"max_tls_handshakes": 2}, timeouts={"tls_handshake_s": 5})
    )
    silent = [socket.create_connection(https_address(gw), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted and waiting for a ClientHello
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_connect(https_address(gw), pki.client_context()).close()
        assert 'fixedip_tls_handshakes_total{result="refused"} 1.0' in _metrics(gw)
    finally:
        for sock in silent:
            sock.close()
    # Their slots are freed when they go away (as soon as the gateway sees them close).
    deadline = time.monotonic() + 5
    while True:
        try:
            sock = tls_connect(https_address(gw), pki.client_context())
            break
        except (ssl.SSLError, ConnectionError):
            assert time.monotonic() < deadline, "the slots of closed connections were not freed"
            time.sleep(0.05)
    with sock:
        assert forward_get(sock, vendor.url("/after")).startswith(b"HTTP/1.1 200")


def test_the_tls_listener_on_ipv6_loopback(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer
) -> None:
    leaf = pki.ca.issue_cert("::1", "localhost")
    pki.write(leaf.private_key_pem.bytes(), b"".join(p.bytes() for p in leaf.cert_chain_pems))
    gw = make_gateway(**tls_overrides(pki, listen={"https": "[::1]:0"}))
    host, port = https_address(gw)
    assert host == "::1"
    # (curl 7.88 cannot match an IPv6 proxy address against the certificate: Python can)
    with tls_connect((host, port), pki.client_context()) as sock:
        answer = forward_get(sock, vendor.url("/v6"))
    assert answer.startswith(b"HTTP/1.1 200")
    assert f'"peer": "{ALLOWED_EGRESS}"'.encode() in answer


def test_the_tls_listener_is_one_of_the_addresses_the_gateway_never_connects_to(
    make_gateway: MakeGateway, pki: GatewayPKI, tmp_path: Path
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    _, port = https_address(gw)
    out = curl("-i", "-x", gw.proxy_url(), f"http://127.0.0.1:{port}/")
    assert out.stdout.startswith("HTTP/1.1 403")
    assert "proxy_loop_detected" in out.stdout
    record = read_flow_log(tmp_path / "flow.jsonl", 1)[-1]
    assert record["reason"] == "guard_loop"
