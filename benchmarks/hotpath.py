"""Python cost per keep-alive request, without sockets: the number to optimise against.

Drives the real `HttpProxySession` and a pooled `Upstream` of a real `Gateway` (auth,
policy, guard, sanitising, block detection, metrics and the flow log all on) through
transports that only collect bytes, so no syscall or scheduling noise is measured, and
reports CPU microseconds per request (best of several rounds). `--profile` prints where
the time goes (cProfile, sorted by own time).

    .venv/bin/python -m benchmarks.hotpath [--requests N] [--rounds R] [--profile] [--llhttp-only]
                                           [--close] [--no-lane]

`--close` measures a connection per request instead (`Connection: close`): a new session
for every request, through connection_made and connection_lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

from fixedip.config import parse
from fixedip.gateway import http_proxy
from fixedip.gateway.http_proxy import HttpProxySession
from fixedip.gateway.server import Gateway
from fixedip.gateway.upstream import Upstream
from fixedip.policy import tokens
from fixedip.proto import http1

EGRESS = "127.0.0.10"
ORIGIN = ("127.0.0.1", 8080)
REQUEST = (
    b"GET http://127.0.0.1:8080/ HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"Proxy-Authorization: Basic " + base64.b64encode(b"bench:bench-token") + b"\r\n"
    b"User-Agent: wrk\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)
CLOSE_REQUEST = REQUEST[:-2] + b"Connection: close\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx\r\n"
    b"Date: Mon, 23 Nov 2026 09:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 3\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"ok\n"
)


class _Transport:
    """The parts of asyncio.Transport a session and an upstream use; writes are kept."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closing = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def config_text(flow: Path) -> str:
    return tomli_w.dumps(
        {
            "listen": {"http": "127.0.0.1:0", "socks": "", "admin": ""},
            "egress": {"ips": [EGRESS]},
            "guard": {"allow_cidrs": ["127.0.0.1/32"]},
            "log": {"flow": str(flow)},
            "clients": [
                {
                    "name": "bench",
                    "token_hash": tokens.hash_token("bench-token"),
                    "allow": ["127.0.0.1:*"],
                }
            ],
        }
    )


class Bench:
    """One gateway, one client connection and one pooled upstream connection."""

    def __init__(self, gateway: Gateway, close: bool = False) -> None:
        self.gw = gateway
        self.close = close
        self.client = _Transport(("127.0.0.1", 40000))
        self.session = HttpProxySession(gateway)
        self.session.connection_made(self.client)  # type: ignore[arg-type]
        key = (EGRESS, ORIGIN[0], ORIGIN[1], "")
        self.up_transport = _Transport(ORIGIN)
        self.upstream = Upstream(key, gateway.upstreams)
        self.upstream.connection_made(self.up_transport)  # type: ignore[arg-type]
        gateway.upstreams.give(self.upstream)

    def exchange(self) -> None:
        if self.close:
            self.closed_exchange()
            return
        self.session.data_received(REQUEST)
        self.upstream.data_received(RESPONSE)

    def closed_exchange(self) -> None:
        """A new client connection for one request, closed after the answer."""
        session = HttpProxySession(self.gw)
        self.session = session
        session.connection_made(self.client)  # type: ignore[arg-type]
        session.data_received(CLOSE_REQUEST)
        self.upstream.data_received(RESPONSE)
        if not self.client.closing:
            raise SystemExit("hotpath: the session did not close after Connection: close")
        self.client.closing = False
        session.connection_lost(None)

    def check(self) -> None:
        """One exchange end to end: the vendor got the request, the client the answer."""
        self.client.written.clear()
        self.up_transport.written.clear()
        self.exchange()
        sent = b"".join(self.up_transport.written)
        answer = b"".join(self.client.written)
        if not sent.startswith(b"GET / HTTP/1.1\r\n") or b"Proxy-Authorization" in sent:
            raise SystemExit(f"hotpath: unexpected upstream request {sent[:200]!r}")
        if not answer.startswith(b"HTTP/1.1 200 OK\r\n") or not answer.endswith(b"ok\n"):
            raise SystemExit(f"hotpath: unexpected response {answer[:200]!r}")
        if self.gw.upstreams.idle_count != 1:
            raise SystemExit("hotpath: the upstream connection did not return to the pool")

    async def rounds(self, requests: int, rounds: int) -> float:
        """Best CPU microseconds per request over `rounds` rounds, each ending with a
        flush of the flow log (records are encoded and written then)."""
        best = float("inf")
        for _ in range(rounds):
            self.client.written.clear()
            self.up_transport.written.clear()
            start = time.process_time()
            for _ in range(requests):
                self.exchange()
            await self.gw.flowlog.flush()
            best = min(best, (time.process_time() - start) / requests * 1e6)
            if self.gw.flowlog.dropped:
                raise SystemExit("hotpath: the flow log dropped records; use fewer --requests")
        return best


async def measure(requests: int, rounds: int, profile: bool, close: bool = False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = parse(config_text(Path(tmp) / "flow.jsonl"), "<hotpath>")
        gateway = Gateway(config)
        gateway.flowlog.start()
        try:
            bench = Bench(gateway, close)
            bench.check()
            await bench.rounds(min(requests, 2000), 1)  # warm the caches
            if profile:
                prof = cProfile.Profile()
                prof.enable()
                await bench.rounds(requests, 1)
                prof.disable()
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(60)
            return await bench.rounds(requests, rounds)
        finally:
            await gateway.flowlog.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=20000, help="requests per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    p.add_argument("--profile", action="store_true", help="print a cProfile of one round")
    p.add_argument(
        "--close", action="store_true", help="a new connection per request (Connection: close)"
    )
    p.add_argument(
        "--llhttp-only",
        action="store_true",
        help="parse every head with llhttp's callbacks (the path before the one-pass parser)",
    )
    p.add_argument(
        "--no-lane",
        action="store_true",
        help="send repeat requests down the generic path too (the path before the lane)",
    )
    args = p.parse_args(argv)
    http1.FAST_HEADS = not args.llhttp_only
    http_proxy.LANE = not (args.no_lane or args.llhttp_only)  # the lane parses with regexes
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    us = runner(measure(args.requests, args.rounds, args.profile, args.close))
    kind = "Connection: close" if args.close else "keep-alive"
    print(f"python cost per {kind} request: {us:.1f} µs ({1e6 / us:,.0f} req per CPU-s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
