"""A small HTTP/1.1 client for deliveries: one request, its status and Retry-After.

Deliveries need little of a general client: send a method, headers and a body in full,
read the status line and headers, drop a bounded answer body, keep the connection for
the next delivery to the same target. Doing only that costs a fraction of a general
client's time per request, which is most of what a delivery costs.

Framing is ours (Host and Content-Length are always set here; header names and values
with CR or LF are refused); the answer is parsed by httptools. A connection taken from
the pool that turns out to be closed before any answer byte arrives is replaced once
by a fresh one (the target never saw the request, or will see it twice: deliveries are
at least once anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

READ_BYTES = 65536
MAX_ANSWER_HEAD_BYTES = 65536
MAX_ANSWER_BODY_BYTES = 65536  # larger answers are not read: their connection is closed
IDLE_S = 30.0
MAX_IDLE_PER_ORIGIN = 256


class DeliveryError(Exception):
    """The request could not be sent or its answer could not be read."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a route delivers: parsed once per route."""

    scheme: str
    host: str
    port: int
    path: str  # path and query of the target URL, never empty
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, host, port, path, host_header)

    def with_query(self, query: str) -> str:
        """The request target with the webhook's query string appended."""
        if not query:
            return self.path
        return self.path + ("&" if "?" in self.path else "?") + query


@dataclass(slots=True)
class Answer:
    status: int
    retry_after: str | None


@dataclass(slots=True)
class _Reading:
    """httptools callbacks: what the head said and whether the message is complete."""

    retry_after: str | None = None
    head_done: bool = False
    keep_alive: bool = False
    done: bool = False
    body_bytes: int = 0
    parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        # llhttp answers this only until the message completes.
        assert self.parser is not None
        self.keep_alive = bool(self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.done = True


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0


@dataclass
class DeliveryClient:
    """Keep-alive connections per (scheme, host, port); `close()` at shutdown."""

    _idle: dict[tuple[str, str, int], list[_Connection]] = field(default_factory=dict)

    async def send(
        self,
        target: Target,
        method: str,
        request_target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None,
    ) -> Answer:
        head = _head(method, request_target, target.host_header, headers, len(body))
        async with asyncio.timeout(timeout_s):
            for _ in range(2):
                conn, reused = await self._connection(target, ssl_context)
                try:
                    answer, keep = await _exchange(conn, head, body, method == "HEAD")
                except _ClosedBeforeAnswer:
                    _close(conn)
                    if reused:
                        continue  # a stale pooled connection: once more on a fresh one
                    raise DeliveryError(
                        "the target closed the connection without an answer"
                    ) from None
                except BaseException:
                    _close(conn)
                    raise
                if keep:
                    self._release(target, conn)
                else:
                    _close(conn)
                return answer
        raise DeliveryError("the target closed the connection without an answer")

    async def _connection(
        self, target: Target, ssl_context: ssl.SSLContext | None
    ) -> tuple[_Connection, bool]:
        key = (target.scheme, target.host, target.port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_S and not conn.reader.at_eof():
                return conn, True
            _close(conn)
        tls = ssl_context if target.scheme == "https" else None
        try:
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=tls,
                server_hostname=target.host if tls is not None else None,
                limit=MAX_ANSWER_HEAD_BYTES,
            )
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS: {exc.reason or exc}") from None
        return _Connection(reader, writer), False

    def _release(self, target: Target, conn: _Connection) -> None:
        idle = self._idle.setdefault((target.scheme, target.host, target.port), [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            _close(conn)
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close(conn)
        self._idle.clear()


class _ClosedBeforeAnswer(Exception):
    pass


def _head(
    method: str, request_target: str, host: str, headers: list[tuple[str, str]], length: int
) -> bytes:
    lines = [f"{method} {request_target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise DeliveryError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    return "\r\n".join(lines).encode("latin-1", "replace") + b"\r\n\r\n"


async def _exchange(
    conn: _Connection, head: bytes, body: bytes, head_only: bool
) -> tuple[Answer, bool]:
    """Send one request, read its answer; (answer, may the connection be reused)."""
    conn.writer.write(head + body if len(body) < READ_BYTES else head)
    if len(body) >= READ_BYTES:
        conn.writer.write(body)
    await conn.writer.drain()
    reading = _Reading()
    parser = reading.parser = httptools.HttpResponseParser(reading)
    received = 0
    while not reading.done:
        data = await conn.reader.read(READ_BYTES)
        if not data:
            if received == 0:
                raise _ClosedBeforeAnswer
            if reading.head_done and not reading.done:
                # No framing: the body ends with the connection.
                return Answer(parser.get_status_code(), reading.retry_after), False
            raise DeliveryError("the target closed the connection in the middle of its answer")
        received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise DeliveryError(f"unreadable answer from the target: {exc}") from None
        if reading.head_done and (head_only or reading.body_bytes > MAX_ANSWER_BODY_BYTES):
            return Answer(parser.get_status_code(), reading.retry_after), False
        if not reading.head_done and received > MAX_ANSWER_HEAD_BYTES:
            raise DeliveryError("the target's answer head is too large")
    keep = reading.keep_alive and not conn.reader.at_eof()
    return Answer(parser.get_status_code(), reading.retry_after), keep


def _close(conn: _Connection) -> None:
    with contextlib.suppress(Exception):
        conn.writer.close()
