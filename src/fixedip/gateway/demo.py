"""The offline demo's "vendor": an HTTP echo that answers with the caller's address.

Only the embedded default starts it (`[demo] echo`), and the guard lets the gateway
reach it by exact address and port, so the first curl after `make run` shows the fixed
IP at work on any machine without touching the network.
"""

from __future__ import annotations

import asyncio
import json
from typing import cast

from fixedip.proto.http1 import (
    EndOfMessage,
    ProtocolError,
    RequestHead,
    RequestParser,
    simple_response,
)


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.head: RequestHead | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.parser.release()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            events = self.parser.feed(data)
        except (ProtocolError, RuntimeError):
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestHead):
                self.head = event
            elif isinstance(event, EndOfMessage) and self.head is not None:
                peer = self.transport.get_extra_info("peername")
                body = (
                    json.dumps(
                        {
                            "you_came_from": peer[0],
                            "method": self.head.method,
                            "path": self.head.target.decode("latin-1"),
                        }
                    ).encode()
                    + b"\n"
                )
                close = not self.head.keep_alive
                self.transport.write(
                    simple_response(200, body, content_type=b"application/json", close=close)
                )
                if close:
                    self.transport.close()
                    return


async def start_echo(host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(_Echo, host, port, reuse_address=True)
