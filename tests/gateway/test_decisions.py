"""Auth, policy and guard decisions, as a client sees them: status, Proxy-Status, SOCKS reply."""

from __future__ import annotations

import socket
import struct

import pytest
import requests

from tests.helpers import (
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    read_flow_log,
    token_hash,
    url_of,
)


def raw_request(gw: RunningGateway, request: bytes) -> bytes:
    """Send one raw request to the HTTP listener; return everything until close or 2 s."""
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(request)
        s.settimeout(2)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"Content-Length: " in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except TimeoutError:
            pass
    return out


def proxied_get(
    gw: RunningGateway, url: str, user: str = "billing", password: str | None = None
) -> requests.Response:
    proxy = gw.proxy_url(user, password)
    return requests.get(url, proxies={"http": proxy}, timeout=10)


def socks_connect(
    gw: RunningGateway,
    host: str | bytes,
    port: int,
    user: str = "billing",
    password: str | None = None,
) -> int:
    """SOCKS5 handshake and CONNECT; returns the reply code (or -1 if auth was refused)."""
    password = TOKENS[user] if password is None else password
    with socket.create_connection(gw.socks, timeout=5) as s:
        s.sendall(b"\x05\x01\x02")
        assert s.recv(2) == b"\x05\x02"
        u, p = user.encode(), password.encode()
        s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        status = s.recv(2)
        if status != b"\x01\x00":
            return -1
        if isinstance(host, bytes):  # raw IPv4/IPv6 bytes
            atyp = b"\x01" if len(host) == 4 else b"\x04"
            addr = atyp + host
        else:
            addr = b"\x03" + bytes([len(host)]) + host.encode()
        s.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
        reply = s.recv(262)
        return reply[1]


# --- authentication -----------------------------------------------------------------


def test_missing_credentials_get_407_with_proxy_authenticate(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    r = requests.get(vendor.url(), proxies={"http": url_of(gateway.http, "")}, timeout=10)
    assert r.status_code == 407
    assert r.headers["Proxy-Authenticate"].startswith("Basic")
    assert "auth_required" in r.headers["Proxy-Status"]
    assert vendor.seen == []


def test_wrong_token_gets_407(gateway: RunningGateway, vendor: VendorServer) -> None:
    r = proxied_get(gateway, vendor.url(), password="not-the-token")
    assert r.status_code == 407
    assert "auth_invalid" in r.headers["Proxy-Status"]
    assert vendor.seen == []


def test_unknown_client_gets_407(gateway: RunningGateway, vendor: VendorServer) -> None:
    r = proxied_get(gateway, vendor.url(), user="billing", password=TOKENS["pinned"])
    assert r.status_code == 407


def test_client_outside_its_source_cidrs_gets_403(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["127.0.0.1:*"],
                "source_cidrs": ["198.18.0.0/15"],
            }
        ]
    )
    r = proxied_get(gw, vendor.url())
    assert r.status_code == 403
    assert "source_not_allowed" in r.headers["Proxy-Status"]


def test_rotated_token_list_accepts_either_token(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": [token_hash("other"), token_hash("billing")],
                "allow": ["127.0.0.1:*"],
            }
        ]
    )
    assert proxied_get(gw, vendor.url(), password=TOKENS["billing"]).status_code == 200
    assert proxied_get(gw, vendor.url(), password=TOKENS["other"]).status_code == 200


def test_socks5_wrong_password_is_refused(gateway: RunningGateway) -> None:
    assert socks_connect(gateway, "127.0.0.1", 443, password="wrong") == -1


def test_socks5_without_offering_user_password_is_refused(gateway: RunningGateway) -> None:
    with socket.create_connection(gateway.socks, timeout=5) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\xff"
        assert s.recv(10) == b""


def test_flow_log_never_contains_the_token(
    gateway: RunningGateway, vendor: VendorServer, tmp_path
) -> None:
    proxied_get(gateway, vendor.url())
    proxied_get(gateway, vendor.url(), password="wrong-" + TOKENS["billing"])
    records = read_flow_log(tmp_path / "flow.jsonl", 2)
    assert len(records) == 2
    text = (tmp_path / "flow.jsonl").read_text()
    assert TOKENS["billing"] not in text
    assert basic("billing", TOKENS["billing"]).split()[1] not in text
    assert records[0]["client"] == "billing" and records[0]["egress"] == "127.0.0.10"
    assert records[1]["reason"] == "auth_invalid" and records[1]["status"] == 407


# --- destination policy -------------------------------------------------------------


