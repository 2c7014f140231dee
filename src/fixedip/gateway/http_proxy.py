"""The HTTP listener: absolute-form forwarding with keep-alive both ways, CONNECT tunnels,
and the few origin-form paths a client may ask the gateway itself (/whoami, /egress).

One request at a time per connection: while a request is being dialed or answered,
further (pipelined) events wait in a queue and reading from the client is paused, so
the queue never holds more than one read. Bodies are re-framed on the way through.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from fixedip.bounded import remember
from fixedip.config import ClientConfig
from fixedip.gateway import splice
from fixedip.gateway.routes import RouteTarget, RouteTLS
from fixedip.gateway.runtime import (
    ROUTE_CACHE_MAX,
    Attempt,
    Dialed,
    Refused,
    Runtime,
    dial,
    dial_now,
)
from fixedip.gateway.session import MAX_EARLY_BYTES, ClientSession
from fixedip.policy.decision import Decision, Reason
from fixedip.proto import http1
from fixedip.proto.http1 import (
    Body,
    EndOfMessage,
    Event,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    Upgrade,
)

if TYPE_CHECKING:
    from fixedip.gateway.server import Gateway

log = logging.getLogger("fixedip.http")

IDLE, DIALING, FORWARDING, TUNNEL = range(4)

_PROXY_AUTHENTICATE = (b"Proxy-Authenticate", b'Basic realm="fixedip", charset="UTF-8"')
_LOCAL_PATHS = (b"/whoami", b"/egress")
RETRY_AFTER_S = 1
# Repeat keep-alive requests and whole responses take the lane (repeat_request and
# whole_response); cleared, everything takes the generic path (tests compare the two,
# benchmarks.hotpath --no-lane).
LANE = True
ROUTE_SUFFIX = ".route.fixedip"


class HttpProxySession(ClientSession):
    listener = "http"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        config = gateway.runtime.config
        self.parser = RequestParser(config.limits.max_header_bytes)
        self.queue: deque[Event] = deque()
        self.state = IDLE
        self.head: RequestHead | None = None
        self.dial_task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []
        self.early_bytes = 0
        self.close_after = False
        self.head_clock = False
        self.pumping = False
        self.out: list[bytes] | None = None  # writes collected while a batch is processed
        self.route: RouteTarget | None = None  # route mode for the current request
        self.upstream_was_pooled = False
        self.auth_memo: tuple[Runtime, bytes | None, ClientConfig | None, Decision] | None = None
        self.target_memo: tuple[bytes, bytes | None, http1.Target] | None = None
        self.repeat: _Repeat | None = None  # what the lane compares a request with
        # current exchange
        self.req_done = False
        self.resp_done = False
        self.resp_chunked = False
        self.resp_left: int | None = None  # body bytes still to come, when the length is known
        self.resp_started = False
        self.upstream_reusable = False
        self.resp_head_method = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.closed:
            self.arm(self.gw.runtime.config.timeouts.header_s, "header")

    def refuse_capacity(self) -> None:
        self.send_error(
            Decision(Reason.SHUTTING_DOWN if self.gw.draining else Reason.OVERLOADED),
            "the gateway is at its connection limit; retry shortly",
            close=True,
        )

    @property
    def idle(self) -> bool:
        return self.state == IDLE and not self.queue and not self.head_clock

    # client bytes ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.state == TUNNEL:
            self.tunnel_data(data)
            return
        if self.parser.upgraded:
            # CONNECT being dialed: these bytes belong to the tunnel once it opens.
            self.early.append(data)
            self.early_bytes += len(data)
            if self.early_bytes > MAX_EARLY_BYTES:
                self.pause("early")
            return
        if self.state == IDLE and not self.queue:
            if self.repeat is not None and self.repeat_request(data):
                return
            if not self.head_clock:
                # The header clock starts at a head's first byte and is not pushed out
                # by later bytes: a client trickling a head (slowloris) still times out.
                self.head_clock = True
                self.arm(self.gw.runtime.config.timeouts.header_s, "header")
        else:
            self.touch(self.gw.runtime.config.timeouts.idle_s)
        try:
            events = self.parser.feed(data)
        except ProtocolError as exc:
            self.protocol_error(exc)
            return
        if events:
            self.queue.extend(events)
            self.pump()

    def pump(self) -> None:
        """Feed queued events to the current exchange. Not re-entrant: a call from inside
        (a request that completed synchronously) returns, and this loop carries on."""
        if self.pumping:
            return
        self.pumping = True
        try:
            self._pump()
        finally:
            self.pumping = False
        if self.queue and self.state != IDLE:
            self.pause("busy")

    def _pump(self) -> None:
        queue = self.queue
        while queue and not self.closed:
            event = queue[0]
            if self.state == IDLE:
                queue.popleft()
                if isinstance(event, RequestHead):
                    self.start(event)
                    continue
                # Body of a refused request, or the Upgrade after a refused CONNECT: dropped.
                continue
            if self.state == FORWARDING:
                queue.popleft()
                if isinstance(event, Body):
                    self.forward_body(event.data)
                elif isinstance(event, EndOfMessage):
                    self.request_ended()
                continue
            break  # DIALING / waiting for the response: the rest waits

    def on_timeout(self, reason: str) -> None:
        if reason == "header" and self.state == IDLE and self.head_clock:
            self.transport_write(
                http1.simple_response(408, b"request head timed out\n", close=True)
            )
            self.close()
        else:
            self.abort() if not self.idle else self.close()

    # one request -------------------------------------------------------------------
    def start(self, head: RequestHead) -> None:
        kind = "connect" if head.method == "CONNECT" else "http"
        if head.target.startswith(b"/"):
            kind = "local"
        self.begin(head, kind)
        try:
            prepared = self.prepare(head)
            if prepared is None:
                return  # answered by the gateway itself
            client, target = prepared
            result = self.dial_now(
                client,
                target,
                tunnel=head.method == "CONNECT",
                tls=self.route.tls if self.route else None,
            )
        except Exception as exc:
            self.failed(head, exc)
            return
        if isinstance(result, Dialed):
            self.dialed(head, target, result)
        else:
            self.dial_later(head, client, target, result)

    def dial_now(
        self,
        client: ClientConfig,
        target: http1.Target,
        *,
        tunnel: bool = False,
        tls: RouteTLS | None = None,
    ) -> Dialed | Attempt:
        """runtime.dial_now with this gateway's parts: dialed, or what `dial` must finish."""
        gw = self.gw
        return dial_now(
            gw.runtime,
            gw.resolver,
            gw.upstreams,
            gw.health,
            client,
            target.host,
            target.port,
            target.is_ip,
            tunnel=tunnel,
            tls=tls,
        )

    def begin(self, head: RequestHead, kind: str) -> None:
        """`head` opens an exchange: its flow record and its deadline."""
        self.head = head
        self.head_clock = False
        self.req_done = self.resp_done = self.resp_started = False
        self.upstream_reusable = False
        self.route = None  # route mode is decided per request (prepare)
        self.new_record(kind, head.method)
        self.state = DIALING
        self.arm(self.gw.runtime.config.timeouts.idle_s, "exchange")
        if self.gw.draining:
            self.close_after = True

    def dial_later(
        self, head: RequestHead, client: ClientConfig, target: http1.Target, attempt: Attempt
    ) -> None:
        """Waiting on DNS or a new connection: stop reading meanwhile, so a body or
        pipelined requests cannot pile up (the synchronous path never pauses)."""
        self.pause("dial")
        task = self.loop.create_task(self.dial_slowly(head, client, target, attempt))
        if attempt.permit is not None:
            # Cancelled before its first step, a coroutine runs no cleanup: give the
            # permit dial_now took back here (release is idempotent).
            permit = attempt.permit
            task.add_done_callback(lambda t: permit.release() if t.cancelled() else None)
        self.dial_task = task

    def repeat_request(self, data: bytes) -> bool:
        """The lane for a keep-alive client repeating itself: `data` is one whole request
        (head and Content-Length body) with the credentials, target and Host the
        connection's last forwarded request was allowed with. It skips the parser, the
        event queue and `prepare` (whose answers it already has); policy, the guard,
        egress choice, shaping and the flow record run as on the generic path, and from
        the dial on the exchange is the generic one's. False, with nothing changed, for
        anything else."""
        repeat = self.repeat
        assert repeat is not None
        if (
            repeat.rt is not self.gw.runtime
            or self.close_after
            or self.gw.draining
            or self.claimed != repeat.client.name
            or not self.parser.at_boundary
        ):
            return False
        whole = http1.whole_request(data, self.parser.max_head)
        if whole is None:
            return False
        head, start = whole
        if (
            head.target != repeat.target
            or not head.keep_alive
            or head.get(b"host") != repeat.host
            or head.get(b"proxy-authorization") != repeat.auth
            or (repeat.max_body and (head.content_length or 0) > repeat.max_body)
        ):
            return False
        self.gw.metrics.lane_requests += 1
        self.parser.whole_taken()
        self.begin(head, "http")
        client, target = repeat.client, repeat.dest
        record = self.record
        assert record is not None
        record.client, record.host, record.port = client.name, target.host, target.port
        try:
            result = self.dial_now(client, target)
        except Exception as exc:
            self.lane_left(head, start, data)
            self.failed(head, exc)
        else:
            if isinstance(result, Dialed):
                self.dialed(head, target, result, data[start:])
                return True
            self.lane_left(head, start, data)
            self.dial_later(head, client, target, result)
        self.pump()
        return True

    def lane_left(self, head: RequestHead, start: int, data: bytes) -> None:
        """The generic path takes over a lane request: the events the parser would have
        queued after the head."""
        if head.content_length:
            self.queue.append(Body(data[start:]))
        self.queue.append(http1.END)

    def prepare(self, head: RequestHead) -> tuple[ClientConfig, http1.Target] | None:
        """Everything decided without waiting: who is asking, for where, within limits."""
        rt = self.gw.runtime
        record = self.record
        assert record is not None
        client, decision = self.authenticate(head)
        if client is not None:
            record.client = client.name
        absolute = False  # an absolute-form target: the lane may take its repeats
        if head.method == "CONNECT":
            target = http1.parse_connect_target(head.target)
        elif head.target.startswith(b"/r/"):
            name, _, rest = head.target[3:].partition(b"/")
            target = self.route_target(name.decode("latin-1"), b"/" + rest)
        elif head.target.startswith(b"/"):
            self.local_request(head, client, decision)
            return None
        else:
            target = self.absolute_target(head)
            absolute = self.route is None  # not a name under ROUTE_SUFFIX
        record.host, record.port = target.host, target.port
        if not decision.allowed:
            raise Refused(decision)
        assert client is not None
        if not self.claim(client.name):
            raise Refused(Decision(Reason.CLIENT_LIMIT))
        limit = rt.config.limits.max_body_bytes
        if limit and (head.content_length or 0) > limit:
            raise Refused(Decision(Reason.BODY_TOO_LARGE), f"body over {limit} bytes")
        if LANE and absolute:
            self.repeat = _Repeat(
                rt,
                head.get(b"proxy-authorization"),
                head.target,
                head.get(b"host"),
                client,
                target,
                limit,
            )
        return client, target

    def absolute_target(self, head: RequestHead) -> http1.Target:
        """The absolute-form target, checked against Host. The connection's last answer is
        kept: a keep-alive client asks for the same URL over and over."""
        host = head.get(b"host")
        memo = self.target_memo
        if memo is not None and memo[0] == head.target and memo[1] == host:
            return memo[2]
        target = http1.parse_absolute_target(head.target)
        self.check_host_header(host, target)
        if target.host.endswith(ROUTE_SUFFIX):  # never resolved: it names a route
            return self.route_target(target.host[: -len(ROUTE_SUFFIX)], target.path)
        self.target_memo = (head.target, host, target)
        return target

    def route_target(self, name: str, path: bytes) -> http1.Target:
        """Route mode: the request goes to the route's base URL (over TLS when it is
        https), with the vendor credential injected in send_request."""
        route = self.gw.runtime.routes.get(name)
        if route is None:
            raise Refused(Decision(Reason.NO_SUCH_ROUTE, rule=f"routes.{name}"))
        self.route = route
        return http1.Target(route.host, route.port, route.prefix + path, route.is_ip)

    def authenticate(self, head: RequestHead) -> tuple[ClientConfig | None, Decision]:
        """The verdict on this request's credentials, memoised for the connection: the
        peer is fixed, so the same header under the same configuration means the same."""
        value = head.get(b"proxy-authorization")
        rt = self.gw.runtime
        memo = self.auth_memo
        if memo is not None and memo[0] is rt and memo[1] == value:
            return memo[2], memo[3]
        if value is None:
            client, decision = rt.auth.check(None, self.peer_ip)
        else:
            client, decision = rt.auth.check_header(value, self.peer_ip)
        self.auth_memo = (rt, value, client, decision)
        return client, decision

    async def dial_slowly(
        self, head: RequestHead, client: ClientConfig, target: http1.Target, attempt: Attempt
    ) -> None:
        try:
            dialed = await dial(
                self.gw.runtime,
                self.gw.resolver,
                self.gw.upstreams,
                self.gw.metrics,
                self.gw.health,
                client,
                target.host,
                target.port,
                target.is_ip,
                tunnel=head.method == "CONNECT",
                attempt=attempt,
                tls=self.route.tls if self.route else None,
            )
        except Exception as exc:
            self.failed(head, exc)
            return
        self.dialed(head, target, dialed)

    def failed(self, head: RequestHead, exc: Exception) -> None:
        if isinstance(exc, ProtocolError):
            self.protocol_error(exc)
        elif isinstance(exc, Refused):
            self.refused(exc.decision, exc.detail, retry_after=exc.retry_after)
        else:
            log.error("internal error handling %s from %s", head.method, self.peer, exc_info=exc)
            self.send_error(Decision(Reason.INTERNAL_ERROR), "", close=True)

    def dialed(
        self, head: RequestHead, target: http1.Target, dialed: Dialed, whole: bytes | None = None
    ) -> None:
        record = self.record
        if self.closed or record is None:
            if dialed.permit is not None:
                dialed.permit.release()
            dialed.upstream.close() if dialed.reused else dialed.upstream.abort()
            return
        record.resolved = dialed.address_text
        record.egress, record.egress_public = dialed.egress.bind_text, dialed.egress.public_text
        record.rule = dialed.rule
        self.permit = dialed.permit
        if head.method == "CONNECT":
            self.open_tunnel(dialed)
        else:
            self.send_request(head, target, dialed, whole)

    def check_host_header(self, host: bytes | None, target: http1.Target) -> None:
        if host is None:
            return
        # A Host without a port means 80 (RFC 9110 section 7.2): absolute-form is http://.
        h, _, port = http1.parse_authority(host, 80)
        if h != target.host or port != target.port:
            raise ProtocolError(400, "Host header disagrees with the request target")

    def open_tunnel(self, dialed: Dialed) -> None:
        assert self.record is not None
        leftover = b""
        while self.queue:
            event = self.queue.popleft()
            if isinstance(event, Upgrade):
                leftover = event.leftover
        early = leftover + b"".join(self.early)
        self.early.clear()
        self.transport_write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.record.status = 200
        self.state = TUNNEL
        self.start_tunnel(dialed.upstream, early)
        self.resume("dial")
        self.resume("early")
        self.resume("busy")

    def send_request(
        self, head: RequestHead, target: http1.Target, dialed: Dialed, whole: bytes | None = None
    ) -> None:
        """The request head upstream, then its body as the client sends it; with `whole`,
        the body has already arrived (the lane): it leaves with the head in one write."""
        up = dialed.upstream
        self.upstream_was_pooled = dialed.reused
        self.upstream = up
        up.attach(self)
        if up.parser is None:
            up.parser = http1.ResponseParser(self.gw.runtime.config.limits.max_header_bytes)
        up.parser.expect(head.method)
        self.resp_head_method = head.method
        forward = self.forwarding(target)
        after: list[tuple[bytes, bytes]] = []
        if forward.inject is not None:
            after.append(forward.inject)
        if head.chunked:
            after.append((b"Transfer-Encoding", b"chunked"))
        elif head.content_length is not None:
            after.append(http1.content_length_field(head.content_length))
        line = http1.request_line(head.method, target.path)
        if whole:
            assert self.record is not None
            self.record.bytes_up += len(whole)
        up.write(
            http1.forward_head(
                line, head, forward.drop, forward.keep, forward.before, after, whole or b""
            )
        )
        if self._writing_paused and up.transport is not None:
            up.transport.pause_reading()
        if whole is not None:
            self.req_done = True  # waiting for the response, as after request_ended
            return
        self.state = FORWARDING
        self.resume("dial")
        self.pump()
        if self.state == FORWARDING:
            self.resume("busy")

    def forwarding(self, target: http1.Target) -> _Forward:
        """How headers go to `target`, remembered per configuration and destination
        (route mode is decided per request, so its answers are not kept)."""
        rt = self.gw.runtime
        route = self.route
        key = (target.host, target.port)
        if route is None:
            forward: _Forward | None = rt.forwards.get(key)
            if forward is not None:
                return forward
        policy = rt.sanitizer.for_destination(rt.destination(target.host))
        drop, inject = policy.forward_drop, None
        if route is not None:
            authority = route.authority
            if route.inject is not None:
                inject = route.inject
                drop = drop | {inject[0].lower()}  # the function's own is never passed on
        else:
            authority = target.authority if target.port != 80 else target.authority[: -len(":80")]
        forward = _Forward(((b"Host", authority.encode()),), drop, policy.keep, inject)
        if route is None:
            remember(rt.forwards, key, forward, ROUTE_CACHE_MAX)
        return forward

    def forward_body(self, data: bytes) -> None:
        if self.record is not None:
            self.record.bytes_up += len(data)
            limit = self.gw.runtime.config.limits.max_body_bytes
            if limit and self.record.bytes_up > limit:  # a chunked body that keeps growing
                self.body_too_large()
                return
        up = self.upstream
        if up is None:
            return
        assert self.head is not None
        up.write(http1.chunk(data) if self.head.chunked else data)

    def body_too_large(self) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abort()
        self.queue.clear()
        if self.resp_started:
            self.finish_record(Reason.BODY_TOO_LARGE)
            self.abort()
        else:
            self.send_error(Decision(Reason.BODY_TOO_LARGE), "", close=True)

    def request_ended(self) -> None:
        assert self.head is not None
        if self.head.chunked and self.upstream is not None:
            self.upstream.write(http1.LAST_CHUNK)
        self.req_done = True
        self.state = DIALING  # waiting for the response; further events wait
        self.maybe_complete()

    # upstream → client -------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        if self.tunnel:
            super().upstream_data(data)
            return
        up = self.upstream
        if up is None or up.parser is None:
            return
        if (
            LANE
            and self.req_done
            and not self.resp_started
            and self.whole_response(up.parser, data)
        ):
            return
        self.touch(self.gw.runtime.config.timeouts.idle_s)
        try:
            events = up.parser.feed(data)
        except ProtocolError as exc:
            self.upstream_broken(Reason.UPSTREAM_BAD_RESPONSE, exc.message)
            return
        self.response_events(events)
        if self.resp_left is not None and self.resp_left >= self._splice_at and not self.resp_done:
            self.try_splice_body()

    def whole_response(self, parser: http1.ResponseParser, data: bytes) -> bool:
        """The lane's other half: `data` is the whole response to a request sent in full,
        head and body, so it goes to the client in one write, framed as the generic path
        frames it (`response_head`), without the parser or its events. False, with
        nothing changed, for anything else."""
        if self.out is not None or self.resp_head_method == "HEAD" or not parser.at_boundary:
            return False
        whole = http1.whole_response(data, parser.max_head)
        if whole is None:
            return False
        resp, start = whole
        self.gw.metrics.lane_responses += 1
        parser.whole_taken()
        self.out = []
        try:
            body = data[start:]
            if self.record is not None:
                self.record.bytes_down += len(body)
            self.response_head(resp, body)
            self.resp_left = 0
            self.resp_done = True
            self.maybe_complete()
        finally:
            self.flush_out()
        return True

    def response_events(self, events: list[Event]) -> None:
        # One write per batch of events: a small response leaves in one segment.
        outer = self.out is None
        if outer:
            self.out = []
        try:
            self._response_events(events)
        finally:
            if outer:
                self.flush_out()

    def _response_events(self, events: list[Event]) -> None:
        for i, event in enumerate(events):
            if isinstance(event, Body):
                if self.record is not None:
                    self.record.bytes_down += len(event.data)
                if self.resp_left is not None:
                    self.resp_left -= len(event.data)
                self.transport_write(http1.chunk(event.data) if self.resp_chunked else event.data)
            elif isinstance(event, ResponseHead):
                self.response_head(event)
            elif isinstance(event, EndOfMessage):
                if not self.resp_started:
                    continue  # end of a 1xx interim response
                if self.resp_chunked:
                    self.transport_write(http1.LAST_CHUNK)
                self.resp_done = True
                if i + 1 < len(events):
                    # The upstream sent more than one answer to one request. Whatever
                    # follows must never reach the client as the answer to its next
                    # request (possibly for another destination): drop it and the
                    # connection.
                    self.upstream_reusable = False
                self.maybe_complete()
                return

    def response_head(self, resp: ResponseHead, body: bytes = b"") -> None:
        """The head to the client; `body`, the whole body of a lane response, leaves with it."""
        assert self.head is not None
        if 100 <= resp.status < 200:
            if resp.status == 100 and self.head.version == "1.1":
                self.transport_write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.resp_started = True
        record = self.record
        if record is not None:
            record.status = resp.status
            if resp.status >= 400 and record.egress is not None and record.host is not None:
                # A 403/429 burst from one egress IP is how a vendor says "blocked".
                self.gw.health.observe(record.egress, record.host, resp.status)
                if resp.status in (429, 503):
                    self.honour_retry_after(resp, record.egress, record.host)
        after: list[tuple[bytes, bytes]] = []  # fields after the vendor's end-to-end ones
        bodiless = self.resp_head_method == "HEAD" or resp.status in (204, 304)
        self.resp_chunked = False
        self.resp_left = None
        up_parser = self.upstream.parser if self.upstream else None
        close_delimited = bool(up_parser and up_parser.close_delimited)
        if bodiless:
            if resp.content_length is not None:
                after.append(http1.content_length_field(resp.content_length))
        elif resp.content_length is not None and not resp.chunked:
            after.append(http1.content_length_field(resp.content_length))
            self.resp_left = resp.content_length
        elif self.head.version == "1.1":
            after.append((b"Transfer-Encoding", b"chunked"))
            self.resp_chunked = True
        else:
            self.close_after = True  # HTTP/1.0 client, unknown length: end by closing
        self.upstream_reusable = resp.keep_alive and not close_delimited
        if not self.head.keep_alive or self.gw.draining:
            self.close_after = True
        if self.close_after:
            after.append((b"Connection", b"close"))
        elif self.head.version == "1.0":
            after.append((b"Connection", b"keep-alive"))
        line = http1.status_line(resp.status, resp.reason)
        self.transport_write(http1.forward_head(line, resp, after=after, body=body))

    def try_splice_body(self) -> None:
        """The rest of a long response body of known length goes upstream → client in the
        kernel (splice), once the request is complete and the client has taken what was
        written. The upstream connection is closed afterwards (its parser never saw the
        body), the client's stays open."""
        up, client_t, left = self.upstream, self.transport, self.resp_left
        if (
            self.splicer is not None
            or not self.req_done
            or up is None
            or up.transport is None
            or client_t is None
            or left is None
            or client_t.get_write_buffer_size()
            or splice.active() >= splice.max_spliced()
        ):
            return
        splicer = self.hand_over(
            up,
            lambda client, upstream: splice.BodySplicer(
                self.loop, upstream, client, left, self._body_spliced, self._body_splice_end
            ),
        )
        if splicer is not None:
            up.transport.pause_reading()
            self.upstream_reusable = False
            self.gw.metrics.body_spliced()
            splicer.start()

    def _body_spliced(self, n: int) -> None:
        if self.record is not None:
            self.record.bytes_down += n
        if self.resp_left is not None:
            self.resp_left -= n
        self.touch(self.gw.runtime.config.timeouts.idle_s)

    def _body_splice_end(self, exc: OSError | None, by_client: bool) -> None:
        self.splicer = None
        if exc is not None and by_client:
            self.abort()  # the client went away: recorded as on the transports
            return
        if exc is not None:
            self.upstream_broken(Reason.UPSTREAM_CLOSED, str(exc))
            return
        self.resp_done = True
        self.maybe_complete()

    def honour_retry_after(self, resp: ResponseHead, egress: str, host: str) -> None:
        """A vendor's Retry-After pauses that destination (for that egress IP when the
        destination counts per IP), so the gateway stops asking until then."""
        limiter = self.gw.runtime.limiter(host)
        value = resp.get(b"retry-after")
        if limiter is None or value is None:
            return
        seconds = retry_after_seconds(value)
        if seconds is not None and seconds > 0:
            limiter.pause(egress, seconds)

    def upstream_eof(self) -> None:
        if self.tunnel:
            super().upstream_eof()
            return
        up = self.upstream
        if up is None or up.parser is None:
            return
        self.upstream_reusable = False
        events = up.parser.feed_eof()
        self.response_events(events)
        if not self.resp_done:
            self.upstream_broken(
                Reason.UPSTREAM_CLOSED, "upstream closed before the response ended"
            )

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.tunnel:
            super().upstream_lost(exc)
            return
        if self.upstream is None:
            return
        record = self.record
        if (
            isinstance(exc, ConnectionResetError)
            and not self.resp_started
            and not self.upstream_was_pooled  # a pooled connection going stale is normal
            and record is not None
            and record.egress is not None
            and record.host is not None
        ):
            self.gw.health.observe(record.egress, record.host, "reset")
        if not self.resp_done:
            self.upstream_reusable = False
            self.upstream_broken(Reason.UPSTREAM_CLOSED, "upstream connection lost")
        self.upstream = None

    def upstream_broken(self, reason: Reason, detail: str) -> None:
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abort()
        if self.resp_started:
            # Part of the response is out: the only honest signal left is to cut.
            self.finish_record(reason)
            self.abort()
        else:
            self.refused(Decision(reason), detail, force_close=True)

    def maybe_complete(self) -> None:
        if not self.resp_done:
            return
        if not self.req_done:
            # The upstream answered before the request body ended: we cannot resync.
            self.close_after = True
            self.upstream_reusable = False
        up, self.upstream = self.upstream, None
        if up is not None:
            if self.upstream_reusable and self.req_done:
                self.gw.upstreams.give(up)
            else:
                up.close()
        self.finish_record()
        self.end_exchange()

    def end_exchange(self) -> None:
        self.head = None
        self.state = IDLE
        if self.close_after or self.gw.draining:
            self.close()
            return
        self.arm(self.gw.runtime.config.timeouts.idle_s, "idle")
        self.resume("dial")
        self.resume("busy")
        self.pump()

    # answers the gateway gives itself --------------------------------------------
    def transport_write(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def flush_out(self) -> None:
        out, self.out = self.out, None
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        self.flush_out()
        super().close()

    def protocol_error(self, exc: ProtocolError) -> None:
        if self.record is None:
            self.new_record("http", None)
        if self.head is not None and self.resp_started:
            # A response is already going out: a 400 now would be spliced into it.
            up, self.upstream = self.upstream, None
            if up is not None:
                up.abort()
            self.finish_record(Reason.BAD_REQUEST)
            self.abort()
            return
        self.send_error(Decision(Reason.BAD_REQUEST), exc.message, status=exc.status, close=True)

    def refused(
        self,
        decision: Decision,
        detail: str = "",
        force_close: bool = False,
        retry_after: int | None = None,
    ) -> None:
        head = self.head
        close = (
            force_close
            or head is None
            or not head.keep_alive  # the client asked for Connection: close
            or head.method == "CONNECT"
            or not self._request_complete()
        )
        self.send_error(decision, detail, close=close, retry_after=retry_after)

    def _request_complete(self) -> bool:
        """True if the refused request's body is already in the queue (keep-alive is safe)."""
        head = self.head
        if head is None:
            return False
        if not head.has_body:
            return True
        return any(isinstance(e, EndOfMessage) for e in self.queue)

    def send_error(
        self,
        decision: Decision,
        detail: str,
        *,
        status: int | None = None,
        close: bool,
        retry_after: int | None = None,
    ) -> None:
        status = status or decision.http_status
        extra = [(b"Proxy-Status", decision.proxy_status().encode())]
        if status == 407:
            extra.append(_PROXY_AUTHENTICATE)
        if status == 503 and retry_after is None:
            retry_after = RETRY_AFTER_S
        if retry_after is not None:
            extra.append((b"Retry-After", str(retry_after).encode()))
        message = _message(decision, status)
        self.transport_write(
            http1.simple_response(status, message, extra=extra, close=close or self.close_after)
        )
        if self.record is not None:
            self.record.status = status
        self.finish_record(decision.reason, decision.rule)
        if close or self.close_after:
            self.close()
            return
        self.end_exchange()

    def local_request(
        self, head: RequestHead, client: ClientConfig | None, decision: Decision
    ) -> None:
        """Origin-form: /whoami and /egress for authenticated clients; anything else is 400."""
        path = head.target.split(b"?", 1)[0]
        if path not in _LOCAL_PATHS:
            raise ProtocolError(
                400,
                "origin-form requests are served only for /whoami and /egress; "
                "send proxy requests in absolute form or use CONNECT",
            )
        if not decision.allowed or client is None:
            raise Refused(decision)
        if head.method not in ("GET", "HEAD"):
            raise ProtocolError(405, f"{path.decode()} answers GET only")
        view = self.gw.client_view(client)
        body = (
            json.dumps(view if path == b"/egress" else view["whoami"], indent=2) + "\n"
        ).encode()
        self.resp_started = True
        if self.record is not None:
            self.record.status = 200
        response = http1.simple_response(
            200,
            body,
            content_type=b"application/json",
            close=not head.keep_alive or self.close_after,
        )
        if head.method == "HEAD":
            response = response[: response.index(b"\r\n\r\n") + 4]
        self.transport_write(response)
        if not head.keep_alive:
            self.close_after = True
        self.finish_record()
        self.end_exchange()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.dial_task is not None and not self.dial_task.done():
            self.dial_task.cancel()
        self.parser.release()
        super().connection_lost(exc)


class _Repeat(NamedTuple):
    """What a connection's last forwarded request was allowed with, for the lane to
    compare the next one against: the configuration, the request's Proxy-Authorization,
    target and Host as sent, and what `prepare` made of them."""

    rt: Runtime
    auth: bytes | None
    target: bytes
    host: bytes | None
    client: ClientConfig
    dest: http1.Target
    max_body: int


class _Forward(NamedTuple):
    """What a request to one destination gets on its way: Host is always the target's
    authority (RFC 9112 section 3.2.2), never the client's spelling of it, so the vendor
    sees one canonical name; the sanitiser's drop and keep sets; a route's credential.
    `before` holds the Host field, first of the fields forwarded."""

    before: Sequence[tuple[bytes, bytes]]
    drop: frozenset[bytes]
    keep: frozenset[bytes] | None
    inject: tuple[bytes, bytes] | None


def retry_after_seconds(value: bytes) -> float | None:
    """Retry-After as delta-seconds or an HTTP-date (RFC 9110 section 10.2.3)."""
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _message(decision: Decision, status: int) -> bytes:
    text = {
        407: "Proxy authentication required: send Proxy-Authorization: Basic with user = "
        "client name and password = token.",
        403: "The gateway's policy does not allow this destination.",
        400: "Bad request.",
        404: "No route by that name: see [[routes]] in the gateway's configuration.",
        413: "The request body is larger than the gateway forwards (limits.max_body_bytes).",
        429: "The destination's rate or concurrency limit is reached; retry after Retry-After.",
        500: "The gateway hit an internal error; it is logged.",
        502: "The gateway could not reach the destination.",
        503: "The gateway cannot serve this now; retry after the Retry-After seconds.",
        504: "The destination did not answer in time.",
    }.get(status, "Request refused.")
    return f"{text} (reason: {decision.reason.value})\n".encode()
