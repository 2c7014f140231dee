"""What the relay does when the spool cannot commit, what survives a restart, the TLS
listener, and senders that trickle."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import trustme

from fixedip.ingress import spool as spool_mod
from fixedip.ingress import spoolfile
from tests.ingress.stubs import (
    RunningRelay,
    TargetStub,
    relay_config,
    standard_webhooks_headers,
)

MakeRelay = Callable[..., RunningRelay]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_spool_that_cannot_commit_answers_503_and_stores_nothing(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}])
    assert requests.post(relay.url + "/h", data=b"before", timeout=5).status_code == 200
    target.wait_for(1, "/ok")
    # Another process holds the database's write lock longer than the writer waits
    # (busy_timeout): the commit fails as it would on an I/O error.
    blocker = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        answer = requests.post(relay.url + "/h", data=b"during", timeout=30)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert answer.status_code == 503
    assert answer.json() == {"error": "spool_error"}
    assert int(answer.headers["Retry-After"]) > 0
    assert requests.post(relay.url + "/h", data=b"after", timeout=5).status_code == 200
    bodies = [d.body for d in target.wait_for(2, "/ok")]
    assert bodies == [b"before", b"after"]
    conn = spool_mod.connect(tmp_path / "spool.db")
    try:
        stored = [r.body for r in spoolfile.list_records(conn, None, 10)]
    finally:
        conn.close()
    assert b"during" not in stored


def test_vendor_ids_are_remembered_across_a_restart(
    target: TargetStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    route = {
        "path": "/h",
        "target": target.url("/ok"),
        "verify": "standard-webhooks",
        "secret": "env:HOOK_SECRET",
    }
    config = relay_config(tmp_path, [route])
    body = b'{"once":true}'
    headers = standard_webhooks_headers(SECRET, "msg_restart", body)
    first = RunningRelay(config).start()
    try:
        answer = requests.post(first.url + "/h", data=body, headers=headers, timeout=5)
        assert answer.status_code == 200
        original = answer.json()["id"]
        target.wait_for(1, "/ok")
    finally:
        first.stop()
    second = RunningRelay(config).start()
    try:
        again = requests.post(second.url + "/h", data=body, headers=headers, timeout=5)
        assert again.json() == {"id": original, "duplicate": True}
        time.sleep(0.3)
        assert len(target.received("/ok")) == 1
    finally:
        second.stop()


def test_tls_listener_serves_https_with_the_configured_certificate(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    chain, key, ca_file = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(key)
    cert.cert_chain_pems[0].write_to_path(chain)
    ca.cert_pem.write_to_path(ca_file)
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}], cert=str(chain), key=str(key))
    assert relay.url.startswith("https://")
    answer = requests.post(relay.url + "/h", data=b"over tls", timeout=5, verify=str(ca_file))
    assert answer.status_code == 200
    [got] = target.wait_for(1, "/ok")
    assert got.body == b"over tls"
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(relay.url + "/h", data=b"x", timeout=5)  # not trusted by default
    host, port = relay.relay.address if relay.relay else ("", 0)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        assert not sock.recv(100).startswith(b"HTTP/1.1 200")  # plain HTTP is not served


def test_a_body_that_trickles_is_cut_off_with_408(
    make_relay: MakeRelay, target: TargetStub
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}], body_timeout_s=0.5)
    host, port = relay.relay.address if relay.relay else ("", 0)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"body_timeout" in answer
    assert target.received("/ok") == []


def test_requests_beyond_the_in_flight_bound_get_503(
    make_relay: MakeRelay, target: TargetStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fixedip.ingress import receiver

    monkeypatch.setattr(receiver, "MAX_IN_FLIGHT", 2)
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}])
    host, port = relay.relay.address if relay.relay else ("", 0)
    slow = []
    for _ in range(2):  # two senders stuck in the middle of their bodies
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        slow.append(sock)
    try:
        time.sleep(0.3)
        answer = requests.post(relay.url + "/h", data=b"third", timeout=5)
        assert answer.status_code == 503
        assert answer.json() == {"error": "overloaded"}
        assert "Retry-After" in answer.headers
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.3)
    assert requests.post(relay.url + "/h", data=b"later", timeout=5).status_code == 200
