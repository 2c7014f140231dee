"""Bulk tunnels and long response bodies spliced in the kernel: every byte arrives,
counts and half-closes are kept, timeouts and failures still end them, nothing is leaked,
and TLS tunnels never switch."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from fixedip.gateway import splice
from tests.gateway.test_tunnels import tunnel_client
from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    EchoServer,
    RunningGateway,
    VendorServer,
    basic,
    big_body_sha256,
    read_flow_log,
    token_hash,
    url_of,
)
from tests.tlskit import GatewayPKI, https_address, tls_connect, tls_overrides

MakeGateway = Callable[..., RunningGateway]
BULK = 8 * splice.SPLICE_AFTER  # well past the switch, in both directions


def payload(n: int) -> bytes:
    return hashlib.shake_256(b"fixedip splice").digest(n)


def counter(gw: RunningGateway, name: str) -> float:
    text = requests.get(url_of(gw.admin, "/metrics"), timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} is missing from /metrics"
    return float(found.group(1))


def spliced(gw: RunningGateway) -> float:
    return counter(gw, "fixedip_tunnels_spliced_total")


def billing(*ports: int) -> dict[str, object]:
    return {
        "name": "billing",
        "token_hash": token_hash("billing"),
        "allow": ["127.0.0.1:*"],
        "connect_ports": list(ports),
    }


@pytest.fixture
def bulk_gateway(make_gateway: MakeGateway, echo: EchoServer) -> RunningGateway:
    return make_gateway(clients=[billing(echo.port)])


def echo_through(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` (from a thread) while reading its echo; then half-close and read to
    EOF. Returns everything read after the echo server's greeting."""
    greeting = f"peer {ALLOWED_EGRESS}\n".encode()
    sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    sock.settimeout(20)
    while chunk := sock.recv(1 << 20):
        got += chunk
    sender.join(20)
    assert got.startswith(greeting)
    return bytes(got[len(greeting) :])


def test_a_bulk_connect_tunnel_is_spliced_and_every_byte_arrives_both_ways_in_order(
    bulk_gateway: RunningGateway, echo: EchoServer
) -> None:
    data = payload(BULK)
    with tunnel_client(bulk_gateway, echo.port) as sock:
        echoed = echo_through(sock, data)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
    assert spliced(bulk_gateway) == 1


def test_the_flow_record_counts_every_spliced_byte(
    bulk_gateway: RunningGateway, echo: EchoServer, tmp_path
) -> None:
    data = payload(BULK + 12345)
    with tunnel_client(bulk_gateway, echo.port) as sock:
        echoed = echo_through(sock, data)
    assert len(echoed) == len(data)
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    greeting = len(f"peer {ALLOWED_EGRESS}\n")
    assert record["kind"] == "connect" and record["status"] == 200
    assert record["bytes_up"] == len(data)
    assert record["bytes_down"] == len(data) + greeting


