"""Bulk transfers move their bytes in the kernel: `splice(2)` through a pipe, socket to
socket.

A tunnel starts on the event loop's transports, where every chunk crosses Python twice
(read into a bytes object, written out again). Once it has carried `SPLICE_AFTER` bytes
it is a bulk transfer, and the session hands both sockets to a `Splicer`: each direction
splices from its source socket into a pipe and from the pipe into the other socket, so
the payload never leaves the kernel and Python runs once per pipe-full, not per chunk.
The rest of a plain-forward response body of known length, 1 MiB or more, goes the same
way (`BodySplicer`, one direction, exactly that many bytes).

Idle tunnels never switch (a spliced tunnel holds six more descriptors: two pipes and
a duplicate of each socket), and at most `max_spliced()` transfers are spliced at once,
so a client opening many busy tunnels can exhaust neither the descriptor limit nor
kernel memory. TLS on either side (the TLS listener, a route's upstream) needs the bytes
in Python, so those transfers stay on the transports.

The transports keep owning the sockets: the splicer works on duplicates of their
descriptors while the transports' reading is paused and their write buffers are empty,
and closing ends with the transports' own close, so the session's bookkeeping (flow
record, metrics, limits) is the same either way.

Readiness comes from an epoll set of our own, itself watched by the event loop. uvloop's
`add_reader` closes its watcher for good when the kernel reports an error on the
descriptor (a reset mid-transfer), and a callback that still found data to read then
never hears of the socket again; with our own set, an error is just another event.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import resource
import select
import socket
from collections.abc import Callable
from typing import Any

# Bytes a tunnel carries on the transports before it switches (counting both ways): small
# exchanges (a TLS handshake, an API call) never pay for the pipes.
SPLICE_AFTER = 1024 * 1024
PIPE_BYTES = 1024 * 1024  # asked of F_SETPIPE_SZ; the kernel may give less
# At most this many tunnels spliced at once: their pipes hold up to twice PIPE_BYTES each
# (256 MiB of kernel memory in all, at worst); busy tunnels beyond it stay on the
# transports. Pipes of 256 KiB moved a third less (1.4 against 1.9 GB/s).
MAX_SPLICED = 128
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

AVAILABLE = hasattr(os, "splice") and hasattr(select, "epoll")
_active = 0
_EVENTS_PER_WAKE = 256
_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP if AVAILABLE else 0
_WRITE_EVENTS = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP if AVAILABLE else 0

log = logging.getLogger(__name__)


@functools.cache
def max_spliced() -> int:
    """Spliced transfers allowed at once: MAX_SPLICED, and no more than a sixteenth of
    the descriptor limit (a tunnel holds six extra descriptors)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_SPLICED
    return max(0, min(MAX_SPLICED, soft // 16))


def active() -> int:
    """Transfers spliced right now."""
    return _active


def plain_socket(transport: asyncio.BaseTransport | None) -> socket.socket | Any | None:
    """The transport's socket if bytes on it are plain TCP (no TLS), else None."""
    if transport is None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return None
    return sock


class _Poller:
    """One epoll set per event loop for every spliced socket, level-triggered, read by
    the loop whenever it is readable. A descriptor nobody waits on is taken out of the
    set (an error or hang-up is reported even with no interest, and would spin)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0  # splicers; the set is closed when the last one lets go
        self.epoll = select.epoll()
        self.waiting: dict[int, list[Callable[[], None] | None]] = {}  # fd: [reader, writer]
        loop.add_reader(self.epoll.fileno(), self._dispatch)

    def want(
        self,
        fd: int,
        reader: Callable[[], None] | None,
        writer: Callable[[], None] | None,
    ) -> None:
        registered = fd in self.waiting
        if reader is None and writer is None:
            if registered:
                del self.waiting[fd]
                self.epoll.unregister(fd)
            return
        mask = (select.EPOLLIN if reader else 0) | (select.EPOLLOUT if writer else 0)
        self.waiting[fd] = [reader, writer]
        if registered:
            self.epoll.modify(fd, mask)
        else:
            self.epoll.register(fd, mask)

    def _dispatch(self) -> None:
        for fd, events in self.epoll.poll(0, _EVENTS_PER_WAKE):
            for which, wanted in ((0, _READ_EVENTS), (1, _WRITE_EVENTS)):
                handlers = self.waiting.get(fd)  # a callback may have changed them
                callback = handlers[which] if handlers is not None else None
                if callback is not None and events & wanted:
                    try:
                        callback()
                    except Exception:  # a bug: logged, and the other sockets go on
                        log.exception("splice callback failed for descriptor %d", fd)

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            del _pollers[self.loop]
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()


_pollers: dict[asyncio.AbstractEventLoop, _Poller] = {}


def _poller(loop: asyncio.AbstractEventLoop) -> _Poller:
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _Poller(loop)
    poller.users += 1
    return poller


class _Direction:
    """One way through the tunnel: source socket → pipe → destination socket."""

    def __init__(
        self,
        splicer: Splice,
        src: socket.socket,
        dst: socket.socket,
        count: Callable[[int], None],
        limit: int | None = None,
    ) -> None:
        self.splicer = splicer
        self.src, self.dst = src, dst
        self.count = count
        self.left = limit  # bytes still to move, when the direction carries a known length
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, _F_SETPIPE_SZ, PIPE_BYTES)
        self.in_pipe = 0
        self.eof = False  # the source has ended (or `left` is 0): done once the pipe empties
        self.done = False
        self.reading = self.writing = False

    def start(self) -> None:
        self._want_read()

    # readiness ------------------------------------------------------------------------
    # Each socket is one direction's source and the other's destination; the splicer
    # tells the poller what both want of it.
    def _want_read(self) -> None:
        self.reading, self.writing = True, False
        self.splicer.update(self.src.fileno(), self.dst.fileno())

    def _want_write(self) -> None:
        self.reading, self.writing = False, True
        self.splicer.update(self.src.fileno(), self.dst.fileno())

    def stop(self) -> None:
        if self.reading or self.writing:
            self.reading = self.writing = False
            self.splicer.update(self.src.fileno(), self.dst.fileno())

    # moving bytes ---------------------------------------------------------------------
    def readable(self) -> None:
        want = PIPE_BYTES if self.left is None else min(PIPE_BYTES, self.left)
        try:
            n = os.splice(self.src.fileno(), self.pipe_w, want, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self.splicer.failed(exc, self.src)
            return
        if n:
            self.in_pipe += n
            self.count(n)
            if self.left is not None:
                self.left -= n
        if n == 0 or self.left == 0:  # the source ended, or sent all it was to
            self.eof = True
            self.stop()
        self._drain()

    def writable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        """Pipe → destination as far as it takes; wait for room if it is full."""
        while self.in_pipe:
            try:
                n = os.splice(self.pipe_r, self.dst.fileno(), self.in_pipe, flags=_FLAGS)
            except BlockingIOError:
                self._want_write()
                return
            except OSError as exc:
                self.splicer.failed(exc, self.dst)
                return
            self.in_pipe -= n
        if self.eof:
            self.stop()
            self.done = True
            self.splicer.direction_ended(self)
        else:
            self._want_read()

    def close(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# Told once, when a splice is over: None when every direction ended, else the error and
# whether it came from the client's socket (the client went away) or the upstream's.
OnEnd = Callable[[OSError | None, bool], None]


class Splice:
    """Directions spliced on duplicates of the sockets; `on_end` once, after everything
    opened here is let go."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_end: OnEnd) -> None:
        self.loop = loop
        self.on_end = on_end
        self.client: socket.socket | None = None  # the duplicate of the client's socket
        self.ended = False
        self._counted = False  # in _active and the poller's users
        self._socks: list[socket.socket] = []
        self._dirs: list[_Direction] = []

    def _open(self, make: Callable[[], None]) -> None:
        """Run `make` (which dups sockets and adds directions); on failure, undo it."""
        global _active
        try:
            make()
        except OSError:
            self._release()
            raise
        self.poller = _poller(self.loop)
        _active += 1
        self._counted = True

    def _dup(self, sock: socket.socket | Any) -> socket.socket:
        dup = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self._socks.append(dup)
        return dup

    def start(self) -> None:
        for direction in self._dirs:
            direction.start()

    def update(self, *fds: int) -> None:
        """Tell the poller what the directions now wait for on these sockets."""
        for fd in fds:
            reader = writer = None
            for d in self._dirs:
                if d.reading and d.src.fileno() == fd:
                    reader = d.readable
                if d.writing and d.dst.fileno() == fd:
                    writer = d.writable
            self.poller.want(fd, reader, writer)

    def direction_ended(self, direction: _Direction) -> None:
        raise NotImplementedError

    def failed(self, exc: OSError, sock: socket.socket) -> None:
        self._end(exc, by_client=sock is self.client)

    def stop(self) -> None:
        """The session is closing for its own reasons (timeout, shutdown): let go quietly."""
        if not self.ended:
            self.ended = True
            self._release()

    def _end(self, exc: OSError | None, by_client: bool = False) -> None:
        if self.ended:
            return
        self.ended = True
        self._release()
        self.on_end(exc, by_client)

    def _release(self) -> None:
        global _active
        if self._counted:
            for sock in self._socks:
                self.poller.want(sock.fileno(), None, None)
        for direction in self._dirs:
            direction.close()
        for sock in self._socks:
            sock.close()
        if self._counted:
            self.poller.release()
            _active -= 1
            self._counted = False
        self._dirs = []
        self._socks = []


class Splicer(Splice):
    """Both directions of a tunnel. `count_up` and `count_down` are told of every move
    (the flow record, the session's idle clock)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket | Any,
        upstream: socket.socket | Any,
        count_up: Callable[[int], None],
        count_down: Callable[[int], None],
        on_end: OnEnd,
    ) -> None:
        super().__init__(loop, on_end)

        def make() -> None:
            a = self.client = self._dup(client)
            b = self._dup(upstream)
            self._dirs.append(_Direction(self, a, b, count_up))
            self._dirs.append(_Direction(self, b, a, count_down))

        self._open(make)

    def direction_ended(self, direction: _Direction) -> None:
        """The source sent FIN and everything before it is delivered: pass the half-close
        on, like the transports do, and end when both ways are done."""
        with contextlib.suppress(OSError):
            direction.dst.shutdown(socket.SHUT_WR)
        if all(d.done for d in self._dirs):
            self._end(None)


class BodySplicer(Splice):
    """The rest of a response body of known length, upstream → client. Ends with None
    once `length` bytes are delivered; with an error when the upstream ends first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream: socket.socket | Any,
        client: socket.socket | Any,
        length: int,
        count: Callable[[int], None],
        on_end: OnEnd,
    ) -> None:
        super().__init__(loop, on_end)

        def make() -> None:
            src = self._dup(upstream)
            dst = self.client = self._dup(client)
            self._dirs.append(_Direction(self, src, dst, count, limit=length))

        self._open(make)

    def direction_ended(self, direction: _Direction) -> None:
        if direction.left:
            self._end(ConnectionAbortedError("the upstream closed before the body ended"))
        else:
            self._end(None)
