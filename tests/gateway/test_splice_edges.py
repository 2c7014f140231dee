"""Splicing's edges, by real sockets: half-closes after the switch, pipelined requests
around a spliced body, slow clients, the cap on spliced transfers, shutdown and resets
mid-transfer. Each case would lose, reorder or leak bytes if the hand-over were wrong."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fixedip.gateway import splice
from tests.gateway.test_splice import billing, counter, payload, read_all, spliced, tunnel_client
from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    EchoServer,
    RunningGateway,
    VendorServer,
    basic,
    big_body_sha256,
    gateway_config,
    read_flow_log,
    wait_for,
)

MakeGateway = Callable[..., RunningGateway]
MIB = splice.SPLICE_AFTER  # 1 MiB: a tunnel that carried this much has switched


class Scripted:
    """A destination that runs `script(conn)` for each of up to `count` connections, each
    in a thread; what the scripts return lands in `results`. `release` lets scripts that
    hold their connection open go on."""

    def __init__(self, script: Callable[[socket.socket, Scripted], Any], count: int = 1) -> None:
        self.script, self.count = script, count
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()
        self.results: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        for _ in range(self.count):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                self.results.append(self.script(conn, self))
            except OSError as exc:
                self.results.append(exc)

    def wait(self, n: int = 1, timeout: float = 20) -> list[Any]:
        """The first `n` results, waiting for them (bounded)."""
        deadline = time.monotonic() + timeout
        while len(self.results) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.results) >= n, f"only {len(self.results)} of {n} scripts ended"
        return self.results[:n]

    def close(self) -> None:
        self.release.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept(); close() won't
        self.sock.close()
        self.acceptor.join(10)
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(script: Callable[[socket.socket, Scripted], Any], count: int = 1) -> Scripted:
        made.append(Scripted(script, count))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture(
    params=[pytest.param(0, id="transports"), pytest.param(splice.MAX_SPLICED, id="spliced")]
)
def cap(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The same test without splicing (a cap of 0) and with it."""
    monkeypatch.setattr(splice, "max_spliced", lambda: request.param)
    return int(request.param)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(min(1 << 20, n - len(got)))
        assert chunk, f"the stream ended after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def read_to_eof(conn: socket.socket) -> bytes:
    got = bytearray()
    while chunk := conn.recv(1 << 20):
        got += chunk
    return bytes(got)


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), the way a crashed client goes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fd_kinds() -> dict[str, int]:
    """Open descriptors of this process by kind: pipes, epoll sets, sockets."""
    kinds = {"pipe": 0, "eventpoll": 0, "socket": 0}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        for kind in kinds:
            if kind in target:
                kinds[kind] += 1
    return kinds


def no_more_than(before: dict[str, int], timeout: float = 5) -> dict[str, int]:
    wait_for(lambda: all(fd_kinds()[k] <= before[k] for k in before), timeout)
    return fd_kinds()


# --- HTTP on a raw client socket ----------------------------------------------------


def get(url_path: str, port: int, method: str = "GET") -> bytes:
    return (
        f"{method} http://127.0.0.1:{port}{url_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n"
    ).encode()


