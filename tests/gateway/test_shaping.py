"""Rate and concurrency shaping per destination: tokens, fair queues, 429 + Retry-After,
tunnels counted, and a vendor's own Retry-After pausing the destination."""

from __future__ import annotations

import socket
import struct
import threading

import requests

from tests.helpers import TOKENS, RunningGateway, VendorServer, basic, token_hash


def shaped(
    make_gateway, dns, vendor: VendorServer, echo_port: int = 443, **destination
) -> RunningGateway:
    dns.table["vendor.test"] = ["127.0.0.1"]
    dns.table["api.vendor.test"] = ["127.0.0.1"]
    return make_gateway(
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        destinations=[{"match": "*.vendor.test", **destination}],
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["*.vendor.test:*", "vendor.test:*"],
                "connect_ports": [echo_port],
            }
        ],
    )


def get(gw: RunningGateway, url: str) -> requests.Response:
    return requests.get(url, proxies={"http": gw.proxy_url()}, timeout=10)


def test_rate_beyond_the_burst_gets_429_with_retry_after(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = shaped(make_gateway, dns, vendor, rate="1/min", burst=2, queue_timeout_s=0)
    answers = [get(gw, f"http://api.vendor.test:{vendor.port}/r{i}") for i in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 429, 429]
    refused = answers[2]
    assert "rate_limited" in refused.headers["Proxy-Status"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(vendor.seen) == 2


def test_requests_within_the_queue_timeout_wait_their_turn(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = shaped(make_gateway, dns, vendor, rate="20/s", burst=1, queue_timeout_s=3)
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(
                get(gw, f"http://api.vendor.test:{vendor.port}/q{i}").status_code
            )
        )
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert results == [200] * 6
    assert len(vendor.seen) == 6


def test_concurrency_cap_refuses_beyond_it_and_frees_the_slot(
    make_gateway, dns, vendor: VendorServer
) -> None:
    gw = shaped(make_gateway, dns, vendor, concurrency=1, queue_timeout_s=0.2)
    slow = threading.Thread(
        target=lambda: get(gw, f"http://api.vendor.test:{vendor.port}/slow?s=1")
    )
    slow.start()
    while not vendor.seen:  # the slow request holds the slot
        threading.Event().wait(0.02)
    second = get(gw, f"http://api.vendor.test:{vendor.port}/second")
    assert second.status_code == 429 and "concurrency_limited" in second.headers["Proxy-Status"]
    slow.join(10)
    assert get(gw, f"http://api.vendor.test:{vendor.port}/third").status_code == 200


def test_open_tunnels_count_against_concurrency(
    make_gateway, dns, vendor: VendorServer, echo
) -> None:
    dns.table["echo.vendor.test"] = ["127.0.0.1"]
    gw = shaped(make_gateway, dns, vendor, echo_port=echo.port, concurrency=1, queue_timeout_s=0)
    auth = f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n"
    connect = f"CONNECT echo.vendor.test:{echo.port} HTTP/1.1\r\n{auth}\r\n".encode()
    with socket.create_connection(gw.http, timeout=5) as first:
        first.sendall(connect)
        assert first.recv(4096).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(gw.http, timeout=5) as second:
            second.sendall(connect)
            answer = second.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429 ") and b"Retry-After: " in answer
        with socket.create_connection(gw.socks, timeout=5) as s:  # SOCKS5 counts too
            u, p = b"billing", TOKENS["billing"].encode()
            name = b"echo.vendor.test"
            s.sendall(
                b"\x05\x01\x02"
                + bytes([1, len(u)])
                + u
                + bytes([len(p)])
                + p
                + b"\x05\x01\x00\x03"
                + bytes([len(name)])
                + name
                + struct.pack("!H", echo.port)
            )
            assert s.recv(4) == b"\x05\x02\x01\x00"
            assert s.recv(10)[:2] == b"\x05\x01"
    # the tunnel closed: its slot is free again
    for _ in range(50):
        with socket.create_connection(gw.http, timeout=5) as again:
            again.sendall(connect)
            if again.recv(4096).startswith(b"HTTP/1.1 200 "):
                break
        threading.Event().wait(0.05)
    else:
        raise AssertionError("the tunnel's slot was never released")


def test_vendor_retry_after_pauses_the_destination(make_gateway, dns, vendor: VendorServer) -> None:
    gw = shaped(make_gateway, dns, vendor, rate="100/s", queue_timeout_s=0)
    first = get(gw, f"http://api.vendor.test:{vendor.port}/status?code=429&retry_after=30")
    assert first.status_code == 429 and first.headers["Retry-After"] == "30"  # the vendor's own
    paused = get(gw, f"http://api.vendor.test:{vendor.port}/after")
    assert paused.status_code == 429
    assert "destination_paused" in paused.headers["Proxy-Status"]
    assert 25 <= int(paused.headers["Retry-After"]) <= 31  # the pause, rounded up, + a token
    assert len(vendor.seen) == 1  # the paused request never reached the vendor


def test_first_matching_destination_decides_shaping(
    make_gateway, dns, vendor: VendorServer
) -> None:
    dns.table["api.vendor.test"] = ["127.0.0.1"]
    gw = make_gateway(
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        destinations=[
            {"match": "api.vendor.test", "sanitize": "strict"},
            {"match": "*.vendor.test", "rate": "1/min", "burst": 1, "queue_timeout_s": 0},
        ],
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": ["*.vendor.test:*"]}
        ],
    )
    codes = [get(gw, f"http://api.vendor.test:{vendor.port}/f{i}").status_code for i in range(3)]
    assert codes == [200, 200, 200]  # the first entry (no shaping) matched


def test_a_new_connection_costs_one_token_not_two(make_gateway, dns, vendor: VendorServer) -> None:
    # burst 2, no refill to speak of: two requests on fresh connections must both pass
    gw = shaped(make_gateway, dns, vendor, rate="1/min", burst=2, queue_timeout_s=0)
    gw.call(gw.gateway.upstreams.close_all)
    first = get(gw, f"http://api.vendor.test:{vendor.port}/one")
    gw.call(gw.gateway.upstreams.close_all)  # the second needs a new upstream connection too
    second = get(gw, f"http://api.vendor.test:{vendor.port}/two")
    assert (first.status_code, second.status_code) == (200, 200)