def test_a_small_tunnel_stays_on_the_transports(
    bulk_gateway: RunningGateway, echo: EchoServer
) -> None:
    data = payload(splice.SPLICE_AFTER // 4)
    with tunnel_client(bulk_gateway, echo.port) as sock:
        assert echo_through(sock, data) == data
    assert spliced(bulk_gateway) == 0


def test_a_socks5_tunnel_is_spliced_too(bulk_gateway: RunningGateway, echo: EchoServer) -> None:
    data = payload(BULK)
    with socket.create_connection(bulk_gateway.socks, timeout=5) as sock:
        user, password = b"billing", TOKENS["billing"].encode()
        sock.sendall(b"\x05\x01\x02" + bytes([1, len(user)]) + user + bytes([len(password)]))
        sock.sendall(password + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1"))
        sock.sendall(echo.port.to_bytes(2, "big"))
        assert sock.recv(2) == b"\x05\x02"
        assert sock.recv(2) == b"\x01\x00"
        assert sock.recv(10)[:2] == b"\x05\x00"
        echoed = echo_through(sock, data)
    assert echoed == data
    assert spliced(bulk_gateway) == 1


class BulkSender:
    """Sends `size` bytes to whoever connects, then, per `then`: "close" (a clean FIN),
    "reset" (an RST mid-stream, after half of it) or "hold" (stays silent and open).
    With `http_length`, it is an HTTP origin: it reads a request head first and answers
    with that Content-Length before the bytes (a body cut short, if `size` is less)."""

    def __init__(self, size: int, then: str, http_length: int | None = None) -> None:
        self.size, self.then, self.http_length = size, then, http_length
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            data = payload(self.size)
            try:
                if self.http_length is not None:
                    head = b""
                    while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                        head += chunk
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.http_length
                    )
                if self.then == "reset":
                    conn.sendall(data[: self.size // 2])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(data)
                if self.then == "hold":
                    self.done.wait(30)
            except OSError:
                pass

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def sender() -> Iterator[Callable[..., BulkSender]]:
    made: list[BulkSender] = []

    def make(size: int, then: str, http_length: int | None = None) -> BulkSender:
        made.append(BulkSender(size, then, http_length))
        return made[-1]

    yield make
    for server in made:
        server.close()


def read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the tunnel ends, and how it ended: "eof" or "reset"."""
    got = bytearray()
    sock.settimeout(20)
    try:
        while chunk := sock.recv(1 << 20):
            got += chunk
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_download_ends_with_the_destinations_close_and_leaves_no_descriptor_behind(
    make_gateway: MakeGateway, sender: Callable[..., BulkSender]
) -> None:
    server = sender(BULK, "close")
    gw = make_gateway(clients=[billing(server.port)])
    before = open_fds()
    with tunnel_client(gw, server.port) as sock:
        got, ended = read_all(sock)
    assert ended == "eof"
    assert got == payload(BULK)
    assert spliced(gw) == 1
    deadline = time.monotonic() + 5
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= before
    assert splice.active() == 0


def test_a_destination_reset_mid_transfer_cuts_the_client_off(
    make_gateway: MakeGateway, sender: Callable[..., BulkSender], tmp_path
) -> None:
    server = sender(4 * BULK, "reset")
    gw = make_gateway(clients=[billing(server.port)])
    with tunnel_client(gw, server.port) as sock:
        got, _ = read_all(sock)
    assert len(got) < 4 * BULK  # cut off, never a clean end of the whole stream
    assert got == payload(4 * BULK)[: len(got)]
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert record["bytes_down"] >= len(got)
    assert splice.active() == 0


def test_a_spliced_tunnel_still_times_out_when_idle(
    make_gateway: MakeGateway, sender: Callable[..., BulkSender]
) -> None:
    server = sender(BULK, "hold")
    gw = make_gateway(clients=[billing(server.port)], timeouts={"tunnel_idle_s": 1})
    with tunnel_client(gw, server.port) as sock:
        got = bytearray()
        sock.settimeout(20)
        while len(got) < BULK:
            chunk = sock.recv(1 << 20)
            assert chunk, "the tunnel ended before the data did"
            got += chunk
        assert spliced(gw) == 1
        # Silent both ways now: the gateway's idle clock must end the tunnel.
        assert read_all(sock)[0] == b""
    assert bytes(got) == payload(BULK)


def test_over_the_limit_a_tunnel_stays_on_the_transports(
    bulk_gateway: RunningGateway, echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(splice, "max_spliced", lambda: 0)
    data = payload(BULK)
    with tunnel_client(bulk_gateway, echo.port) as sock:
        assert echo_through(sock, data) == data
    assert spliced(bulk_gateway) == 0


def test_a_tunnel_through_the_tls_listener_is_never_spliced(
    make_gateway: MakeGateway, pki: GatewayPKI, echo: EchoServer
) -> None:
    """Its client side is TLS: the bytes must pass through Python to be decrypted."""
    gw = make_gateway(clients=[billing(echo.port)], **tls_overrides(pki))
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    data = payload(BULK)
    greeting = f"peer {ALLOWED_EGRESS}\n".encode()
    with tls_connect(https_address(gw), context) as sock:
        sock.sendall(
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: 127.0.0.1:{echo.port}\r\n"
            f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        echoed = bytearray()
        step = 256 * 1024  # one piece at a time: a TLS socket is not read and written at once
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])
            while len(echoed) < len(greeting) + min(start + step, len(data)):
                chunk = sock.recv(1 << 20)
                assert chunk, "the tunnel ended early"
                echoed += chunk
    assert bytes(echoed) == greeting + data
    assert spliced(gw) == 0


# --- long response bodies on the plain forward path -------------------------------------


def test_a_long_body_is_spliced_and_the_client_connection_stays_usable(
    gateway: RunningGateway, vendor: VendorServer, tmp_path
) -> None:
    n = 12 * splice.SPLICE_AFTER + 777
    with requests.Session() as session:
        session.proxies = {"http": gateway.proxy_url()}
        big = session.get(vendor.url(f"/big?n={n}&mode=length"), timeout=20)
        after = session.get(vendor.url("/after"), timeout=10)
    assert big.status_code == 200 and len(big.content) == n
    assert hashlib.sha256(big.content).hexdigest() == big_body_sha256(n)
    assert after.status_code == 200 and after.json()["path"] == "/after"
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1
    ports = [port for _, port, _, _ in vendor.seen]
    assert len(ports) == 2 and ports[0] != ports[1]  # the spliced upstream was not reused
    records = read_flow_log(tmp_path / "flow.jsonl", 2)
    assert records[0]["bytes_down"] == n and records[0]["reason"] == "allowed"
    assert len({record["peer"] for record in records}) == 1  # one client connection


def test_short_and_chunked_bodies_stay_in_python(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    proxies = {"http": gateway.proxy_url()}
    small = splice.SPLICE_AFTER // 2
    chunked = 4 * splice.SPLICE_AFTER
    r1 = requests.get(vendor.url(f"/big?n={small}&mode=length"), proxies=proxies, timeout=20)
    r2 = requests.get(vendor.url(f"/big?n={chunked}&mode=chunked"), proxies=proxies, timeout=20)
    assert hashlib.sha256(r1.content).hexdigest() == big_body_sha256(small)
    assert hashlib.sha256(r2.content).hexdigest() == big_body_sha256(chunked)
    assert counter(gateway, "fixedip_bodies_spliced_total") == 0


def test_a_spliced_body_cut_short_by_the_upstream_cuts_the_client_off(
    make_gateway: MakeGateway, sender: Callable[..., BulkSender], tmp_path
) -> None:
    origin = sender(3 * splice.SPLICE_AFTER, "close", http_length=8 * splice.SPLICE_AFTER)
    gw = make_gateway()
    with socket.create_connection(gw.http, timeout=10) as sock:
        sock.sendall(
            f"GET http://127.0.0.1:{origin.port}/x HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{origin.port}\r\n"
            f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        )
        got, _ = read_all(sock)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == payload(3 * splice.SPLICE_AFTER)  # all that came, then the cut
    assert counter(gw, "fixedip_bodies_spliced_total") == 1
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert record["reason"] == "upstream_closed"
    assert record["bytes_down"] == 3 * splice.SPLICE_AFTER