class Reader:
    """Responses read one after another off one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection ended inside a response head: {bytes(self.buf)!r}"
            self.buf += chunk
        raw, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        return int(status_line.split()[1]), headers

    def body(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(min(1 << 20, n - len(self.buf)))
            assert chunk, f"the connection ended after {len(self.buf)} of {n} body bytes"
            self.buf += chunk
        out, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return out

    def rest(self) -> tuple[bytes, str]:
        """Everything after what was read so far, until the connection ends, and how it
        ended (see read_all)."""
        more, ended = read_all(self.sock)
        out, self.buf = bytes(self.buf) + more, bytearray()
        return out, ended

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        n = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        return status, headers, self.body(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- tunnels: half-closes after the switch ------------------------------------------


def socks_client(gw: RunningGateway, port: int) -> socket.socket:
    """A SOCKS5 tunnel to 127.0.0.1:`port`, authenticated as billing."""
    sock = socket.create_connection(gw.socks, timeout=10)
    user, password = b"billing", TOKENS["billing"].encode()
    sock.sendall(b"\x05\x01\x02" + bytes([1, len(user)]) + user + bytes([len(password)]))
    sock.sendall(password + b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1"))
    sock.sendall(port.to_bytes(2, "big"))
    assert recv_exactly(sock, 2) == b"\x05\x02"
    assert recv_exactly(sock, 2) == b"\x01\x00"
    assert recv_exactly(sock, 10)[:2] == b"\x05\x00"
    return sock


@pytest.mark.parametrize("client", [tunnel_client, socks_client], ids=["connect", "socks5"])
def test_a_client_half_close_after_the_switch_still_delivers_the_whole_download(
    client: Callable[[RunningGateway, int], socket.socket],
    make_gateway: MakeGateway,
    scripted: Callable[..., Scripted],
) -> None:
    """The destination answers only after it hears the client's FIN, and answers a lot:
    the spliced tunnel must pass the FIN on and keep the other way flowing to its end."""
    later = payload(9 * MIB)[MIB:]

    def script(conn: socket.socket, _: Scripted) -> int:
        conn.sendall(payload(2 * MIB))
        heard = len(read_to_eof(conn))  # the client's half-close must reach us
        conn.sendall(later)
        return heard

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    with client(gw, server.port) as sock:
        sock.settimeout(20)
        assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
        assert spliced(gw) == 1
        sock.shutdown(socket.SHUT_WR)
        got, ended = read_all(sock)
    assert server.wait() == [0]
    assert ended == "eof"
    assert len(got) == len(later) and sha(got) == sha(later)
    assert wait_for(lambda: splice.active() == 0)


@pytest.mark.parametrize("client", [tunnel_client, socks_client], ids=["connect", "socks5"])
def test_a_destination_half_close_after_the_switch_still_takes_the_whole_upload(
    client: Callable[[RunningGateway, int], socket.socket],
    make_gateway: MakeGateway,
    scripted: Callable[..., Scripted],
) -> None:
    """The destination half-closes first, then reads to the end: every byte the client
    sends after the EOF reached it must still arrive, and the tunnel then ends."""
    upload = payload(8 * MIB + 4321)

    def script(conn: socket.socket, _: Scripted) -> tuple[int, str]:
        conn.sendall(payload(2 * MIB))
        assert conn.recv(1) == b"g"
        conn.shutdown(socket.SHUT_WR)
        got = read_to_eof(conn)
        return len(got), sha(got)

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    with client(gw, server.port) as sock:
        sock.settimeout(20)
        assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
        assert spliced(gw) == 1
        sock.sendall(b"g")
        assert sock.recv(1) == b""  # the destination's half-close, passed on
        sock.sendall(upload)
        sock.shutdown(socket.SHUT_WR)
        (result,) = server.wait()
    assert result == (len(upload), sha(upload))
    assert wait_for(lambda: splice.active() == 0)


# --- spliced bodies and the requests around them ------------------------------------


def test_a_request_pipelined_behind_a_spliced_body_is_answered_after_it(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 6 * MIB + 99
    with socket.create_connection(gateway.http, timeout=20) as sock:
        sock.sendall(get(f"/big?n={n}&mode=length", vendor.port) + get("/after", vendor.port))
        reader = Reader(sock)
        status, headers, body = reader.response()
        assert status == 200 and headers["content-length"] == str(n)
        assert sha(body) == big_body_sha256(n)
        status, _, after = reader.response()
        assert status == 200 and b'"path": "/after"' in after
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1


def test_a_request_sent_while_a_body_is_being_spliced_waits_its_turn(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 8 * MIB
    with socket.create_connection(gateway.http, timeout=20) as sock:
        sock.sendall(get(f"/big?n={n}&mode=length", vendor.port))
        reader = Reader(sock)
        status, _ = reader.head()
        first = reader.body(2 * MIB)
        assert status == 200
        assert wait_for(lambda: counter(gateway, "fixedip_bodies_spliced_total") == 1)
        sock.sendall(get("/during", vendor.port))  # the splicer is moving the body now
        rest = reader.body(n - 2 * MIB)
        assert sha(first + rest) == big_body_sha256(n)
        status, _, after = reader.response()
        assert status == 200 and b'"path": "/during"' in after


def test_a_keep_alive_connection_carries_head_small_and_spliced_bodies_in_turn(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    """Two spliced bodies, a HEAD and small GETs on one client connection, pipelined."""
    n1, n2 = 3 * MIB + 1, 5 * MIB + 7
    with socket.create_connection(gateway.http, timeout=20) as sock:
        sock.sendall(
            get(f"/big?n={n1}&mode=length", vendor.port)
            + get("/head", vendor.port, method="HEAD")
            + get("/small", vendor.port)
            + get(f"/big?n={n2}&mode=length", vendor.port)
            + get("/last", vendor.port)
        )
        reader = Reader(sock)
        _, _, big1 = reader.response()
        status, headers, _ = reader.response("HEAD")
        assert status == 200 and int(headers["content-length"]) > 0
        _, _, small = reader.response()
        _, _, big2 = reader.response()
        _, _, last = reader.response()
    assert sha(big1) == big_body_sha256(n1) and sha(big2) == big_body_sha256(n2)
    assert b'"path": "/small"' in small and b'"path": "/last"' in last
    assert counter(gateway, "fixedip_bodies_spliced_total") == 2
    methods = [(method, path.split("?")[0]) for _, _, method, path in vendor.seen]
    assert methods == [
        ("GET", "/big"),
        ("HEAD", "/head"),
        ("GET", "/small"),
        ("GET", "/big"),
        ("GET", "/last"),
    ]


def test_bytes_an_origin_sends_past_a_spliced_body_never_reach_the_client(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted], vendor: VendorServer
) -> None:
    """An origin that answers one request twice: the second answer sits behind the spliced
    body in the upstream socket, and must not become the answer to the next request."""
    n = 3 * MIB

    def script(conn: socket.socket, server: Scripted) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + payload(n) + smuggled)
        server.release.wait(20)

    origin = scripted(script)
    gw = make_gateway()
    with socket.create_connection(gw.http, timeout=20) as sock:
        sock.sendall(get("/x", origin.port))
        reader = Reader(sock)
        status, _, body = reader.response()
        assert status == 200 and body == payload(n)
        sock.sendall(get("/next", vendor.port))
        status, _, nxt = reader.response()
    assert status == 200 and b'"path": "/next"' in nxt
    assert counter(gw, "fixedip_bodies_spliced_total") == 1


# --- slow clients -------------------------------------------------------------------


def slow_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    return sock


def read_slowly(sock: socket.socket, n: int) -> bytes:
    """`n` bytes in small reads with pauses: the gateway's writes to us keep blocking."""
    got = bytearray()
    for i in range(200_000):  # bounded: far more reads than 8 MiB in 4 KiB pieces needs
        if len(got) >= n:
            break
        chunk = sock.recv(min(4096, n - len(got)))
        assert chunk, f"the stream ended after {len(got)} of {n} bytes"
        got += chunk
        if i % 64 == 0:
            time.sleep(0.002)
    return bytes(got)


