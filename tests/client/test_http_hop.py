"""The SDK's small HTTP client speaking to a proxy: which credentials it sends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from fixedip.client._http import Hop, fetch

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class OneShotProxy:
    """Accepts one connection, keeps the request head it receives, answers 200."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.head = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            while b"\r\n\r\n" not in self.head:
                data = conn.recv(65536)
                if not data:
                    break
                self.head += data
            conn.sendall(ANSWER)


@pytest.fixture
def proxy() -> Iterator[OneShotProxy]:
    server = OneShotProxy()
    yield server
    server.sock.close()
    server.thread.join(5)


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [("", None), ("Basic YmlsbGluZzp0b2tlbg==", b"Basic YmlsbGluZzp0b2tlbg==")],
)
def test_proxy_authorization_is_sent_only_when_the_hop_has_credentials(
    proxy: OneShotProxy, authorization: str, expected: bytes | None
) -> None:
    hop = Hop("127.0.0.1", proxy.port, None, authorization)
    response = fetch("http://vendor.test/ip", timeout_s=5, via=hop)
    assert response.status == 200 and response.body == b"ok"
    lines = proxy.head.split(b"\r\n")
    assert lines[0] == b"GET http://vendor.test/ip HTTP/1.1"
    values = [
        line.split(b":", 1)[1].strip()
        for line in lines[1:]
        if b":" in line and line.split(b":", 1)[0].lower() == b"proxy-authorization"
    ]
    assert values == ([] if expected is None else [expected])
