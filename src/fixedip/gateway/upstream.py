"""Upstream TCP connections: bound to an egress IP before connecting, pooled when idle.

The socket is bound to the egress address with IP_BIND_ADDRESS_NO_PORT set, so the
kernel picks the ephemeral port at connect time per destination (4-tuple) instead of
reserving one per bind: one egress IP can then hold far more than 64k connections.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from fixedip.policy.decision import Reason
from fixedip.proto.http1 import ResponseParser

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (egress bind, destination address, port, TLS server name or "" for plain TCP), the
# addresses as canonical text: a str hashes in C, an ipaddress object in Python.
PoolKey = tuple[str, str, int, str]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


class Sink(Protocol):
    """Whoever currently owns an upstream connection (a session or a tunnel)."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause(self) -> None: ...
    def upstream_resume(self) -> None: ...


class EgressDown(Exception):
    """The egress address cannot be bound any more: take it out of rotation."""


class UpstreamError(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Upstream(asyncio.Protocol):
    """One connection to a destination; bytes go to `sink`, or close it when idle."""

    __slots__ = (
        "closed",
        "early",
        "early_eof",
        "idle_since",
        "in_pool",
        "key",
        "parser",
        "pool",
        "sink",
        "transport",
    )

    def __init__(self, key: PoolKey, pool: UpstreamPool) -> None:
        self.key = key
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.parser: ResponseParser | None = None
        self.idle_since = 0.0
        self.closed = False
        self.in_pool = False
        # A fresh connection may hear from a server that speaks first (SMTP, SSH)
        # before its session attaches: keep those bytes for it.
        self.early: list[bytes] = []
        self.early_eof = False

    def attach(self, sink: Sink) -> None:
        """Hand the connection to `sink`, delivering anything that arrived before."""
        self.sink = sink
        self.in_pool = False
        early, self.early = self.early, []
        if early and self.transport is not None:
            self.transport.resume_reading()
        for data in early:
            sink.upstream_data(data)
        if self.early_eof and self.sink is sink:
            sink.upstream_eof()
        if self.closed and self.sink is sink:  # it went away before anyone owned it
            self.sink = None
            sink.upstream_lost(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.upstream_data(data)
        elif self.in_pool:  # an idle pooled connection must stay silent
            self.close()
        else:
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.sink is not None:
            self.sink.upstream_eof()
            return True
        if self.in_pool:
            return False
        self.early_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.parser is not None:
            self.parser.release()
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            self.pool.forget(self)

    def abort(self) -> None:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.pool.forget(self)


class UpstreamPool:
    """Idle keep-alive connections per (egress, address, port, TLS name), bounded and timed
    out."""

    def __init__(self, idle_s: float, per_key: int, loop: asyncio.AbstractEventLoop) -> None:
        self.idle_s = idle_s
        self.per_key = per_key
        # Kept rather than asked for: on Python 3.11 asyncio.get_running_loop() makes a
        # getpid() system call, and give() runs once per request.
        self.loop = loop
        self._idle: dict[PoolKey, list[Upstream]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, key: PoolKey) -> Upstream | None:
        conns = self._idle.get(key)
        while conns:
            up = conns.pop()  # the most recently used: the least likely to have timed out
            up.in_pool = False
            if not up.closed and up.transport is not None and not up.transport.is_closing():
                return up
        return None

    def give(self, up: Upstream) -> None:
        """Return a connection whose last response ended cleanly; closes it if over bound."""
        up.sink = None
        conns = self._idle.setdefault(up.key, [])
        if up.closed or len(conns) >= self.per_key:
            up.close()
            return
        if up.transport is not None and not up.transport.is_reading():
            up.transport.resume_reading()  # paused for backpressure: it must hear a close
        up.in_pool = True
        up.idle_since = loop_time = self.loop.time()
        conns.append(up)
        if self._sweeper is None:
            # One timer for the whole pool instead of one per returned connection.
            self._sweeper = self.loop.call_at(loop_time + self.idle_s, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than idle_s; runs while any are pooled."""
        self._sweeper = None
        loop = self.loop
        cutoff = loop.time() - self.idle_s
        oldest = None
        for conns in list(self._idle.values()):
            for up in list(conns):
                if up.idle_since <= cutoff:
                    up.close()
                elif oldest is None or up.idle_since < oldest:
                    oldest = up.idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self.idle_s, self._sweep)

    def forget(self, up: Upstream) -> None:
        up.in_pool = False
        conns = self._idle.get(up.key)
        if conns and up in conns:
            conns.remove(up)
            if not conns:
                del self._idle[up.key]

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        for conns in list(self._idle.values()):
            for up in list(conns):
                up.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def connect(
    key: PoolKey,
    pool: UpstreamPool,
    timeout_s: float,
    factory: Callable[[PoolKey, UpstreamPool], Upstream] = Upstream,
    ssl_context: ssl.SSLContext | None = None,
) -> Upstream:
    """A new connection from egress `key[0]` to `key[1]:key[2]`; with `ssl_context`,
    TLS to server name `key[3]`, the certificate verified (route mode)."""
    bind, address, port, server_name = key
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((bind, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EgressDown(f"egress {bind} is not assigned to this host") from None
            raise UpstreamError(Reason.EGRESS_UNAVAILABLE, f"bind {bind}: {exc.strerror}") from None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                await loop.sock_connect(sock, (address, port))
        except TimeoutError:
            raise UpstreamError(
                Reason.UPSTREAM_TIMEOUT, f"connect to {address}:{port} timed out"
            ) from None
        except ConnectionRefusedError:
            raise UpstreamError(
                Reason.UPSTREAM_REFUSED, f"{address}:{port} refused the connection"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EgressDown(f"egress {bind} is not assigned to this host") from None
            reason = (
                Reason.UPSTREAM_UNREACHABLE if exc.errno in _UNREACHABLE else Reason.UPSTREAM_CLOSED
            )
            raise UpstreamError(
                reason, f"connect to {address}:{port}: {exc.strerror or exc}"
            ) from None
        if ssl_context is None:
            _, up = await loop.create_connection(lambda: factory(key, pool), sock=sock)
            return up
        try:
            _, up = await loop.create_connection(
                lambda: factory(key, pool),
                sock=sock,
                ssl=ssl_context,
                server_hostname=server_name,
                ssl_handshake_timeout=timeout_s,
            )
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            raise UpstreamError(
                Reason.UPSTREAM_TLS_FAILED, f"TLS to {server_name} ({address}:{port}): {exc}"
            ) from None
        return up
    except BaseException:
        sock.close()
        raise