def test_a_slow_client_gets_a_spliced_body_whole(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 6 * MIB + 3
    with slow_socket() as sock:
        sock.connect(gateway.http)
        sock.sendall(get(f"/big?n={n}&mode=length", vendor.port) + get("/after", vendor.port))
        reader = Reader(sock)
        status, _ = reader.head()
        body = bytes(reader.buf) + read_slowly(sock, n - len(reader.buf))
        reader.buf = bytearray()
        assert status == 200 and sha(body) == big_body_sha256(n)
        _, _, after = reader.response()
    assert b'"path": "/after"' in after
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1


def test_a_slow_client_gets_a_spliced_tunnel_download_whole(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    data = payload(6 * MIB + 5)
    server = scripted(lambda conn, _: conn.sendall(data))
    gw = make_gateway(clients=[billing(server.port)])
    with slow_socket() as raw:
        raw.connect(gw.http)
        raw.sendall(
            f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        )
        reader = Reader(raw)
        status, _ = reader.head()
        assert status == 200
        got = bytes(reader.buf) + read_slowly(raw, len(data) - len(reader.buf))
        assert raw.recv(1) == b""
    assert sha(got) == sha(data)
    assert spliced(gw) == 1


# --- the cap ------------------------------------------------------------------------


def test_tunnels_beyond_the_cap_stay_on_the_transports_and_all_complete(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(splice, "max_spliced", lambda: 2)
    tunnels = 4
    first, second = payload(2 * MIB), payload(5 * MIB)[2 * MIB :]

    def script(conn: socket.socket, _: Scripted) -> None:
        conn.sendall(first)
        assert conn.recv(1) == b"g"
        conn.sendall(second)

    server = scripted(script, count=tunnels)
    gw = make_gateway(clients=[billing(server.port)])
    socks = [tunnel_client(gw, server.port) for _ in range(tunnels)]
    try:
        for sock in socks:
            sock.settimeout(20)
            assert recv_exactly(sock, len(first)) == first
        # every tunnel is past the switch and idle: exactly the cap's worth are spliced
        assert wait_for(lambda: splice.active() == 2)
        assert spliced(gw) == 2
        peak = [splice.active()]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak.append(splice.active())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for sock in socks:
            sock.sendall(b"g")
        results = [read_all(sock) for sock in socks]
        done.set()
        watcher.join(5)
    finally:
        for sock in socks:
            sock.close()
    assert all(ended == "eof" and got == second for got, ended in results)
    assert max(peak) <= 2
    assert wait_for(lambda: splice.active() == 0)


# --- shutdown and resets mid-transfer -----------------------------------------------


def hold_after(size: int) -> Callable[[socket.socket, Scripted], str]:
    """A destination that sends `size` bytes, then stays open until released."""

    def script(conn: socket.socket, server: Scripted) -> str:
        conn.sendall(payload(size))
        server.release.wait(20)
        return "released"

    return script


def test_draining_the_gateway_ends_a_spliced_tunnel_and_frees_its_descriptors(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    server = scripted(hold_after(2 * MIB))
    gw = make_gateway(clients=[billing(server.port)])
    before = fd_kinds()
    with tunnel_client(gw, server.port) as sock:
        sock.settimeout(20)
        assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
        assert spliced(gw) == 1 and splice.active() == 1
        gw.run(gw.gateway.drain(0.2), timeout=15)
        _, ended = read_all(sock)  # cut: an end of some kind, never a hang
        assert ended in ("eof", "reset")
    assert wait_for(lambda: splice.active() == 0)
    server.release.set()
    server.wait()
    after = no_more_than(before)
    assert after["pipe"] <= before["pipe"] and after["eventpoll"] <= before["eventpoll"]
    assert after["socket"] <= before["socket"]


@pytest.mark.parametrize("kind", ["connect", "body"])
def test_a_client_reset_mid_transfer_closes_the_upstream_too(
    kind: str,
    make_gateway: MakeGateway,
    scripted: Callable[..., Scripted],
    tmp_path: Any,
) -> None:
    """The destination keeps sending (64 MiB, far more than any buffer): once the client
    is gone with an RST, its sends must fail, not block until its own timeout."""
    big = 64 * MIB

    def script(conn: socket.socket, _: Scripted) -> str:
        if kind == "body":
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big)
        block = payload(MIB)
        try:
            for _ in range(64):
                conn.sendall(block)
        except TimeoutError:
            return "blocked"  # nobody closed us
        except OSError:
            return "cut"
        return "all sent"

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    metric = (
        "fixedip_tunnels_spliced_total" if kind == "connect" else "fixedip_bodies_spliced_total"
    )
    if kind == "connect":
        sock = tunnel_client(gw, server.port)
        sock.settimeout(20)
        recv_exactly(sock, 2 * MIB)
    else:
        sock = socket.create_connection(gw.http, timeout=20)
        sock.sendall(get("/x", server.port))
        reader = Reader(sock)
        assert reader.head()[0] == 200
        reader.body(2 * MIB)
    assert wait_for(lambda: counter(gw, metric) == 1)
    reset(sock)
    assert server.wait() == ["cut"]
    assert wait_for(lambda: splice.active() == 0)
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert record["bytes_down"] >= 2 * MIB


def stalled_origin(shown: int, length: int) -> Callable[[socket.socket, Scripted], str]:
    """An HTTP origin that promises `length` body bytes, sends `shown`, then waits to be
    hung up on; it says how its connection ended: "closed", or "open" (nobody closed it)."""

    def script(conn: socket.socket, _: Scripted) -> str:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
        conn.sendall(payload(shown))
        try:
            return "closed" if conn.recv(1) == b"" else "spoke"
        except TimeoutError:
            return "open"
        except OSError:
            return "closed"

    return script


def test_a_stalled_spliced_body_still_times_out_and_closes_both_sides(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    origin = scripted(stalled_origin(2 * MIB, 8 * MIB))
    gw = make_gateway(timeouts={"idle_s": 1})
    with socket.create_connection(gw.http, timeout=20) as sock:
        sock.sendall(get("/x", origin.port))
        reader = Reader(sock)
        assert reader.head()[0] == 200
        body = reader.rest()[0]
    assert body == payload(2 * MIB)  # what came, then the cut (a read timeout fails)
    assert counter(gw, "fixedip_bodies_spliced_total") == 1
    assert origin.wait() == ["closed"]
    assert wait_for(lambda: splice.active() == 0)


def test_a_spliced_body_on_a_connection_close_request_ends_with_the_connection(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 4 * MIB + 17
    with socket.create_connection(gateway.http, timeout=20) as sock:
        request = get(f"/big?n={n}&mode=length", vendor.port)
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        reader = Reader(sock)
        status, headers = reader.head()
        body, ended = reader.rest()
    assert status == 200 and headers.get("connection") == "close"
    assert ended == "eof" and len(body) == n and sha(body) == big_body_sha256(n)
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1


def test_a_client_reset_in_a_quiet_spliced_tunnel_closes_the_upstream(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    """Nothing flows when the client goes: only the splicer's watch on the client's socket
    can notice (the transport's reading is paused)."""

    def script(conn: socket.socket, _: Scripted) -> str:
        conn.sendall(payload(2 * MIB))
        try:
            return "closed" if conn.recv(1) == b"" else "spoke"
        except TimeoutError:
            return "open"
        except OSError:
            return "closed"

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    sock = tunnel_client(gw, server.port)
    sock.settimeout(20)
    assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
    assert spliced(gw) == 1
    reset(sock)
    assert server.wait() == ["closed"]
    assert wait_for(lambda: splice.active() == 0)


def test_a_client_reset_mid_upload_closes_the_upstream(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    """The client pushes bytes up a spliced tunnel, then resets: the destination, which
    reads everything, must see its connection end rather than wait for more."""

    def script(conn: socket.socket, _: Scripted) -> tuple[str, int]:
        got = 0
        try:
            while chunk := conn.recv(1 << 20):
                got += len(chunk)
        except TimeoutError:
            return "open", got
        except OSError:
            return "closed", got
        return "closed", got

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    sock = tunnel_client(gw, server.port)
    sock.settimeout(20)
    sock.sendall(payload(4 * MIB))
    assert wait_for(lambda: spliced(gw) == 1)
    sock.sendall(payload(MIB))
    reset(sock)
    ((ended, got),) = server.wait()
    assert ended == "closed" and got <= 5 * MIB
    assert wait_for(lambda: splice.active() == 0)


def test_a_client_reset_mid_body_is_recorded_as_on_the_transports(
    cap: int,
    make_gateway: MakeGateway,
    scripted: Callable[..., Scripted],
    tmp_path: Any,
) -> None:
    """The upstream did nothing wrong: the flow record must not blame it (a deny with
    reason upstream_closed counts against the destination in metrics and alerts)."""
    origin = scripted(stalled_origin(64 * MIB, 64 * MIB))  # it blocks: the client won't read
    gw = make_gateway()
    sock = socket.create_connection(gw.http, timeout=20)
    sock.sendall(get("/x", origin.port))
    reader = Reader(sock)
    assert reader.head()[0] == 200
    reader.body(2 * MIB)
    expected = 1 if cap else 0
    assert wait_for(lambda: counter(gw, "fixedip_bodies_spliced_total") == expected)
    time.sleep(0.1)  # both paths blocked on the full client socket
    reset(sock)
    origin.wait()
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert (record["decision"], record["reason"]) == ("allow", "allowed")


def test_stopping_the_gateway_without_a_drain_ends_a_tunnel_and_frees_its_descriptors(
    cap: int,
    tmp_path: Any,
    scripted: Callable[..., Scripted],
) -> None:
    """Gateway.close() without a drain (an embedder, the test harness): the transports end
    with the loop, and so must a splicer's duplicate sockets, pipes and epoll set."""
    server = scripted(hold_after(2 * MIB))
    before = fd_kinds()
    gw = RunningGateway(gateway_config(tmp_path, clients=[billing(server.port)])).start()
    splicers: list[splice.Splice] = []
    stopper = threading.Thread(target=gw.stop, daemon=True)
    try:
        with tunnel_client(gw, server.port) as sock:
            sock.settimeout(20)
            assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
            assert wait_for(lambda: splice.active() == (1 if cap else 0))
            splicers = gw.call(
                lambda: [s.splicer for s in gw.gateway.sessions if s.splicer is not None]
            )
            stopper.start()
            stopper.join(15)
            assert not stopper.is_alive(), "stopping the gateway hung"
            sock.settimeout(3)
            try:
                ended = "eof" if sock.recv(1) == b"" else "data"
            except ConnectionResetError:
                ended = "reset"
            except TimeoutError:
                ended = "still open"
        server.release.set()
        server.wait()
        assert ended in ("eof", "reset"), "the client's connection outlived the gateway"
        assert splice.active() == 0
        after = no_more_than(before)
        assert after["pipe"] <= before["pipe"] and after["eventpoll"] <= before["eventpoll"]
    finally:
        if not stopper.is_alive() and not stopper.ident:
            gw.stop()
        for splicer in splicers:  # should one outlive the gateway: later tests count active()
            splicer.stop()


# --- no descriptors left at the switch ----------------------------------------------


@contextlib.contextmanager
def only_descriptors_left(k: int) -> Iterator[None]:
    """Lower this process's descriptor limit so that exactly `k` more can be opened (the
    `k` lowest free numbers), restoring it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = [os.dup(0) for _ in range(k)]
    limit = max(probe) + 1
    for fd in probe:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    "left", [1, 2, 4, 64], ids=["second-dup", "first-pipe", "second-pipe", "enough"]
)
def test_a_tunnel_that_cannot_get_its_descriptors_stays_on_the_transports_and_leaks_none(
    left: int,
    make_gateway: MakeGateway,
    echo: EchoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Splicer fails half-built (a dup or a pipe short): what it opened is closed, the
    tunnel goes on as if it never tried, and it does not try again."""
    monkeypatch.setattr(splice, "max_spliced", lambda: splice.MAX_SPLICED)
    gw = make_gateway(clients=[billing(echo.port)])
    greeting = f"peer {ALLOWED_EGRESS}\n".encode()
    data = payload(4 * MIB)
    first, switch, rest = data[: MIB // 4], data[MIB // 4 : 2 * MIB], data[2 * MIB :]
    with tunnel_client(gw, echo.port) as sock:
        sock.settimeout(20)
        assert echo_some(sock, first, len(greeting)) == greeting + first
        before = fd_kinds()
        with only_descriptors_left(left):  # only while the tunnel passes 1 MiB
            assert echo_some(sock, switch) == switch
        echoed = echo_through_quietly(sock, rest)
    assert sha(echoed) == sha(rest)
    assert spliced(gw) == (1 if left == 64 else 0)  # six descriptors and an epoll set
    assert wait_for(lambda: splice.active() == 0)
    after = no_more_than(before)
    assert after["pipe"] <= before["pipe"] and after["socket"] <= before["socket"]


def echo_some(sock: socket.socket, data: bytes, extra: int = 0) -> bytes:
    """Send `data` (from a thread) and read back as many bytes, and `extra` more."""
    want = len(data) + extra
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    got = recv_exactly(sock, want)
    sender.join(20)
    return got


def echo_through_quietly(sock: socket.socket, data: bytes) -> bytes:
    """Like echo_through, past the greeting: send (from a thread), half-close, read to EOF."""
    sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while chunk := sock.recv(1 << 20):
        got += chunk
    sender.join(20)
    return bytes(got)


# --- spliced transfers side by side, and a drain that lets them finish --------------


def test_a_reset_spliced_tunnel_leaves_its_neighbours_and_newcomers_intact(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    """Spliced tunnels share one epoll set per loop: one ending by a reset must not
    disturb another, and a new one (likely reusing the freed descriptor numbers) works."""
    first, second = payload(5 * MIB)[: 2 * MIB], payload(5 * MIB)[2 * MIB :]

    def script(conn: socket.socket, _: Scripted) -> str:
        conn.sendall(first)
        try:
            if conn.recv(1) != b"g":
                return "gone"
        except OSError:
            return "gone"
        conn.sendall(second)
        return "sent"

    server = scripted(script, count=3)
    gw = make_gateway(clients=[billing(server.port)])
    a, b = tunnel_client(gw, server.port), tunnel_client(gw, server.port)
    c: socket.socket | None = None
    try:
        for sock in (a, b):
            sock.settimeout(20)
            assert recv_exactly(sock, len(first)) == first
        assert wait_for(lambda: splice.active() == 2)
        reset(a)
        assert wait_for(lambda: splice.active() == 1)
        c = tunnel_client(gw, server.port)
        c.settimeout(20)
        assert recv_exactly(c, len(first)) == first
        assert wait_for(lambda: splice.active() == 2)
        for sock in (b, c):
            sock.sendall(b"g")
        results = [read_all(sock) for sock in (b, c)]
    finally:
        for sock in (b, c):
            if sock is not None:
                sock.close()
    assert results == [(second, "eof"), (second, "eof")]
    assert sorted(server.wait(3)) == ["gone", "sent", "sent"]
    assert spliced(gw) == 3
    assert wait_for(lambda: splice.active() == 0)


def test_a_drain_lets_a_spliced_body_finish_then_closes_the_connection(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    n = 8 * MIB

    def script(conn: socket.socket, server: Scripted) -> bool:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
            head += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + payload(2 * MIB))
        server.release.wait(20)
        conn.sendall(payload(n)[2 * MIB :])
        return conn.recv(1) == b""  # the gateway closes us once the body is through

    origin = scripted(script)
    gw = make_gateway()
    with socket.create_connection(gw.http, timeout=20) as sock:
        sock.sendall(get("/x", origin.port))
        reader = Reader(sock)
        assert reader.head()[0] == 200
        got = reader.body(2 * MIB)
        assert wait_for(lambda: counter(gw, "fixedip_bodies_spliced_total") == 1)
        drained = threading.Thread(target=lambda: gw.run(gw.gateway.drain(10), timeout=15))
        drained.start()
        assert wait_for(lambda: gw.gateway.draining)
        origin.release.set()  # the rest of the body flows while the gateway drains
        rest, ended = reader.rest()
        drained.join(15)
        assert not drained.is_alive()
    assert ended == "eof"
    assert sha(got + rest) == sha(payload(n))
    assert origin.wait() == [True]
    assert wait_for(lambda: splice.active() == 0)


def test_a_body_on_a_pooled_upstream_connection_is_spliced_and_that_connection_retired(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 3 * MIB + 5
    with socket.create_connection(gateway.http, timeout=20) as sock:
        reader = Reader(sock)
        sock.sendall(get("/warm", vendor.port))
        assert reader.response()[0] == 200
        sock.sendall(get(f"/big?n={n}&mode=length", vendor.port))
        _, _, big = reader.response()
        sock.sendall(get("/after", vendor.port))
        _, _, after = reader.response()
    assert sha(big) == big_body_sha256(n) and b'"path": "/after"' in after
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1
    ports = [port for _, port, _, _ in vendor.seen]
    assert ports[0] == ports[1] != ports[2]  # pooled for /big, never reused after it


def test_a_slow_destination_takes_a_spliced_upload_whole(
    make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    """A reader far slower than the splicer: the upload keeps waiting on the destination's
    full socket (EAGAIN on the pipe → socket splice), and nothing is lost or reordered."""
    upload = payload(6 * MIB + 11)

    def script(conn: socket.socket, _: Scripted) -> tuple[int, str]:
        got = bytearray()
        for _ in range(100_000):  # bounded: far more reads than 6 MiB in 16 KiB pieces needs
            chunk = conn.recv(16384)
            if not chunk:
                break
            got += chunk
            time.sleep(0.001)
        return len(got), sha(bytes(got))

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)])
    with tunnel_client(gw, server.port) as sock:
        sock.settimeout(20)
        sock.sendall(upload)
        sock.shutdown(socket.SHUT_WR)
        assert server.wait() == [(len(upload), sha(upload))]
        assert read_all(sock) == (b"", "eof")
    assert spliced(gw) == 1


def test_a_client_that_half_closes_after_its_request_still_gets_the_whole_body(
    cap: int, gateway: RunningGateway, vendor: VendorServer
) -> None:
    """Some clients send FIN once the request is out: the answer must still come whole,
    spliced or not, and the connection then end."""
    n = 6 * MIB + 1
    with socket.create_connection(gateway.http, timeout=20) as sock:
        sock.sendall(get(f"/big?n={n}&mode=length", vendor.port))
        sock.shutdown(socket.SHUT_WR)
        got, ended = read_all(sock)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and ended == "eof"
    assert len(body) == n and sha(body) == big_body_sha256(n)
    assert counter(gateway, "fixedip_bodies_spliced_total") == (1 if cap else 0)


def test_an_http10_client_gets_a_spliced_body_then_the_close(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    n = 3 * MIB + 3
    request = get(f"/big?n={n}&mode=length", vendor.port).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with socket.create_connection(gateway.http, timeout=20) as sock:
        sock.sendall(request)
        got, ended = read_all(sock)
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"content-length: %d" % n in head.lower() and b"connection: close" in head.lower()
    assert ended == "eof" and sha(body) == big_body_sha256(n)
    assert counter(gateway, "fixedip_bodies_spliced_total") == 1


@pytest.mark.parametrize("way", ["down", "up"])
def test_a_spliced_tunnel_trickling_one_way_outlives_its_idle_timeout(
    way: str, make_gateway: MakeGateway, scripted: Callable[..., Scripted]
) -> None:
    """Bytes moved by the splicer count as activity: a tunnel that keeps trickling for
    longer than tunnel_idle_s (either way) is not cut."""
    piece, pieces = 64 * 1024, 12  # one every 0.2 s: 2.4 s against an idle timeout of 1 s

    def script(conn: socket.socket, _: Scripted) -> int:
        conn.sendall(payload(2 * MIB))
        if way == "down":
            for _ in range(pieces):
                time.sleep(0.2)
                conn.sendall(payload(piece))
            return 0
        heard = len(read_to_eof(conn))
        conn.sendall(b"%d" % heard)
        return heard

    server = scripted(script)
    gw = make_gateway(clients=[billing(server.port)], timeouts={"tunnel_idle_s": 1})
    with tunnel_client(gw, server.port) as sock:
        sock.settimeout(20)
        assert recv_exactly(sock, 2 * MIB) == payload(2 * MIB)
        assert spliced(gw) == 1
        if way == "up":
            for _ in range(pieces):
                time.sleep(0.2)
                sock.sendall(payload(piece))
            sock.shutdown(socket.SHUT_WR)
        got, ended = read_all(sock)
    assert ended == "eof"
    if way == "down":
        assert got == payload(piece) * pieces
    else:
        assert got == b"%d" % (piece * pieces)
        assert server.wait() == [piece * pieces]
