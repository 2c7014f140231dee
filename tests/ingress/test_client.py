"""The delivery client against targets that answer in every framing HTTP/1.1 allows,
close idle connections, or serve HTTPS; real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from fixedip.ingress.client import DeliveryClient, DeliveryError, Target
from tests.helpers import RawVendor


@pytest.fixture
def raw() -> Iterator[Callable[..., RawVendor]]:
    """A target answering the n-th request with `answer(n)`, closing after each answer
    when `close_after`."""
    made: list[RawVendor] = []

    def make(answer: Callable[[int], bytes], close_after: bool = False) -> RawVendor:
        target = RawVendor(lambda n: ([answer(n)], close_after))
        made.append(target)
        return target

    yield make
    for target in made:
        target.close()


def send(client: DeliveryClient, url: str, **kw: object) -> tuple[int, str | None]:
    async def go() -> tuple[int, str | None]:
        target = Target.parse(url)
        answer = await client.send(
            target,
            str(kw.get("method", "POST")),
            target.with_query(str(kw.get("query", ""))),
            list(kw.get("headers", [("X-A", "1")])),  # type: ignore[call-overload]
            bytes(kw.get("body", b"payload")),  # type: ignore[call-overload]
            2.0,
            kw.get("ssl"),  # type: ignore[arg-type]
        )
        return answer.status, answer.retry_after

    return asyncio.run(go())


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_request_is_framed_with_host_length_and_headers_in_order(
    raw: Callable[..., RawVendor],
) -> None:
    target = raw(lambda n: OK)
    status, _ = send(
        DeliveryClient(),
        f"http://127.0.0.1:{target.port}/fn?x=1",
        query="a=2",
        headers=[("X-Z", "1"), ("x-a", "2")],
        body=b"hello",
    )
    assert status == 200
    [request] = target.requests
    assert request.startswith(b"POST /fn?x=1&a=2 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{target.port}\r\n".encode() in request
    assert request.index(b"X-Z: 1") < request.index(b"x-a: 2")
    assert request.endswith(b"Content-Length: 5\r\n\r\nhello")


def test_keep_alive_connections_are_reused(raw: Callable[..., RawVendor]) -> None:
    target = raw(lambda n: OK)

    async def three() -> list[int]:
        client = DeliveryClient()
        t = Target.parse(f"http://127.0.0.1:{target.port}/")
        out = []
        for _ in range(3):
            out.append((await client.send(t, "POST", "/", [], b"x", 2.0, None)).status)
        await client.close()
        return out

    assert asyncio.run(three()) == [200, 200, 200]
    assert target.connections == 1


def test_a_pooled_connection_the_target_closed_is_replaced(
    raw: Callable[..., RawVendor],
) -> None:
    target = raw(lambda n: OK, close_after=True)

    async def two() -> list[int]:
        client = DeliveryClient()
        t = Target.parse(f"http://127.0.0.1:{target.port}/")
        first = await client.send(t, "POST", "/", [], b"x", 2.0, None)
        await asyncio.sleep(0.1)  # the target has closed the kept connection by now
        second = await client.send(t, "POST", "/", [], b"x", 2.0, None)
        await client.close()
        return [first.status, second.status]

    assert asyncio.run(two()) == [200, 200]
    assert len(target.requests) == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbusy\r\n0\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\nConnection: close\r\n\r\nno length: ends at close",
        b"HTTP/1.0 503 Busy\r\nRetry-After: 7\r\n\r\n",
    ],
    ids=["chunked", "close-delimited", "http-1.0"],
)
def test_status_and_retry_after_in_every_framing(
    raw: Callable[..., RawVendor], answer: bytes
) -> None:
    target = raw(lambda n: answer, close_after=b"chunked" not in answer)
    assert send(DeliveryClient(), f"http://127.0.0.1:{target.port}/") == (503, "7")


def test_a_large_answer_body_is_not_read_to_the_end(raw: Callable[..., RawVendor]) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 200_000
    target = raw(lambda n: big)
    assert send(DeliveryClient(), f"http://127.0.0.1:{target.port}/")[0] == 200


def test_garbage_from_the_target_is_a_delivery_error(raw: Callable[..., RawVendor]) -> None:
    target = raw(lambda n: b"SMTP ready\r\n\r\n", close_after=True)
    with pytest.raises(DeliveryError, match="unreadable answer"):
        send(DeliveryClient(), f"http://127.0.0.1:{target.port}/")


def test_a_header_with_a_line_break_is_refused_before_sending(
    raw: Callable[..., RawVendor],
) -> None:
    target = raw(lambda n: OK)
    with pytest.raises(DeliveryError, match="line break"):
        send(
            DeliveryClient(),
            f"http://127.0.0.1:{target.port}/",
            headers=[("X-Evil", "a\r\nHost: other")],
        )
    assert target.requests == []


def test_https_target_is_verified_against_the_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve_twice() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += tls.recv(65536)
                    tls.sendall(OK)
            except (ssl.SSLError, OSError):
                conn.close()  # the untrusting client hangs up in the handshake

    threading.Thread(target=serve_twice, daemon=True).start()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    try:
        assert send(DeliveryClient(), f"https://127.0.0.1:{port}/", ssl=client_ctx)[0] == 200
        untrusted = ssl.create_default_context()
        with pytest.raises((DeliveryError, ssl.SSLError)):
            send(DeliveryClient(), f"https://127.0.0.1:{port}/", ssl=untrusted)
    finally:
        listener.close()


def test_target_parsing() -> None:
    t = Target.parse("https://abc.lambda-url.eu-west-1.on.aws/")
    assert (t.host, t.port, t.path, t.host_header) == (
        "abc.lambda-url.eu-west-1.on.aws",
        443,
        "/",
        "abc.lambda-url.eu-west-1.on.aws",
    )
    t = Target.parse("http://[::1]:8080/a?b=1")
    assert (t.host, t.port, t.host_header, t.with_query("c=2")) == (
        "::1",
        8080,
        "[::1]:8080",
        "/a?b=1&c=2",
    )
