"""Resource bounds, measured with real sockets: sizes, timeouts, connection caps,
backpressure, file descriptors and tasks all return to where they started.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import (
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    read_response,
    token_hash,
    url_of,
)
from tests.serve import client, serve_config

AUTH = f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n"


def exchange(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the gateway closes (or `timeout`)."""
    with socket.create_connection(address, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    return out


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True if the gateway closes `s` within `timeout` (reading and discarding)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


# --- sizes ------------------------------------------------------------------------------


def test_oversized_head_gets_431(gateway: RunningGateway, vendor: VendorServer) -> None:
    out = exchange(
        gateway.http, f"GET {vendor.url()} HTTP/1.1\r\n{AUTH}X-Big: {'a' * 70000}\r\n\r\n".encode()
    )
    assert out.startswith(b"HTTP/1.1 431 ")
    assert vendor.seen == []


def test_whitespace_padding_counts_toward_the_head_limit(
    make_gateway, vendor: VendorServer
) -> None:
    # llhttp drops whitespace around a value without reporting it; it still counts.
    gw = make_gateway(limits={"max_header_bytes": 1024})
    padded = f"GET {vendor.url()} HTTP/1.1\r\n{AUTH}X-Pad:{' ' * 200_000}v\r\n\r\n"
    out = exchange(gw.http, padded.encode())
    assert out.startswith(b"HTTP/1.1 431 ")
    assert vendor.seen == []


def test_too_many_headers_get_431(gateway: RunningGateway, vendor: VendorServer) -> None:
    many = "".join(f"X-H{i}: v\r\n" for i in range(150))
    out = exchange(gateway.http, f"GET {vendor.url()} HTTP/1.1\r\n{AUTH}{many}\r\n".encode())
    assert out.startswith(b"HTTP/1.1 431 ")


def test_oversized_request_target_gets_414(gateway: RunningGateway, vendor: VendorServer) -> None:
    out = exchange(
        gateway.http, f"GET {vendor.url('/' + 'a' * 70000)} HTTP/1.1\r\n{AUTH}\r\n".encode()
    )
    assert out.startswith(b"HTTP/1.1 414 ")


def test_body_over_the_configured_limit_gets_413_before_anything_is_sent(
    make_gateway, vendor: VendorServer
) -> None:
    gw = make_gateway(limits={"max_body_bytes": 1000})
    r = requests.post(
        vendor.url("/up"), data=b"x" * 1001, proxies={"http": gw.proxy_url()}, timeout=10
    )
    assert r.status_code == 413
    assert "body_too_large" in r.headers["Proxy-Status"]
    assert vendor.seen == []
    ok = requests.post(
        vendor.url("/up"), data=b"x" * 1000, proxies={"http": gw.proxy_url()}, timeout=10
    )
    assert ok.status_code == 200


def test_chunked_body_growing_past_the_limit_is_cut(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(limits={"max_body_bytes": 10_000})
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(
            f"POST {vendor.url('/chunky')} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n"
            f"{AUTH}Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
        answer = b""
        try:
            for _ in range(10):
                s.sendall(piece)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413 ")
    time.sleep(0.2)
    # The vendor records a request only after reading its whole body: it never got one.
    assert not any(path == "/chunky" for _, _, _, path in vendor.seen)


# --- timeouts --------------------------------------------------------------------------


def test_slowloris_head_is_cut_at_the_header_timeout(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(timeouts={"header_s": 0.5})
    head = f"GET {vendor.url()} HTTP/1.1\r\n{AUTH}".encode()
    with socket.create_connection(gw.http, timeout=5) as s:
        started = time.monotonic()
        answer = b""
        for byte in head:  # one byte every 50 ms: the head would take far longer than 0.5 s
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
            if time.monotonic() - started > 3:
                break
        s.settimeout(3)
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert vendor.seen == []


def test_idle_keepalive_connection_is_closed(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(timeouts={"idle_s": 0.3})
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(
            f"GET {vendor.url()} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n{AUTH}\r\n".encode()
        )
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        assert closed_by_peer(s, timeout=3)


def test_silent_new_connection_is_closed(make_gateway) -> None:
    gw = make_gateway(timeouts={"header_s": 0.3})
    with socket.create_connection(gw.http, timeout=5) as s:
        assert closed_by_peer(s, timeout=3)


def test_connections_waiting_at_once_share_deadline_ticks_and_all_time_out(
    make_gateway,
) -> None:
    """Deadlines are bucketed (session.Deadlines): forty silent connections wait in one
    or two ticks, not forty timers, and each is still cut at its header timeout."""
    gw = make_gateway(timeouts={"header_s": 0.5})
    socks = [socket.create_connection(gw.http, timeout=5) for _ in range(40)]
    try:
        deadline = time.monotonic() + 3
        waiting: list[int] = []
        while time.monotonic() < deadline:
            waiting = gw.call(lambda: [len(d) for d in gw.gateway.deadlines.ticks.values()])
            if sum(waiting) == 40:
                break
            time.sleep(0.01)
        assert sum(waiting) == 40
        assert len([n for n in waiting if n]) <= 3
        assert all(closed_by_peer(s, timeout=3) for s in socks)
    finally:
        for s in socks:
            s.close()
    assert gw.call(lambda: sum(len(d) for d in gw.gateway.deadlines.ticks.values())) == 0


def test_a_closed_connection_leaves_its_deadline_tick(make_gateway) -> None:
    """A client that goes away long before its timeout is not held until the tick."""
    gw = make_gateway(timeouts={"header_s": 60})
    for _ in range(10):
        with socket.create_connection(gw.http, timeout=5):
            pass
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if gw.call(lambda: len(gw.gateway.sessions)) == 0:
            break
        time.sleep(0.02)
    assert gw.call(lambda: len(gw.gateway.sessions)) == 0
    assert gw.call(lambda: sum(len(d) for d in gw.gateway.deadlines.ticks.values())) == 0


def test_an_infinite_idle_timeout_never_closes_and_never_fails(
    make_gateway, vendor: VendorServer
) -> None:
    gw = make_gateway(timeouts={"idle_s": float("inf")})
    request = f"GET {vendor.url()} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n{AUTH}\r\n"
    with socket.create_connection(gw.http, timeout=5) as s:
        for _ in range(2):
            s.sendall(request.encode())
            assert read_response(s).startswith(b"HTTP/1.1 200 ")
        assert not closed_by_peer(s, timeout=0.3)


def test_idle_tunnel_is_closed(make_gateway, echo) -> None:
    gw = make_gateway(
        timeouts={"tunnel_idle_s": 0.3}, clients=[client("billing", ["127.0.0.1:*"], [echo.port])]
    )
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n{AUTH}\r\n".encode())
        data = b""
        while b"peer" not in data:
            data += s.recv(65536)
        assert closed_by_peer(s, timeout=3)


def test_busy_tunnel_outlives_the_idle_timeout(make_gateway, echo) -> None:
    gw = make_gateway(
        timeouts={"tunnel_idle_s": 0.5}, clients=[client("billing", ["127.0.0.1:*"], [echo.port])]
    )
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n{AUTH}\r\n".encode())
        data = b""
        while b"peer" not in data:
            data += s.recv(65536)
        for i in range(8):  # 8 x 0.2 s = 1.6 s of traffic, well past 0.5 s of idleness
            s.sendall(b"tick%d" % i)
            assert s.recv(65536) == b"tick%d" % i
            time.sleep(0.2)


def test_socks5_handshake_that_stalls_is_closed(make_gateway) -> None:
    gw = make_gateway(timeouts={"header_s": 0.3})
    with socket.create_connection(gw.socks, timeout=5) as s:
        s.sendall(b"\x05")  # half a greeting, then nothing
        assert closed_by_peer(s, timeout=3)


# --- connection caps --------------------------------------------------------------------


def test_total_connection_cap_answers_503_with_retry_after(make_gateway) -> None:
    gw = make_gateway(limits={"max_connections": 3})
    held = [socket.create_connection(gw.http, timeout=5) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the gateway accept them
        with socket.create_connection(gw.http, timeout=5) as extra:
            extra.sendall(f"GET http://127.0.0.1/ HTTP/1.1\r\n{AUTH}\r\n".encode())
            answer = extra.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: " in answer
        assert b"connection_limit_reached" in answer
    finally:
        for s in held:
            s.close()


def test_per_client_connection_cap_answers_503_and_frees_on_close(
    make_gateway, vendor: VendorServer
) -> None:
    gw = make_gateway(limits={"max_connections_per_client": 2})
    request = f"GET {vendor.url()} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n{AUTH}\r\n".encode()
    held = []
    for _ in range(2):
        s = socket.create_connection(gw.http, timeout=5)
        s.sendall(request)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        held.append(s)
    third = exchange(gw.http, request)
    assert third.startswith(b"HTTP/1.1 503 ")
    assert b"Retry-After: 1" in third and b"client_connection_limit" in third
    held.pop().close()
    time.sleep(0.2)
    assert exchange(
        gw.http, request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    ).startswith(b"HTTP/1.1 200 ")
    for s in held:
        s.close()


# --- backpressure, descriptors, tasks ---------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_reader_does_not_grow_the_gateways_memory(
    serve, tmp_path: Path, vendor: VendorServer
) -> None:
    gw = serve(serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])]))
    pid = gw.proc.pid
    size = 128 * 1024 * 1024
    with socket.create_connection(gw.http, timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        before = rss_kib(pid)
        s.sendall(
            f"GET {vendor.url(f'/big?n={size}')} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n"
            f"{AUTH}\r\n".encode()
        )
        first = b""
        while b"\r\n\r\n" not in first:  # the head arrives; then the client stops reading
            first += s.recv(4096)
        time.sleep(1.5)  # the vendor could push all 128 MiB in this time
        paused = rss_kib(pid)
        received = len(first.partition(b"\r\n\r\n")[2])
        while received < size:  # now drain it all, to prove nothing was lost
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
    assert received == size
    assert paused - before < 24 * 1024, (
        f"RSS grew {paused - before} KiB while the client was not reading"
    )


def test_file_descriptors_return_to_the_baseline(
    serve, tmp_path: Path, vendor: VendorServer, echo
) -> None:
    config = serve_config(
        tmp_path, [client("billing", ["127.0.0.1:*"], [echo.port])], upstream_idle_s=0.2
    )
    gw = serve(config)
    pid = gw.proc.pid
    baseline = open_fds(pid)
    proxies = {"http": gw.proxy_url("billing")}
    for i in range(10):
        requests.get(vendor.url(f"/fd{i}"), proxies=proxies, timeout=5)
        requests.get(vendor.url(f"/fd{i}"), proxies={"http": url_of(gw.http)}, timeout=5)  # 407
    for _ in range(5):  # tunnels, closed by the client
        with socket.create_connection(gw.http, timeout=5) as s:
            s.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n{AUTH}\r\n".encode())
            s.recv(65536)
    for _ in range(5):  # clients that vanish mid-request
        with socket.create_connection(gw.http, timeout=5) as s:
            s.sendall(
                f"POST {vendor.url('/gone')} HTTP/1.1\r\n{AUTH}".encode()
                + b"Content-Length: 1000\r\n\r\nabc"
            )
    deadline = time.monotonic() + 5
    while open_fds(pid) != baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_fds(pid) == baseline


def test_client_that_disconnects_mid_request_leaves_no_task_or_session(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    def tasks() -> int:
        return gateway.call(lambda: len(asyncio.all_tasks(gateway.loop)))

    baseline = tasks()
    for path in ("/slow?s=0.5", "/big?n=50000000"):
        with socket.create_connection(gateway.http, timeout=5) as s:
            s.sendall(
                f"GET {vendor.url(path)} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n"
                f"{AUTH}\r\n".encode()
            )
            time.sleep(0.1)
    with socket.create_connection(gateway.http, timeout=5) as s:  # half a body, then gone
        s.sendall(
            f"POST {vendor.url('/half')} HTTP/1.1\r\n{AUTH}Content-Length: 100000\r\n\r\n".encode()
            + b"z" * 500
        )
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if tasks() <= baseline and gateway.call(lambda: len(gateway.gateway.sessions)) == 0:
            break
        time.sleep(0.05)
    assert tasks() <= baseline
    assert gateway.call(lambda: len(gateway.gateway.sessions)) == 0
    assert gateway.call(lambda: dict(gateway.gateway.client_connections)) == {}


@pytest.mark.parametrize("listener", ["http", "socks"])
def test_connection_gauge_returns_to_zero(gateway: RunningGateway, listener: str) -> None:
    for _ in range(5):
        with socket.create_connection(gateway.addresses[listener], timeout=5):
            pass
    deadline = time.monotonic() + 3
    metrics = ""
    while time.monotonic() < deadline:
        metrics = requests.get(url_of(gateway.admin, "/metrics"), timeout=5).text
        if f'fixedip_connections_open{{listener="{listener}"}} 0.0' in metrics:
            break
        time.sleep(0.05)
    assert f'fixedip_connections_open{{listener="{listener}"}} 0.0' in metrics


def test_client_token_is_checked_with_scrypt_once_per_credentials(
    make_gateway, vendor: VendorServer, monkeypatch
) -> None:
    import fixedip.policy.auth as auth

    calls = []
    real = auth.verify_token
    monkeypatch.setattr(
        auth, "verify_token", lambda token, stored: calls.append(1) or real(token, stored)
    )
    gw = make_gateway(
        clients=[{"name": "billing", "token_hash": token_hash("billing"), "allow": ["127.0.0.1:*"]}]
    )
    for i in range(5):  # five separate connections
        assert (
            requests.get(
                vendor.url(f"/a{i}"), proxies={"http": gw.proxy_url()}, timeout=5
            ).status_code
            == 200
        )
    assert len(calls) == 1
