"""A finished connection leaves nothing for the garbage collector.

Objects in a reference cycle outlive their connection until a collection finds them,
which costs CPU on every connection (about 10 µs of a new TLS connection was the
collector's) and holds their memory meanwhile. Each test turns automatic collection off,
runs real connections through a real gateway, and then asks the collector what it would
have had to free.
"""

from __future__ import annotations

import gc
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tests.helpers import TOKENS, RunningGateway, VendorServer, basic, token_hash, wait_for
from tests.tlskit import GatewayPKI, forward_get, https_address, tls_connect, tls_overrides

MakeGateway = Callable[..., RunningGateway]
OURS = ("fixedip", "httptools", "uvloop")


@contextmanager
def cycles_found() -> Iterator[Counter[str]]:
    """Collect automatically never inside the block; on leaving it, fill the counter with
    the types (of fixedip, httptools and uvloop) of the objects only a collection frees."""
    found: Counter[str] = Counter()
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        for obj in gc.garbage:
            kind = type(obj)
            if kind.__module__.startswith(OURS):
                found[f"{kind.__module__}.{kind.__qualname__}"] += 1
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def quiet(gw: RunningGateway) -> bool:
    return gw.call(lambda: not gw.gateway.sessions)


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    """One request on its own connection (it asks to close); all that comes back."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def request(method: str, url: str, *fields: str, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {url} HTTP/1.1",
        f"Host: {url.split('/')[2]}",
        f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}",
        "Connection: close",
        *fields,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_plain_connections_leave_no_cycles(gateway: RunningGateway, vendor: VendorServer) -> None:
    """Each request on its own connection, through both of the parser's paths: the
    one-pass parser (a plain GET) and llhttp (a chunked request body, a chunked
    response, the answer to HEAD), an upstream connection the vendor closes, and a
    refused request."""
    chunked = ("Transfer-Encoding: chunked",)
    with cycles_found() as found:
        for _ in range(3):
            for sent in [
                request("GET", vendor.url("/a")),
                request("POST", vendor.url("/echo"), *chunked, body=b"4\r\nbody\r\n0\r\n\r\n"),
                request("GET", vendor.url("/chunked")),
                request("HEAD", vendor.url("/chunked")),
                request("GET", vendor.url("/close")),  # the vendor closes: the upstream ends
            ]:
                assert exchange(gateway.http, sent).startswith(b"HTTP/1.1 200 "), sent
            refused = exchange(gateway.http, request("GET", "http://127.0.0.1:9/"))
            assert refused.startswith(b"HTTP/1.1 403 ")
        assert wait_for(lambda: quiet(gateway))
    assert len(vendor.seen) == 15
    assert not found, f"objects left in reference cycles: {dict(found)}"


def test_tls_connections_leave_no_cycles(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    context = pki.client_context()
    with cycles_found() as found:
        for _ in range(5):
            with tls_connect(https_address(gw), context) as sock:
                assert forward_get(sock, vendor.url("/tls")).startswith(b"HTTP/1.1 200 ")
        with tls_connect(https_address(gw), context) as sock:  # ends without a request
            sock.sendall(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\n")
        with socket.create_connection(https_address(gw), timeout=5) as raw:  # not TLS at all
            raw.sendall(
                f"GET / HTTP/1.1\r\nProxy-Authorization: {basic('billing', 'x')}\r\n\r\n".encode()
            )
            raw.recv(100)
        assert wait_for(lambda: quiet(gw))
    assert len(vendor.seen) == 5
    assert not found, f"objects left in reference cycles: {dict(found)}"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20
    )


def test_tunnels_leave_no_cycles(make_gateway: MakeGateway, vendor: VendorServer) -> None:
    """SOCKS5 and CONNECT tunnels, and a SOCKS5 client with a wrong password."""
    client = {
        "name": "billing",
        "token_hash": token_hash("billing"),
        "allow": ["127.0.0.1:*"],
        "connect_ports": [vendor.port],
    }
    gw = make_gateway(clients=[client])
    token = TOKENS["billing"]
    socks = "billing:{}@{}:{}"
    with cycles_found() as found:
        for _ in range(3):
            via_socks = curl("--socks5", socks.format(token, *gw.socks), vendor.url("/tunnel"))
            assert '"peer"' in via_socks.stdout, via_socks.stderr
            proxy = f"http://billing:{token}@{gw.http[0]}:{gw.http[1]}"
            via_connect = curl("-p", "-x", proxy, vendor.url("/tunnel"))
            assert '"peer"' in via_connect.stdout, via_connect.stderr
            wrong = curl("--socks5", socks.format("wrong", *gw.socks), vendor.url("/never"))
            assert wrong.returncode != 0
        assert wait_for(lambda: quiet(gw))
    assert [path for *_, path in vendor.seen] == ["/tunnel"] * 6
    assert not found, f"objects left in reference cycles: {dict(found)}"
