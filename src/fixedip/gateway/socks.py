"""The SOCKS5 listener: RFC 1928 CONNECT behind RFC 1929 user/password, then a tunnel.

The handshake is `fixedip.proto.socks5` (sans-IO); this module only wires it to the
socket and to the same decide-and-dial path the HTTP listener uses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from fixedip.config import ClientConfig
from fixedip.gateway.runtime import Refused, dial
from fixedip.gateway.session import ClientSession
from fixedip.policy.auth import Credentials
from fixedip.policy.decision import Decision, Reason
from fixedip.proto import http1
from fixedip.proto.http1 import ProtocolError
from fixedip.proto.socks5 import AuthRequest, Close, ConnectRequest, Event, Socks5Server

if TYPE_CHECKING:
    from fixedip.gateway.server import Gateway


log = logging.getLogger("fixedip.socks")


class SocksSession(ClientSession):
    listener = "socks"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.socks = Socks5Server(require_auth=True)
        self.client: ClientConfig | None = None
        self.dial_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.closed:
            self.new_record("socks", None)
            self.arm(self.gw.runtime.config.timeouts.header_s, "handshake")

    @property
    def idle(self) -> bool:
        return not self.tunnel and self.dial_task is None

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            self.tunnel_data(data)
            return
        self.handle(self.socks.feed(data))

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, AuthRequest):
                if not self.authenticate(event):
                    return
                # A request pipelined behind the credentials is parsed only now.
                self.handle(self.socks.feed(b""))
                return
            if isinstance(event, ConnectRequest):
                self.pause("dial")
                self.dial_task = self.loop.create_task(self.connect(event))
            elif isinstance(event, Close):
                self.flush()
                self.finish_record(Reason.BAD_REQUEST, rule=f"socks5 {event.reason}")
                self.close()
                return
        self.flush()

    def flush(self) -> None:
        out = self.socks.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    def authenticate(self, event: AuthRequest) -> bool:
        client, decision = self.gw.runtime.auth.check(
            Credentials(event.username, event.password), self.peer_ip
        )
        ok = decision.allowed
        self.client = client if ok else None
        if self.record is not None and client is not None:
            self.record.client = client.name
        self.socks.accept_auth(ok)
        if not ok:
            self.flush()
            if self.record is not None:
                self.record.status = 1
            self.finish_record(decision.reason, decision.rule)
            self.close()
        return ok

    async def connect(self, request: ConnectRequest) -> None:
        record = self.record
        assert record is not None and self.client is not None
        rt = self.gw.runtime
        try:
            host, is_ip = http1.canonical_host(
                f"[{request.host}]" if ":" in request.host else request.host
            )
        except ProtocolError:
            self.reply_failure(Decision(Reason.BAD_REQUEST))
            return
        record.host, record.port = host, request.port
        if not self.claim(self.client.name):
            self.reply_failure(Decision(Reason.CLIENT_LIMIT))
            return
        try:
            dialed = await dial(
                rt,
                self.gw.resolver,
                self.gw.upstreams,
                self.gw.metrics,
                self.gw.health,
                self.client,
                host,
                request.port,
                is_ip,
                tunnel=True,
            )
        except Refused as exc:
            self.reply_failure(exc.decision)
            return
        except Exception:
            log.exception("internal error handling SOCKS5 CONNECT from %s", self.peer)
            self.reply_failure(Decision(Reason.INTERNAL_ERROR))
            return
        if self.closed or self.record is not record:  # gone, or timed out meanwhile
            if dialed.permit is not None:
                dialed.permit.release()
            dialed.upstream.abort()
            return
        record.resolved = dialed.address_text
        record.egress, record.egress_public = dialed.egress.bind_text, dialed.egress.public_text
        record.rule = dialed.rule
        record.status = 0
        self.permit = dialed.permit
        bound: tuple[Any, ...] = ("0.0.0.0", 0)  # IPv6 names have four fields
        if dialed.upstream.transport is not None:
            bound = dialed.upstream.transport.get_extra_info("sockname") or bound
        self.socks.reply(0, ipaddress.ip_address(bound[0].split("%", 1)[0]), bound[1])
        self.flush()
        self.start_tunnel(dialed.upstream, self.socks.take_leftover())
        self.resume("dial")

    def reply_failure(self, decision: Decision) -> None:
        code = decision.socks_reply
        self.socks.reply(code)
        self.flush()
        if self.record is not None:
            self.record.status = code
        self.finish_record(decision.reason, decision.rule)
        self.close()

    def on_timeout(self, reason: str) -> None:
        self.finish_record(
            Reason.BAD_REQUEST, rule="socks5 handshake timeout"
        ) if not self.tunnel else None
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.dial_task is not None and not self.dial_task.done():
            self.dial_task.cancel()
        super().connection_lost(exc)