def test_destination_outside_the_allow_rules_gets_403(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:1-1000"]}
        ]
    )
    r = proxied_get(gw, vendor.url())
    assert r.status_code == 403
    assert "destination_not_allowed" in r.headers["Proxy-Status"]
    assert vendor.seen == []


def test_deny_rule_wins_over_allow(gateway: RunningGateway) -> None:
    r = proxied_get(gateway, "http://127.0.0.1:9/")
    assert r.status_code == 403
    assert "destination_denied" in r.headers["Proxy-Status"]


def test_connect_to_a_port_outside_connect_ports_gets_403(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    out = raw_request(
        gateway,
        f"CONNECT 127.0.0.1:{vendor.port} HTTP/1.1\r\n"
        f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode(),
    )
    assert out.startswith(b"HTTP/1.1 403 ")
    assert b"port_not_allowed" in out


def test_socks5_to_a_disallowed_destination_replies_not_allowed(make_gateway) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["api.vendor.example:443"],
            }
        ]
    )
    assert socks_connect(gw, "other.example", 443) == 0x02


def test_glob_rule_matches_subdomains_via_dns(make_gateway, vendor: VendorServer, dns) -> None:
    dns.table["api.vendor.test"] = ["127.0.0.1"]
    dns.table["vendor.test"] = ["127.0.0.1"]
    gw = make_gateway(
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["*.vendor.test:*"]}
        ],
    )
    assert proxied_get(gw, f"http://api.vendor.test:{vendor.port}/").status_code == 200
    apex = proxied_get(gw, f"http://vendor.test:{vendor.port}/")
    assert apex.status_code == 403  # *.example never matches the apex


# --- SSRF guard (default deny list; this suite runs in a loopback-only namespace) ----


@pytest.fixture
def guarded(make_gateway) -> RunningGateway:
    """Default guard (no exceptions), a client allowed to go anywhere."""
    return make_gateway(
        guard={"allow_cidrs": []},
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["*:*"],
                "connect_ports": [443, 80, 8080],
            }
        ],
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_default_guard_refuses_internal_destinations(guarded: RunningGateway, url: str) -> None:
    r = proxied_get(guarded, url)
    assert r.status_code == 403
    assert "destination_ip_prohibited" in r.headers["Proxy-Status"]


@pytest.mark.parametrize(
    "target", ["127.0.0.1:443", "169.254.169.254:80", "localhost:443", "[fd00:ec2::254]:80"]
)
def test_default_guard_refuses_connect_to_internal_destinations(
    guarded: RunningGateway, target: str
) -> None:
    out = raw_request(
        guarded,
        f"CONNECT {target} HTTP/1.1\r\n"
        f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode(),
    )
    assert out.startswith(b"HTTP/1.1 403 ")
    assert b"destination_ip_prohibited" in out


@pytest.mark.parametrize(
    "host",
    [bytes([169, 254, 169, 254]), bytes([127, 0, 0, 1]), "localhost", "metadata.google.internal"],
)
def test_default_guard_refuses_socks5_to_internal_destinations(
    guarded: RunningGateway, dns, host
) -> None:
    assert socks_connect(guarded, host, 80) in (
        0x02,
        0x04,
    )  # not allowed, or (unresolvable) host unreachable


def test_guard_refuses_the_gateways_own_listener_even_when_loopback_is_allowed(
    gateway: RunningGateway,
) -> None:
    host, port = gateway.http
    r = proxied_get(gateway, f"http://{host}:{port}/")
    assert r.status_code == 403
    assert "proxy_loop_detected" in r.headers["Proxy-Status"]


def test_dns_answer_pointing_inside_is_refused(make_gateway, dns) -> None:
    dns.table["evil.test"] = ["203.0.113.5", "10.1.2.3"]
    gw = make_gateway(
        guard={"allow_cidrs": []},
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=[{"name": "billing", "token_hash": token_hash("billing"), "allow": ["*:*"]}],
    )
    r = proxied_get(gw, "http://evil.test/")
    assert r.status_code == 403
    assert "destination_ip_prohibited" in r.headers["Proxy-Status"]


def test_names_are_resolved_through_the_configured_dns_server(
    make_gateway, vendor: VendorServer, dns
) -> None:
    gw = make_gateway(dns={"servers": [f"127.0.0.1:{dns.port}"]})
    r = proxied_get(gw, f"http://vendor.test:{vendor.port}/dns")
    assert r.status_code == 200
    assert r.json()["peer"] == "127.0.0.10"
    assert ("vendor.test", "A") in dns.queries
    assert ("vendor.test", "AAAA") not in dns.queries  # IPv4-only egress never asks for AAAA
