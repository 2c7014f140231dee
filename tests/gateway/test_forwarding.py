"""Plain-HTTP forwarding: bodies and framing, keep-alive both ways, upstream errors."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess

import httpx
import requests

from tests.gateway.test_decisions import proxied_get, raw_request
from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    big_body_sha256,
)

AUTH = f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n"


def test_post_body_arrives_intact(gateway: RunningGateway, vendor: VendorServer) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    r = requests.post(
        vendor.url("/upload"), data=body, proxies={"http": gateway.proxy_url()}, timeout=20
    )
    assert r.status_code == 200
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_is_forwarded(gateway: RunningGateway, vendor: VendorServer) -> None:
    def gen():
        for i in range(50):
            yield (b"%03d" % i) * 100

    r = requests.post(
        vendor.url("/chunks"), data=gen(), proxies={"http": gateway.proxy_url()}, timeout=20
    )
    expected = b"".join((b"%03d" % i) * 100 for i in range(50))
    assert r.status_code == 200
    assert r.json()["headers"]["transfer-encoding"] == "chunked"
    assert r.json()["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_chunked_response_reaches_the_client(gateway: RunningGateway, vendor: VendorServer) -> None:
    r = proxied_get(gateway, vendor.url("/chunked"))
    assert r.status_code == 200
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.json()["peer"] == ALLOWED_EGRESS


def test_close_delimited_response_is_rechunked_for_a_keepalive_client(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url()}
        first = s.get(vendor.url("/close"), timeout=10)
        second = s.get(vendor.url("/after-close"), timeout=10)
    assert first.status_code == 200 and first.json()["path"] == "/close"
    assert first.headers.get("Transfer-Encoding") == "chunked"
    assert second.json()["path"] == "/after-close"


def test_large_response_streams_through(gateway: RunningGateway, vendor: VendorServer) -> None:
    n = 20 * 1024 * 1024
    for mode in ("length", "chunked"):
        with (
            httpx.Client(proxy=gateway.proxy_url(), timeout=30) as client,
            client.stream("GET", vendor.url(f"/big?n={n}&mode={mode}")) as r,
        ):
            h = hashlib.sha256()
            for piece in r.iter_bytes():
                h.update(piece)
        assert r.status_code == 200
        assert h.hexdigest() == big_body_sha256(n)


def test_head_response_has_no_body_and_the_connection_stays_usable(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url()}
        head = s.head(vendor.url("/head"), timeout=10)
        after = s.get(vendor.url("/after-head"), timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) > 0
    assert head.content == b""
    assert after.json()["path"] == "/after-head"


def test_204_and_304_have_no_body(gateway: RunningGateway, vendor: VendorServer) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url()}
        for code in (204, 304):
            r = s.get(vendor.url(f"/status?code={code}"), timeout=10)
            assert r.status_code == code
            assert r.content == b""
        assert s.get(vendor.url("/next"), timeout=10).status_code == 200


def test_keepalive_client_reuses_one_pooled_upstream_connection(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    with requests.Session() as s:
        s.proxies = {"http": gateway.proxy_url()}
        for i in range(5):
            assert s.get(vendor.url(f"/k{i}"), timeout=10).status_code == 200
    ports = {port for peer, port, _, _ in vendor.seen}
    assert len(vendor.seen) == 5
    assert len(ports) == 1  # one upstream TCP connection carried all five


def test_separate_client_connections_share_the_upstream_pool(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    for i in range(3):
        assert proxied_get(gateway, vendor.url(f"/p{i}")).status_code == 200
    assert len({port for _, port, _, _ in vendor.seen}) == 1


def test_pipelined_requests_are_answered_in_order(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    req = "".join(
        f"GET {vendor.url(f'/pipe{i}')} HTTP/1.1\r\nHost: 127.0.0.1:{vendor.port}\r\n{AUTH}"
        + ("Connection: close\r\n" if i == 2 else "")
        + "\r\n"
        for i in range(3)
    ).encode()
    with socket.create_connection(gateway.http, timeout=5) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.index(b"/pipe0") < data.index(b"/pipe1") < data.index(b"/pipe2")


def test_one_connection_switching_targets_and_hosts_is_judged_per_request(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    """The connection keeps its last target's parse: a new URL, or the same URL with a
    Host that disagrees, must still be seen for what it is."""
    url_a, url_b = vendor.url("/a"), vendor.url("/b")
    good = f"Host: 127.0.0.1:{vendor.port}\r\n"
    heads = [
        (url_a, good),
        (url_b, good),
        (url_a, good),
        (url_a, "Host: other.example\r\n"),  # refused, and the connection closes
        (url_a, good),
    ]
    req = "".join(f"GET {url} HTTP/1.1\r\n{host}{AUTH}\r\n" for url, host in heads).encode()
    with socket.create_connection(gateway.http, timeout=5) as s:
        s.sendall(req)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"200", b"200", b"400"]
    assert [path for _, _, _, path in vendor.seen] == ["/a", "/b", "/a"]


def test_hop_by_hop_and_proxy_headers_are_not_forwarded(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    r = requests.get(
        vendor.url("/headers"),
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "5",
            "X-End-To-End": "kept",
            "TE": "trailers",
        },
        proxies={"http": gateway.proxy_url()},
        timeout=10,
    )
    seen = r.json()["headers"]
    assert seen["x-end-to-end"] == "kept"
    for name in ("x-secret-hop", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen
    assert seen["host"] == f"127.0.0.1:{vendor.port}"


def test_expect_100_continue_upload_with_curl(
    gateway: RunningGateway, vendor: VendorServer, tmp_path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 2_000_000)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-x",
            gateway.proxy_url(),
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{payload}",
            vendor.url("/expect"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["body_len"] == 2_000_000


def test_http10_client_gets_a_close_delimited_answer(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    out = raw_request(gateway, f"GET {vendor.url('/ten')} HTTP/1.0\r\n{AUTH}\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b'"/ten"' in out


def test_refused_port_gets_502_connection_refused(gateway: RunningGateway) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r = proxied_get(gateway, f"http://127.0.0.1:{port}/")
    assert r.status_code == 502
    assert "connection_refused" in r.headers["Proxy-Status"]


def test_unresolvable_name_gets_502_dns_error(make_gateway, dns) -> None:
    gw = make_gateway(dns={"servers": [f"127.0.0.1:{dns.port}"]})
    r = proxied_get(gw, "http://nonexistent.vendor.test/")
    assert r.status_code == 502
    assert "dns_error" in r.headers["Proxy-Status"]


def test_connect_timeout_gets_504(make_gateway) -> None:
    # A listener with a full accept queue drops further SYNs: connect() hangs.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        for f in fillers:
            f.setblocking(False)
            f.connect_ex(full.getsockname())
        gw = make_gateway(timeouts={"connect_s": 0.5})
        r = proxied_get(gw, f"http://127.0.0.1:{full.getsockname()[1]}/")
        for f in fillers:
            f.close()
    assert r.status_code == 504
    assert "connection_timeout" in r.headers["Proxy-Status"]


def test_upstream_that_closes_without_answering_gets_502(gateway: RunningGateway) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        import threading

        def slam() -> None:
            conn, _ = srv.accept()
            conn.recv(65536)
            conn.close()

        t = threading.Thread(target=slam, daemon=True)
        t.start()
        r = proxied_get(gateway, f"http://127.0.0.1:{srv.getsockname()[1]}/")
        t.join(5)
    assert r.status_code == 502
    assert "connection_terminated" in r.headers["Proxy-Status"]


def test_https_absolute_form_is_refused_with_a_hint(gateway: RunningGateway) -> None:
    out = raw_request(
        gateway, f"GET https://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}\r\n".encode()
    )
    assert out.startswith(b"HTTP/1.1 400 ")


def test_host_header_disagreeing_with_the_target_is_refused(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    out = raw_request(
        gateway, f"GET {vendor.url('/x')} HTTP/1.1\r\nHost: other.example\r\n{AUTH}\r\n".encode()
    )
    assert out.startswith(b"HTTP/1.1 400 ")
    assert vendor.seen == []


def test_an_empty_flow_setting_serves_without_a_flow_log(
    make_gateway, vendor: VendorServer, tmp_path
) -> None:
    gw = make_gateway(log={"flow": ""})
    assert proxied_get(gw, vendor.url("/")).status_code == 200
    assert gw.call(lambda: gw.gateway.flowlog.dropped) == 0
    assert not list(tmp_path.glob("*.jsonl"))
