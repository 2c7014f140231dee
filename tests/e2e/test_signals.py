"""`fixedip serve` as operators run it: SIGHUP reloads, SIGTERM drains and exits 0.

Each test starts the real command in a subprocess with a file written to tmp_path
(listeners on port 0, read back from the announcement on stderr) and always stops it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import tomli_w

from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    EchoServer,
    VendorServer,
    basic,
    read_flow_log,
)
from tests.serve import ServeProcess, client, serve_config, write_config

# How long the process may take to exit beyond what it was asked to wait.
EXIT_MARGIN_S = 2.0


def open_tunnel(proxy: tuple[str, int], port: int, user: str) -> tuple[socket.socket, bytes]:
    """CONNECT to 127.0.0.1:`port` through the proxy; the socket and the reply's status line.

    The head is read one byte at a time so that bytes the destination sends first stay
    in the socket for the caller.
    """
    sock = socket.create_connection(proxy, timeout=5)
    sock.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Proxy-Authorization: {basic(user, TOKENS[user])}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        data = sock.recv(1)
        if not data:
            break
        head += data
    return sock, head.split(b"\r\n", 1)[0]


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def echo_tunnel(proxy: tuple[str, int], port: int, user: str) -> socket.socket:
    """A CONNECT tunnel to the EchoServer, past its `peer` greeting (checked)."""
    sock, status_line = open_tunnel(proxy, port, user)
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    assert recv_line(sock) == f"peer {ALLOWED_EGRESS}\n".encode()
    return sock


def assert_echoes(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "the tunnel closed"
        got += chunk
    assert got == payload


def assert_flow_log_holds_no_token(path: Path) -> None:
    text = path.read_text()
    for token in TOKENS.values():
        assert token not in text


def test_sighup_reload_applies_to_the_next_request_on_an_open_keepalive_connection(
    serve: Callable[[dict[str, Any]], ServeProcess], tmp_path: Path, vendor: VendorServer
) -> None:
    """A keep-alive connection keeps what it worked out for its last destination; a
    reload must still reach its next request."""
    config = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])])
    gw = serve(config)
    with requests.Session() as session:
        session.proxies = {"http": gw.proxy_url("billing")}
        before = session.get(vendor.url("/h"), headers={"X-Internal-User": "alice"}, timeout=5)
        assert before.json()["headers"]["x-internal-user"] == "alice"

        config["destinations"] = [{"match": "127.0.0.1", "sanitize_extra": ["X-Internal-User"]}]
        write_config(tmp_path / "fixedip.toml", config)
        mark = gw.mark
        gw.signal(signal.SIGHUP)
        gw.wait_for_line("configuration reloaded", after=mark)

        after = session.get(vendor.url("/h"), headers={"X-Internal-User": "alice"}, timeout=5)
        assert after.status_code == 200
        assert "x-internal-user" not in after.json()["headers"]
    gw.signal(signal.SIGTERM)
    assert gw.wait_exit(10) == 0
    peers = {record["peer"] for record in read_flow_log(tmp_path / "flow.jsonl", 2)}
    assert len(peers) == 1  # both requests came over one client connection


def test_sighup_reload_keeps_an_open_tunnel_working(
    serve: Callable[[dict[str, Any]], ServeProcess],
    tmp_path: Path,
    echo: EchoServer,
    vendor: VendorServer,
) -> None:
    everywhere = ["127.0.0.1:*"]
    config = serve_config(tmp_path, [client("billing", everywhere, [echo.port])])
    gw = serve(config)
    tunnel = echo_tunnel(gw.http, echo.port, "billing")
    try:
        assert_echoes(tunnel, b"before the reload")
        refused, status_line = open_tunnel(gw.http, echo.port, "other")
        refused.close()
        assert status_line.startswith(b"HTTP/1.1 407"), status_line

        # billing may now reach the echo port only; a new client appears.
        config["clients"] = [
            client("billing", [f"127.0.0.1:{echo.port}"], [echo.port]),
            client("other", everywhere, [echo.port]),
        ]
        write_config(tmp_path / "fixedip.toml", config)
        mark = gw.mark
        gw.signal(signal.SIGHUP)
        line = gw.wait_for_line("configuration reloaded", after=mark)
        assert str(tmp_path / "fixedip.toml") in line

        assert_echoes(tunnel, b"after the reload, same tunnel")
        other = echo_tunnel(gw.http, echo.port, "other")
        assert_echoes(other, b"the new client")
        other.close()
        r = requests.get(vendor.url("/x"), proxies={"http": gw.proxy_url("billing")}, timeout=5)
        assert r.status_code == 403
        assert "Proxy-Status" in r.headers
    finally:
        tunnel.close()

    gw.signal(signal.SIGTERM)
    assert gw.wait_exit(10) == 0
    records = read_flow_log(tmp_path / "flow.jsonl", 4)
    seen = sorted((r["client"] or "", r["kind"], r["status"]) for r in records)
    assert seen == [
        ("", "connect", 407),  # "other" before the reload: not a client yet
        ("billing", "connect", 200),
        ("billing", "http", 403),
        ("other", "connect", 200),
    ]
    for record in records:
        if record["status"] == 200:
            assert record["egress"] == ALLOWED_EGRESS
            assert record["port"] == echo.port
    assert_flow_log_holds_no_token(tmp_path / "flow.jsonl")


def _with(data: dict[str, Any], section: str, **keys: Any) -> str:
    return tomli_w.dumps({**data, section: {**data[section], **keys}})


@pytest.mark.parametrize(
    ("make_bad_text", "why"),
    [
        (lambda good: "[listen\nhttp = ", "not valid TOML"),
        (lambda good: _with(good, "egress", stratgy="failover"), "egress.stratgy: unknown key"),
        (lambda good: _with(good, "egress", ips=["198.18.0.99"]), "not assigned to this host"),
    ],
    ids=["invalid-toml", "unknown-key", "egress-ip-not-on-this-host"],
)
def test_sighup_with_a_bad_file_keeps_the_running_configuration(
    serve: Callable[[dict[str, Any]], ServeProcess],
    tmp_path: Path,
    echo: EchoServer,
    make_bad_text: Callable[[dict[str, Any]], str],
    why: str,
) -> None:
    config = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [echo.port])])
    gw = serve(config)
    tunnel = echo_tunnel(gw.http, echo.port, "billing")
    try:
        (tmp_path / "fixedip.toml").write_text(make_bad_text(config))
        mark = gw.mark
        gw.signal(signal.SIGHUP)
        line = gw.wait_for_line("reload refused", after=mark)
        assert str(tmp_path / "fixedip.toml") in line
        assert why in line
        assert not any("configuration reloaded" in line for line in gw.stderr[mark:])

        assert gw.proc.poll() is None
        assert_echoes(tunnel, b"still here")
        fresh = echo_tunnel(gw.http, echo.port, "billing")
        assert_echoes(fresh, b"old configuration still in force")
        fresh.close()
    finally:
        tunnel.close()


def test_sigterm_drains_in_flight_requests_then_exits_0(
    serve: Callable[[dict[str, Any]], ServeProcess],
    tmp_path: Path,
    vendor: VendorServer,
) -> None:
    grace_s = 4.0
    clients = [client("billing", ["127.0.0.1:*"], [443])]
    gw = serve(serve_config(tmp_path, clients, shutdown_grace_s=grace_s))
    result: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            r = requests.get(
                vendor.url("/slow?s=1.5"), proxies={"http": gw.proxy_url("billing")}, timeout=10
            )
            result["status"], result["body"] = r.status_code, r.json()
        except Exception as exc:
            result["error"] = exc
        result["done_at"] = time.monotonic()

    in_flight = threading.Thread(target=slow_request)
    in_flight.start()
    try:
        deadline = time.monotonic() + 5
        while not any(path.startswith("/slow") for *_, path in vendor.seen):
            assert time.monotonic() < deadline, "the slow request never reached the vendor"
            time.sleep(0.02)
        gw.signal(signal.SIGTERM)
        sent_at = time.monotonic()

        refused_at = None
        while refused_at is None and time.monotonic() < sent_at + 1.0:
            try:
                socket.create_connection(gw.http, timeout=1).close()
            except ConnectionRefusedError:
                refused_at = time.monotonic()
            else:
                time.sleep(0.02)
        assert refused_at is not None, "the proxy still accepted connections 1 s after SIGTERM"
    finally:
        in_flight.join(10)

    assert "error" not in result, result.get("error")
    assert result["status"] == 200
    assert result["body"]["peer"] == ALLOWED_EGRESS
    assert refused_at < result["done_at"], "new connections were accepted while draining"
    assert gw.wait_exit(grace_s + EXIT_MARGIN_S) == 0
    exited_after_s = time.monotonic() - sent_at
    assert exited_after_s < grace_s, "the gateway waited the full grace with nothing in flight"
    assert gw.wait_for_line("draining", timeout=0)

    records = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert len(records) == 1
    assert records[0]["client"] == "billing"
    assert records[0]["egress"] == ALLOWED_EGRESS
    assert records[0]["status"] == 200
    assert records[0]["port"] == vendor.port
    assert_flow_log_holds_no_token(tmp_path / "flow.jsonl")


def test_sigterm_cuts_tunnels_after_the_grace_period(
    serve: Callable[[dict[str, Any]], ServeProcess],
    tmp_path: Path,
    echo: EchoServer,
) -> None:
    grace_s = 1.0
    config = serve_config(
        tmp_path, [client("billing", ["127.0.0.1:*"], [echo.port])], shutdown_grace_s=grace_s
    )
    # Without an admin listener to close, nothing else gives the cut tunnel's flow
    # record a chance to be written before the flow log closes.
    config["listen"]["admin"] = ""
    gw = serve(config)
    tunnel = echo_tunnel(gw.http, echo.port, "billing")
    try:
        gw.signal(signal.SIGTERM)
        sent_at = time.monotonic()
        gw.wait_for_line("draining")
        assert_echoes(tunnel, b"an open tunnel works during the grace period")

        assert gw.wait_exit(grace_s + EXIT_MARGIN_S) == 0
        exited_after_s = time.monotonic() - sent_at
        assert exited_after_s >= grace_s * 0.9, "the tunnel was cut before the grace period"

        tunnel.settimeout(2)
        with contextlib.suppress(ConnectionResetError):
            assert tunnel.recv(1) == b"", "the tunnel outlived the gateway"
    finally:
        tunnel.close()

    records = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert [(r["client"], r["kind"], r["status"]) for r in records] == [("billing", "connect", 200)]
    assert records[0]["egress"] == ALLOWED_EGRESS
    assert records[0]["bytes_up"] == len(b"an open tunnel works during the grace period")
    assert_flow_log_holds_no_token(tmp_path / "flow.jsonl")
