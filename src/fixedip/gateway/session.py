"""What every client connection shares: flow control, timeouts, tunnels, the flow record.

A session is an asyncio.Protocol (no streams on the hot path). Reading from the client
is paused for named reasons (dialing, the upstream's buffer is full, draining) and
resumes only when none is left, so backpressure from one side never fights another.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fixedip.bounded import remember
from fixedip.gateway import splice
from fixedip.gateway.upstream import Upstream
from fixedip.identity.limits import Permit
from fixedip.observe.flowlog import FlowRecord
from fixedip.policy.decision import Reason

if TYPE_CHECKING:
    from fixedip.gateway.server import Gateway
    from fixedip.observe.metrics import Metrics

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger("fixedip.session")

# Reading more than this from the client before the upstream takes it is paused.
MAX_EARLY_BYTES = 256 * 1024


_NO_PEER = ipaddress.IPv4Address(0)
_PEERS: dict[str, IPAddress] = {}  # a client's address text → its address, bounded
_PEERS_MAX = 4096


# Connection deadlines are grouped in ticks of this length, with one event-loop timer
# per tick that holds any: a deadline fires up to one tick late, and a connection costs
# a set insertion instead of a timer of its own (making and cancelling one is most of
# what a connection per request spends on timeouts).
DEADLINE_TICK_S = 0.05


class Deadlines:
    """Every connection's next deadline, bucketed by tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ticks: dict[int, set[ClientSession]] = {}

    def add(self, session: ClientSession, when: float) -> int:
        """Put `session` in the first tick at or after `when`; returns that tick."""
        tick = math.ceil(when / DEADLINE_TICK_S)
        due = self.ticks.get(tick)
        if due is None:
            due = self.ticks[tick] = set()
            self.loop.call_at(tick * DEADLINE_TICK_S, self._fire, tick)
        due.add(session)
        return tick

    def discard(self, session: ClientSession, tick: int) -> None:
        due = self.ticks.get(tick)
        if due is not None:
            due.discard(session)

    def _fire(self, tick: int) -> None:
        for session in self.ticks.pop(tick, ()):
            try:
                session.deadline_due()
            except Exception:  # one session's failure must not strand the others
                log.exception("timing out connection %s failed", session.peer)


