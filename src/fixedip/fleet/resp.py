"""A small pipelined Redis client for the gateway's event loop.

Why not redis-py's asyncio client: the limiter asks Redis once per request, and the
whole budget for that is a few tens of microseconds of CPU. `benchmarks/redis_client.py`
measures it: 13 µs of CPU per EVALSHA here against 120 µs for redis-py's asyncio client
with 50 concurrent callers (benchmarks/results/redis-client.md). Here every command is one
write on a single connection and one future resolved when its reply arrives, in order
(RESP2 answers in the order asked), so many requests share one socket and no call
waits for another. A call that times out leaves its future in the queue; its reply,
when it comes, is dropped, so the connection stays in step.

Supports `redis://` and `rediss://` (TLS), AUTH (password, or ACL user and password)
and SELECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from typing import Any

MAX_PENDING = 10_000  # commands in flight on the connection before callers are refused
MAX_REPLY_BYTES = 16 << 20

Reply = Any  # bytes | int | None | list[Reply] | ReplyError


class StoreUnavailable(Exception):
    """Redis cannot be asked now (not connected, too slow, or gone)."""


class ReplyError(Exception):
    """Redis answered with an error (`-ERR ...`)."""


class _Incomplete(Exception):
    pass


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("no booleans in Redis commands")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Reply, int]:
    """One reply starting at `pos`: (value, position after it); _Incomplete if cut short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if size > MAX_REPLY_BYTES:
            raise ValueError(f"reply of {size} bytes is over the limit")
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP reply: {bytes(buf[pos - len(line) - 3 : pos])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[asyncio.Future[Reply]] = deque()
        self.buf = bytearray()
        self.outgoing: list[bytes] = []
        self.lost = False

    def flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        pending = self.pending
        try:
            while pos < len(buf):
                value, pos = parse(buf, pos)
                future = pending.popleft()
                if not future.done():
                    if isinstance(value, ReplyError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except (ValueError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self._fail(StoreUnavailable(f"bad reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(StoreUnavailable(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(error)


def _ignore(future: asyncio.Future[Reply]) -> None:
    if not future.cancelled():
        future.exception()


def _expire(future: asyncio.Future[Reply], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(
            StoreUnavailable(f"Redis did not answer within {timeout_s * 1000:.0f} ms")
        )


class Redis:
    """One connection to Redis, re-made by `connect()` after it is lost."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self._username, self._password = username, password
        self._tls, self._server_name = tls, server_name
        self._proto: _Protocol | None = None
        self._scripts: dict[str, str] = {}  # sha1 -> source

    @property
    def connected(self) -> bool:
        return self._proto is not None and not self._proto.lost

    async def connect(self, timeout_s: float) -> None:
        """(Re)connect, authenticate and select the database; raises StoreUnavailable."""
        self.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, proto = await loop.create_connection(
                    _Protocol,
                    self.host,
                    self.port,
                    ssl=self._tls,
                    server_hostname=self._server_name if self._tls else None,
                )
                self._proto = proto
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await self.send("AUTH", *auth)
                if self.db:
                    await self.send("SELECT", self.db)
                for source in self._scripts.values():
                    await self.send("SCRIPT", "LOAD", source)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.close()
            raise StoreUnavailable(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc or 'timed out'}"
            ) from None
        except ReplyError as exc:
            self.close()
            raise StoreUnavailable(f"Redis at {self.host}:{self.port} refused us: {exc}") from None

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()
        self._proto = None

    def send(self, *args: Any) -> asyncio.Future[Reply]:
        """Queue one command; the future holds its reply. Raises StoreUnavailable at once
        when there is no connection (callers never wait on a dead store)."""
        proto = self._proto
        if proto is None or proto.lost or proto.transport is None:
            raise StoreUnavailable("not connected to Redis")
        if len(proto.pending) >= MAX_PENDING:
            raise StoreUnavailable("too many Redis commands in flight")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        proto.pending.append(future)
        # Commands asked for in one turn of the loop leave in one write (one syscall).
        if not proto.outgoing:
            loop.call_soon(proto.flush)
        proto.outgoing.append(encode(args))
        return future

    def fire(self, *args: Any) -> None:
        """Send without waiting for the answer (renewals, releases); failures are ignored
        here because the next heartbeat notices a lost connection."""
        with contextlib.suppress(StoreUnavailable):
            self.send(*args).add_done_callback(_ignore)

    async def call(self, *args: Any, timeout_s: float) -> Reply:
        """Send and wait at most `timeout_s`; StoreUnavailable on timeout or loss.

        The timer fails the future itself: its late reply is then dropped in order."""
        future = self.send(*args)
        timer = future.get_loop().call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def script(self, source: str) -> str:
        """Register a Lua script (loaded on every connect); returns its SHA1."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        if self.connected:  # commands are answered in order: it is there before any EVALSHA
            self.fire("SCRIPT", "LOAD", source)
        return sha

    def send_script(self, sha: str, keys: list[str], args: list[Any]) -> asyncio.Future[Reply]:
        return self.send("EVALSHA", sha, len(keys), *keys, *args)

    async def run_script(
        self, sha: str, keys: list[str], args: list[Any], *, timeout_s: float
    ) -> Reply:
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args, timeout_s=timeout_s)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call(
            "EVAL", self._scripts[sha], len(keys), *keys, *args, timeout_s=timeout_s
        )
