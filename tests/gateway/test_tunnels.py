"""CONNECT and SOCKS5 tunnels: any TCP, TLS untouched, early data, half-close."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
import requests
import trustme

from tests.helpers import ALLOWED_EGRESS, TOKENS, EchoServer, RunningGateway, basic, token_hash
from tests.helpers import _VendorHandler as VendorHandler


def tunnel_client(gw: RunningGateway, port: int, early: bytes = b"") -> socket.socket:
    s = socket.create_connection(gw.http, timeout=5)
    s.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        + early
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return s


def recv_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def tunnel_gateway(make_gateway, echo: EchoServer) -> RunningGateway:
    return make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["127.0.0.1:*", "localhost:*"],
                "connect_ports": [echo.port, 443],
            }
        ]
    )


def test_connect_tunnel_carries_raw_tcp_from_the_egress_ip(
    tunnel_gateway: RunningGateway, echo: EchoServer
) -> None:
    with tunnel_client(tunnel_gateway, echo.port) as s:
        assert recv_until(s, b"\n") == f"peer {ALLOWED_EGRESS}\n".encode()
        s.sendall(b"ping" * 10000)
        assert len(recv_until(s, b"ping" * 10000)) == 40000


def test_bytes_sent_right_after_connect_reach_the_destination(
    tunnel_gateway: RunningGateway, echo: EchoServer
) -> None:
    with tunnel_client(tunnel_gateway, echo.port, early=b"early-bird") as s:
        assert b"early-bird" in recv_until(s, b"early-bird")


def test_half_close_lets_the_answer_come_back(
    tunnel_gateway: RunningGateway, echo: EchoServer
) -> None:
    with tunnel_client(tunnel_gateway, echo.port) as s:
        recv_until(s, b"\n")
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert rest == b"last words"


def test_socks5_tunnel_over_ipv4_address(tunnel_gateway: RunningGateway, echo: EchoServer) -> None:
    with socket.create_connection(tunnel_gateway.socks, timeout=5) as s:
        u, p = b"billing", TOKENS["billing"].encode()
        # greeting, credentials and request in one write: pipelining clients do this
        s.sendall(
            b"\x05\x01\x02"
            + bytes([1, len(u)])
            + u
            + bytes([len(p)])
            + p
            + b"\x05\x01\x00\x01"
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!H", echo.port)
        )
        assert s.recv(2) == b"\x05\x02"
        assert s.recv(2) == b"\x01\x00"
        reply = s.recv(10)
        assert reply[:2] == b"\x05\x00"
        assert socket.inet_ntoa(reply[4:8]) == ALLOWED_EGRESS  # BND.ADDR is the egress IP
        assert recv_until(s, b"\n") == f"peer {ALLOWED_EGRESS}\n".encode()


def test_socks5_bind_command_is_not_supported(tunnel_gateway: RunningGateway) -> None:
    with socket.create_connection(tunnel_gateway.socks, timeout=5) as s:
        u, p = b"billing", TOKENS["billing"].encode()
        s.sendall(b"\x05\x01\x02" + bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        assert s.recv(4) == b"\x05\x02\x01\x00"
        s.sendall(b"\x05\x02\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 80))
        assert s.recv(10)[:2] == b"\x05\x07"


@pytest.fixture
def tls_vendor(tmp_path) -> Iterator[tuple[int, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), VendorHandler)
    server.allowed = {ALLOWED_EGRESS}  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1], str(ca_file)
    server.shutdown()
    server.server_close()


def test_https_through_connect_keeps_tls_end_to_end(make_gateway, tls_vendor) -> None:
    port, ca_file = tls_vendor
    gw = make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["localhost:*"],
                "connect_ports": [port],
            }
        ]
    )
    r = requests.get(
        f"https://localhost:{port}/secure",
        proxies={"https": gw.proxy_url()},
        verify=ca_file,
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_socks5_ipv6_destination_leaves_from_an_ipv6_egress(make_gateway) -> None:
    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer() -> None:
        conn, addr = server.accept()
        with conn:
            conn.sendall(f"peer {addr[0]}\n".encode())

    threading.Thread(target=answer, daemon=True).start()
    gw = make_gateway(
        egress={"ips": ["::1"]},
        guard={"allow_cidrs": ["::1/128"]},
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["[::1]:*"],
                "connect_ports": [port],
            }
        ],
    )
    try:
        with socket.create_connection(gw.socks, timeout=5) as s:
            u, p = b"billing", TOKENS["billing"].encode()
            s.sendall(b"\x05\x01\x02" + bytes([1, len(u)]) + u + bytes([len(p)]) + p)
            assert s.recv(4) == b"\x05\x02\x01\x00"
            s.sendall(
                b"\x05\x01\x00\x04"
                + socket.inet_pton(socket.AF_INET6, "::1")
                + struct.pack("!H", port)
            )
            reply = s.recv(22)
            assert reply[:4] == b"\x05\x00\x00\x04"
            assert recv_until(s, b"\n") == b"peer ::1\n"
    finally:
        server.close()


def test_socks5_ipv6_destination_with_ipv4_only_egress_is_unreachable(
    tunnel_gateway: RunningGateway,
) -> None:
    with socket.create_connection(tunnel_gateway.socks, timeout=5) as s:
        u, p = b"billing", TOKENS["billing"].encode()
        s.sendall(b"\x05\x01\x02" + bytes([1, len(u)]) + u + bytes([len(p)]) + p)
        assert s.recv(4) == b"\x05\x02\x01\x00"
        # 2606:4700::1111 is public; with no IPv6 egress address it must never be tried
        s.sendall(
            b"\x05\x01\x00\x04"
            + socket.inet_pton(socket.AF_INET6, "2606:4700::1111")
            + struct.pack("!H", 443)
        )
        assert s.recv(22)[:2] == b"\x05\x03"