class Connections:
    """The open client connections: the set a drain walks, the count per client that
    `limits.max_connections_per_client` caps, and the connection gauges. Compiled with
    the sessions, because every connection passes through here when it opens and
    closes."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.sessions: set[ClientSession] = set()
        self.per_client: dict[str, int] = {}
        self.empty = asyncio.Event()  # set when the last one closes while `watch` is on
        self.watch = False  # a drain or shutdown is waiting for `empty`

    def opened(self, session: ClientSession, cap: int) -> bool:
        """Count a new connection; False when it is over `cap` (limits.max_connections)."""
        self.sessions.add(session)
        self.metrics.connection_opened(session.listener)
        return len(self.sessions) <= cap

    def closed(self, session: ClientSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.metrics.connection_closed(session.listener)
            if self.watch and not self.sessions:
                self.empty.set()

    def claim(self, name: str, cap: int) -> bool:
        """Count one more connection for client `name`; False if it is at `cap`."""
        held = self.per_client.get(name, 0)
        if held >= cap:
            return False
        self.per_client[name] = held + 1
        return True

    def release(self, name: str) -> None:
        held = self.per_client.get(name, 0) - 1
        if held > 0:
            self.per_client[name] = held
        else:
            self.per_client.pop(name, None)


def peer_address(text: str) -> IPAddress:
    """A peer's address (an IPv4-mapped IPv6 one as IPv4), parsed once per address, not
    once per connection: parsing is most of what accepting a connection costs in Python."""
    found = _PEERS.get(text)
    if found is None:
        found = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped:
            found = found.ipv4_mapped
        remember(_PEERS, text, found, _PEERS_MAX)
    return found


class ClientSession(asyncio.Protocol):
    listener = "?"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.loop = gateway.loop
        self.transport: asyncio.Transport | None = None
        self.peer_ip: IPAddress = _NO_PEER
        self.peer = ""
        self.upstream: Upstream | None = None
        self.record: FlowRecord | None = None
        self.closed = False
        self.tunnel = False
        self._pauses: set[str] = set()
        self._deadline = math.inf
        self._tick = -1  # the Deadlines tick this connection waits in, or -1
        self._timeout_reason = ""
        self._client_eof = False
        self._upstream_eof = False
        self._writing_paused = False
        self.claimed: str | None = None
        self.permit: Permit | None = None  # the destination's shaping, held per exchange
        self.splicer: splice.Splice | None = None  # a bulk tunnel or body, moved in the kernel
        self._splice_at = splice.SPLICE_AFTER if splice.AVAILABLE else math.inf

    # lifecycle ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        self.peer_ip = peer_address(str(peer[0]))
        self.peer = f"{peer[0]}:{peer[1]}"
        if not self.gw.connections.opened(self, self.gw.runtime.config.limits.max_connections):
            self.refuse_capacity()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self._unsplice()
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abort() if not self.tunnel else up.close()
        self.finish_record()
        connections = self.gw.connections
        if self.claimed is not None:
            connections.release(self.claimed)
            self.claimed = None
        connections.closed(self)

    def claim(self, client: str) -> bool:
        """Count this connection against `client`'s cap (once, however many requests)."""
        if self.claimed == client:
            return True
        connections = self.gw.connections
        if not connections.claim(client, self.gw.runtime.config.limits.max_connections_per_client):
            return False
        if self.claimed is not None:
            connections.release(self.claimed)
        self.claimed = client
        return True

    def refuse_capacity(self) -> None:
        """Over `limits.max_connections`: say so (where the protocol can) and close."""
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._unsplice()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self._unsplice()
            self.transport.abort()

    @property
    def idle(self) -> bool:
        """True when closing now loses nothing (used by drain on shutdown)."""
        return False

    # flow control ------------------------------------------------------------------
    def pause(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            self.transport.pause_reading()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._pauses:
            self._pauses.discard(reason)
            if (
                not self._pauses
                and self.transport is not None
                and not self.closed
                and not (self.tunnel and self.splicer is not None)  # it reads the socket now
            ):
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.splicer is not None:
            return  # the upstream socket is the splicer's to read
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
        self.try_splice()

    def upstream_pause(self) -> None:
        self.pause("upstream-full")

    def upstream_resume(self) -> None:
        self.resume("upstream-full")

    # timeouts ----------------------------------------------------------------------
    def arm(self, seconds: float, reason: str) -> None:
        """(Re)set the one deadline this connection has; `on_timeout(reason)` fires at it
        (up to DEADLINE_TICK_S later)."""
        self._deadline = deadline = self.loop.time() + seconds
        self._timeout_reason = reason
        if self._tick >= 0:
            if self._tick * DEADLINE_TICK_S <= deadline:
                return  # its tick comes first and re-arms it for the rest
            self.gw.deadlines.discard(self, self._tick)
        self._wait_for(deadline)

    def touch(self, seconds: float) -> None:
        """Push the deadline out on activity; cheap enough for every chunk."""
        self._deadline = self.loop.time() + seconds

    def _wait_for(self, deadline: float) -> None:
        if deadline == math.inf:  # a timeout of `inf`: never
            self._tick = -1
            return
        self._tick = self.gw.deadlines.add(self, deadline)

    def _disarm(self) -> None:
        self._deadline = math.inf
        if self._tick >= 0:
            self.gw.deadlines.discard(self, self._tick)
            self._tick = -1

    def deadline_due(self) -> None:
        """Its tick came: time out, or wait again if activity pushed the deadline out."""
        self._tick = -1
        if self.closed or self._deadline == math.inf:
            return
        if self.loop.time() + 0.001 < self._deadline:
            self._wait_for(self._deadline)
            return
        self.on_timeout(self._timeout_reason)

    def on_timeout(self, reason: str) -> None:
        self.abort()

    # tunnels -----------------------------------------------------------------------
    def start_tunnel(self, upstream: Upstream, early: bytes) -> None:
        """Relay raw bytes both ways from now on (CONNECT and SOCKS5 after the reply)."""
        self.tunnel = True
        self.upstream = upstream
        upstream.attach(self)
        self.gw.metrics.tunnel_opened()
        if early:
            self._count_up(len(early))
            upstream.write(early)
        self.arm(self.gw.runtime.config.timeouts.tunnel_idle_s, "tunnel idle")
        if self._writing_paused and upstream.transport is not None:
            upstream.transport.pause_reading()

    def tunnel_data(self, data: bytes) -> None:
        self._count_up(len(data))
        self.touch(self.gw.runtime.config.timeouts.tunnel_idle_s)
        up = self.upstream
        if up is not None:
            up.write(data)
            self.try_splice()

    def _count_up(self, n: int) -> None:
        if self.record is not None:
            self.record.bytes_up += n

    def _tunnel_bytes(self) -> int:
        record = self.record
        return 0 if record is None else record.bytes_up + record.bytes_down

    # bulk tunnels in the kernel ----------------------------------------------------
    def try_splice(self) -> None:
        """Hand a busy plain tunnel's sockets to a Splicer. Called on the transports' data;
        acts once the tunnel has carried SPLICE_AFTER bytes, waits (returns, to be called
        again) while either side still has bytes buffered, and gives up for good where
        splicing cannot work (TLS on either side, a half-closed tunnel, no descriptors)."""
        if not self.tunnel or self._tunnel_bytes() < self._splice_at:
            return
        up = self.upstream
        client_t = self.transport
        if (
            self.splicer is not None
            or self.closed
            or up is None
            or up.transport is None
            or client_t is None
            or splice.active() >= splice.max_spliced()
        ):
            return
        if client_t.get_write_buffer_size() or up.transport.get_write_buffer_size():
            return  # bytes still queued on a transport: the next callback tries again
        if self._client_eof or self._upstream_eof:
            self._splice_at = math.inf
            return
        splicer = self.hand_over(
            up,
            lambda client, upstream: splice.Splicer(
                self.loop, client, upstream, self._spliced_up, self._spliced_down, self._spliced_end
            ),
        )
        if splicer is not None:
            client_t.pause_reading()
            up.transport.pause_reading()
            self.gw.metrics.tunnel_spliced()
            splicer.start()

    def hand_over(
        self, up: Upstream, make: Callable[[Any, Any], splice.Splice]
    ) -> splice.Splice | None:
        """`make(client socket, upstream socket)` becomes this connection's splicer. None,
        and no further attempts on this connection, where splicing cannot work: TLS on
        either side, or no descriptors left."""
        client_sock = splice.plain_socket(self.transport)
        up_sock = splice.plain_socket(up.transport)
        if client_sock is None or up_sock is None:
            self._splice_at = math.inf
            return None
        try:
            self.splicer = make(client_sock, up_sock)
        except OSError:
            self._splice_at = math.inf
            return None
        return self.splicer

    def _spliced_up(self, n: int) -> None:
        self._count_up(n)
        self.touch(self.gw.runtime.config.timeouts.tunnel_idle_s)

    def _spliced_down(self, n: int) -> None:
        if self.record is not None:
            self.record.bytes_down += n
        self.touch(self.gw.runtime.config.timeouts.tunnel_idle_s)

    def _spliced_end(self, exc: OSError | None, by_client: bool) -> None:
        """Both ways ended (each passed its half-close on), or one side failed: the tunnel
        is over, as the transports would have ended it."""
        self.splicer = None
        if exc is None:
            self.close()
        else:
            self.abort()

    def _unsplice(self) -> None:
        splicer, self.splicer = self.splicer, None
        if splicer is not None:
            splicer.stop()

    def eof_received(self) -> bool:
        if not self.tunnel:
            return False
        self._client_eof = True
        up = self.upstream
        if up is None or up.transport is None or up.closed:
            return False
        if self._upstream_eof:
            up.close()
            return False
        if up.transport.can_write_eof():
            up.transport.write_eof()  # half-close: the other direction keeps flowing
        # A TLS client's close_notify ends its whole connection (asyncio's TLS transport
        # cannot half-close), so only a plain one is kept open.
        return self.transport is not None and self.transport.can_write_eof()

    def upstream_data(self, data: bytes) -> None:
        """Tunnel direction upstream → client (HTTP sessions override for responses)."""
        if self.record is not None:
            self.record.bytes_down += len(data)
        self.touch(self.gw.runtime.config.timeouts.tunnel_idle_s)
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self.try_splice()

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self.transport is None or self.closed:
            return
        if self._client_eof:
            self.close()
        elif self.transport.can_write_eof():
            self.transport.write_eof()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        record = self.record
        if (
            self.tunnel
            and isinstance(exc, ConnectionResetError)
            and record is not None
            and record.bytes_down == 0
            and record.egress is not None
            and record.host is not None
        ):
            # Reset before the destination said a word (e.g. at the TLS handshake): inside
            # a tunnel this and connect timeouts are the only block signals there are.
            self.gw.health.observe(record.egress, record.host, "reset")
        if self.tunnel:
            if exc is None:
                self.close()
            else:
                self.abort()

    # flow records ------------------------------------------------------------------
    def new_record(self, kind: str, method: str | None) -> FlowRecord:
        self.record = FlowRecord(
            start=time.time(),
            listener=self.listener,
            kind=kind,
            peer=self.peer,
            client=None,
            method=method,
            host=None,
            port=None,
            resolved=None,
            egress=None,
            egress_public=None,
            status=None,
        )
        self._started = time.perf_counter()
        return self.record

    def finish_record(self, reason: Reason | None = None, rule: str | None = None) -> None:
        """End the current exchange or tunnel: its flow record, and its shaping permit."""
        if self.permit is not None:
            self.permit.release()
            self.permit = None
        record, self.record = self.record, None
        if record is None:
            return
        if reason is not None:
            record.reason = reason.value
            record.rule = rule
        record.duration_s = time.perf_counter() - self._started
        gw = self.gw
        if self.tunnel and record.decision == "allow":
            gw.metrics.tunnel_closed()
        gw.flowlog.write(record)
        gw.metrics.observe_flow(record)
