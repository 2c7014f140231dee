"""Block detection and rotation: an egress IP a vendor blocks is quarantined for that
vendor only, traffic moves to the IPs that still work, and a pinned client waits.

The stub vendor answers 403 to every address but 127.0.0.10, so 127.0.0.11 is "blocked".
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import requests

from tests.helpers import (
    ALLOWED_EGRESS,
    OTHER_EGRESS,
    RunningGateway,
    VendorServer,
    gateway_config,
    running,
    token_hash,
    url_of,
)


def clients() -> list[dict]:
    return [
        {
            "name": "billing",
            "token_hash": token_hash("billing"),
            "allow": ["*.test:*", "127.0.0.1:*"],
        },
        {
            "name": "pinned",
            "token_hash": token_hash("pinned"),
            "allow": ["*.test:*"],
            "egress": OTHER_EGRESS,
        },
    ]


def blocking_gateway(make_gateway, dns, **overrides) -> RunningGateway:
    dns.table["vendor.test"] = ["127.0.0.1"]
    dns.table["other.test"] = ["127.0.0.1"]
    egress = {"strategy": "round-robin", **overrides.pop("egress", {})}
    return make_gateway(
        egress=egress,
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=overrides.pop("clients", clients()),
        **overrides,
    )


def get(gw: RunningGateway, url: str, user: str = "billing") -> requests.Response:
    return requests.get(url, proxies={"http": gw.proxy_url(user)}, timeout=10)


def test_blocked_ip_is_quarantined_and_traffic_moves_to_the_others(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = blocking_gateway(make_gateway, dns)
    url = f"http://vendor.test:{vendor.port}/"
    first = [get(gw, url).status_code for _ in range(6)]  # round-robin: three 403s from .11
    assert first.count(403) == 3
    after = [get(gw, url) for _ in range(6)]
    assert [r.status_code for r in after] == [200] * 6
    assert {r.json()["peer"] for r in after} == {ALLOWED_EGRESS}
    egress = requests.get(url_of(gw.admin, "/egress"), timeout=5).json()["egress"]
    blocked = next(e for e in egress if e["bind"] == OTHER_EGRESS)
    assert [q["host"] for q in blocked["quarantined_for"]] == ["vendor.test"]
    assert blocked["quarantined_for"][0]["reason"] == "status 403"


def test_quarantine_is_per_destination(make_gateway, dns, vendor: VendorServer) -> None:
    gw = blocking_gateway(make_gateway, dns)
    for _ in range(6):
        get(gw, f"http://vendor.test:{vendor.port}/")
    peers = {get(gw, f"http://other.test:{vendor.port}/").json()["peer"] for _ in range(4)}
    assert peers == {ALLOWED_EGRESS, OTHER_EGRESS}  # other.test still uses both


def test_pinned_client_gets_503_with_retry_after_never_another_ip(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = blocking_gateway(make_gateway, dns)
    url = f"http://vendor.test:{vendor.port}/"
    assert [get(gw, url, "pinned").status_code for _ in range(3)] == [403] * 3
    r = get(gw, url, "pinned")
    assert r.status_code == 503
    assert "destination_unavailable" in r.headers["Proxy-Status"]
    assert "egress_quarantined" in r.headers["Proxy-Status"]
    assert 50 <= int(r.headers["Retry-After"]) <= 60
    assert all(peer == OTHER_EGRESS for peer, _, _, _ in vendor.seen)


def test_every_ip_quarantined_answers_503(make_gateway, dns, vendor: VendorServer) -> None:
    dns.table["vendor.test"] = ["127.0.0.1"]
    gw = make_gateway(
        egress={"ips": [OTHER_EGRESS]},
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=clients()[:1],
    )
    url = f"http://vendor.test:{vendor.port}/"
    for _ in range(3):
        assert get(gw, url).status_code == 403
    seen = len(vendor.seen)
    r = get(gw, url)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert len(vendor.seen) == seen  # the vendor is not hammered


def test_block_statuses_empty_turns_status_detection_off(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = blocking_gateway(
        make_gateway, dns, destinations=[{"match": "vendor.test", "block_statuses": []}]
    )
    url = f"http://vendor.test:{vendor.port}/"
    codes = [get(gw, url).status_code for _ in range(12)]
    assert codes.count(403) == 6  # .11 stays in rotation


def test_quarantine_survives_a_restart_with_a_state_file(
    tmp_path: Path, dns, vendor: VendorServer
) -> None:
    dns.table["vendor.test"] = ["127.0.0.1"]
    state = tmp_path / "egress-state.json"
    config = gateway_config(
        tmp_path,
        egress={"strategy": "round-robin", "state_file": str(state)},
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=clients(),
    )
    url = f"http://vendor.test:{vendor.port}/"
    with running(config) as gw:
        for _ in range(6):
            get(gw, url)
    saved = json.loads(state.read_text())
    assert OTHER_EGRESS in json.dumps(saved)
    with running(config) as gw:
        peers = {get(gw, url).json()["peer"] for _ in range(4)}
    assert peers == {ALLOWED_EGRESS}


def test_a_quarantined_ip_returns_to_rotation_after_its_back_off(
    make_gateway, dns, vendor: VendorServer
) -> None:
    import time

    gw = blocking_gateway(
        make_gateway, dns, egress={"strategy": "round-robin", "quarantine_s": 0.5}
    )
    url = f"http://vendor.test:{vendor.port}/"
    for _ in range(6):
        get(gw, url)
    assert {get(gw, url).json()["peer"] for _ in range(4)} == {ALLOWED_EGRESS}
    time.sleep(0.7)  # the back-off ends: .11 is tried again (and, still blocked, goes back)
    peers = [get(gw, url).json()["peer"] for _ in range(4)]
    assert OTHER_EGRESS in peers


class Resetter:
    """A 'vendor' that accepts and resets every connection (SO_LINGER 0), counting them."""

    def __init__(self) -> None:
        import socket
        import struct
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        linger = struct.pack("ii", 1, 0)

        def serve() -> None:
            while True:
                try:
                    conn, addr = self.sock.accept()
                except OSError:
                    return
                self.peers.append(addr[0])
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def test_connection_resets_quarantine_the_ip(make_gateway, dns) -> None:
    dns.table["reset.test"] = ["127.0.0.1"]
    resetter = Resetter()
    try:
        gw = blocking_gateway(make_gateway, dns)
        url = f"http://reset.test:{resetter.port}/"
        for _ in range(3):  # three resets from the pinned client's one IP
            r = get(gw, url, "pinned")
            assert r.status_code == 502
        r = get(gw, url, "pinned")
        assert r.status_code == 503 and "egress_quarantined" in r.headers["Proxy-Status"]
        assert resetter.peers == [OTHER_EGRESS] * 3
    finally:
        resetter.close()


def test_tunnel_resets_before_any_byte_quarantine_the_ip(make_gateway, dns) -> None:
    import socket

    from tests.helpers import TOKENS, basic

    dns.table["reset.test"] = ["127.0.0.1"]
    resetter = Resetter()
    try:
        gw = blocking_gateway(
            make_gateway,
            dns,
            clients=[
                {
                    "name": "pinned",
                    "token_hash": token_hash("pinned"),
                    "allow": ["*.test:*"],
                    "egress": OTHER_EGRESS,
                    "connect_ports": [resetter.port],
                }
            ],
        )
        connect = (
            f"CONNECT reset.test:{resetter.port} HTTP/1.1\r\n"
            f"Proxy-Authorization: {basic('pinned', TOKENS['pinned'])}\r\n\r\n"
        ).encode()
        for _ in range(3):
            with socket.create_connection(gw.http, timeout=5) as s:
                s.sendall(connect)
                assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
                s.sendall(b"\x16\x03\x01 client hello")  # the destination resets at the handshake
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
        with socket.create_connection(gw.http, timeout=5) as s:
            s.sendall(connect)
            assert s.recv(4096).startswith(b"HTTP/1.1 503 ")
    finally:
        resetter.close()
