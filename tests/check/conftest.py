"""Local stand-ins for the internet `fixedip check` talks to, all on 127.0.0.1:

- `ranges_site`: an aiohttp server publishing the committed range-file fixtures the way
  the providers do (Azure behind its download page, ETag and Last-Modified on each);
- `echo_site`: IP-echo endpoints (plain text, JSON, one that lies, one that fails) that
  see the caller through a 1:1 NAT table, as a cloud's internet edge would;
- `zone`: a dnslib DNS server answering PTR, A, TXT and blocklist queries from a table,
  with any return code on demand.

The fixtures hold documentation addresses (203.0.113.0/24, 198.51.100.0/24,
192.0.2.0/24, 2001:db8::/32) as data only: nothing here sends a packet to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"
FIXEDIP = Path(sys.executable).parent / "fixedip"
LAST_MODIFIED = "Wed, 19 Nov 2025 10:00:00 GMT"


def fixedip(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )


class LoopbackApp:
    """An aiohttp application on 127.0.0.1 (port 0) in a thread of its own."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    def start(self) -> LoopbackApp:
        self.thread.start()

        async def boot() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# --- the providers' range files --------------------------------------------------------

RANGE_PATHS = {
    "aws": ("/ip-ranges.json", "aws-ip-ranges.json"),
    "google": ("/ipranges/cloud.json", "google-cloud.json"),
    "azure": ("/en-us/download/details.aspx", "azure-download-page.html"),
    "cloudflare-v4": ("/ips-v4", "cloudflare-ips-v4.txt"),
    "cloudflare-v6": ("/ips-v6", "cloudflare-ips-v6.txt"),
    "oracle": ("/iaas/tools/public_ip_ranges.json", "oracle-public_ip_ranges.json"),
    "digitalocean": ("/geo/google.csv", "digitalocean-google.csv"),
}
AZURE_FILE = "/download/7/1/D/71D86715-5596-4529-9B13-DA13A5DE5B63/ServiceTags_Public_20251117.json"


class RangesSite(LoopbackApp):
    """Serves each fixture with an ETag and Last-Modified, answering 304 to a matching
    If-None-Match; `override` replaces a path's body (to publish a broken file)."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._serve)
        super().__init__(app)
        self.files = {path: FIXTURES / name for path, name in RANGE_PATHS.values()}
        self.files[AZURE_FILE] = FIXTURES / "ServiceTags_Public_20251117.json"
        self.override: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []

    async def _serve(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("If-None-Match")))
        if request.path in self.override:
            body = self.override[request.path]
        elif request.path in self.files:
            body = self.files[request.path].read_bytes()
        else:
            raise web.HTTPNotFound()
        if request.path == RANGE_PATHS["azure"][0]:
            body = body.replace(b"{BASE}", f"http://127.0.0.1:{self.port}".encode())
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    def sources(self) -> list[str]:
        """`--source NAME=URL` arguments for every provider."""
        out = []
        for name, (path, _) in RANGE_PATHS.items():
            out += ["--source", f"{name}={self.url(path)}"]
        return out


@pytest.fixture
def ranges_site() -> Iterator[RangesSite]:
    site = RangesSite()
    site.start()
    yield site
    site.stop()


@pytest.fixture
def ranges_cache(ranges_site: RangesSite, tmp_path: Path) -> Path:
    """A cache filled by the real `fixedip ranges update` from `ranges_site`."""
    cache = tmp_path / "ranges"
    out = fixedip("ranges", "update", "--cache", str(cache), *ranges_site.sources())
    assert out.returncode == 0, out.stdout + out.stderr
    return cache


# --- IP-echo endpoints -----------------------------------------------------------------


class EchoSite(LoopbackApp):
    """IP-echo endpoints. `nat` maps the peer address to the public one the endpoint
    reports (a cloud's 1:1 NAT); `/lie` always reports `lie_ip`; `/fail` answers 500;
    `/flip` reports the peer for its first `flip_after` requests, then `flip_ip`."""

    def __init__(self) -> None:
        app = web.Application()
        app.router.add_get("/plain", self._plain)
        app.router.add_get("/json", self._json)
        app.router.add_get("/lie", self._lie)
        app.router.add_get("/fail", self._fail)
        app.router.add_get("/flip", self._flip)
        super().__init__(app)
        self.nat: dict[str, str] = {}
        self.lie_ip = "203.0.113.99"
        self.flip_ip = "203.0.113.98"
        self.flip_after = 1
        self.flip_requests = 0
        self.peers: list[str] = []

    def _seen(self, request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername")[0]  # type: ignore[union-attr]
        self.peers.append(peer)
        return self.nat.get(peer, peer)

    async def _plain(self, request: web.Request) -> web.Response:
        return web.Response(text=self._seen(request) + "\n")

    async def _json(self, request: web.Request) -> web.Response:
        return web.json_response({"ip": self._seen(request)})

    async def _lie(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(text=self.lie_ip)

    async def _fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def _flip(self, request: web.Request) -> web.Response:
        seen = self._seen(request)
        self.flip_requests += 1
        return web.Response(text=seen if self.flip_requests <= self.flip_after else self.flip_ip)


@pytest.fixture
def echo_site() -> Iterator[EchoSite]:
    site = EchoSite()
    site.start()
    yield site
    site.stop()


# --- DNS -------------------------------------------------------------------------------


class Zone:
    """A dnslib DNS server on 127.0.0.1: `records[(name, qtype)]` is a list of rdata
    strings, or a return code name ("REFUSED", "SERVFAIL"); anything else is NXDOMAIN."""

    def __init__(self) -> None:
        from dnslib import AAAA, PTR, QTYPE, RCODE, RR, TXT, A
        from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

        class Handler(DNSHandler):  # type: ignore[misc]
            udplen = 512  # RFC 1035's UDP limit: bigger answers are truncated (TC set)

        outer = self
        rdata: dict[str, Callable[[str], Any]] = {"A": A, "AAAA": AAAA, "PTR": PTR, "TXT": TXT}

        class Resolver(BaseResolver):  # type: ignore[misc]
            def resolve(self, request: Any, handler: Any) -> Any:
                reply = request.reply()
                name = str(request.q.qname).rstrip(".").lower()
                qtype = QTYPE[request.q.qtype]
                outer.queries.append((name, qtype))
                answer = outer.records.get((name, qtype))
                if isinstance(answer, str):
                    reply.header.rcode = getattr(RCODE, answer)
                elif answer is None:
                    exists = any(n == name for n, _ in outer.records)
                    reply.header.rcode = RCODE.NOERROR if exists else RCODE.NXDOMAIN
                else:
                    for value in answer:
                        rr = RR(name, getattr(QTYPE, qtype), rdata=rdata[qtype](value), ttl=60)
                        reply.add_answer(rr)
                return reply

        self.records: dict[tuple[str, str], list[str] | str] = {}
        self.queries: list[tuple[str, str]] = []
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data")
        # UDP truncates answers over 512 bytes (TC set); the same port over TCP has them.
        # A port free for UDP may be taken for TCP: try a few until both bind.
        for _ in range(20):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            probe.close()
            self.servers = []
            try:
                for tcp in (False, True):
                    self.servers.append(
                        DNSServer(
                            Resolver(),
                            port=self.port,
                            address="127.0.0.1",
                            logger=quiet,
                            tcp=tcp,
                            handler=Handler,
                        )
                    )
            except OSError:
                for server in self.servers:
                    server.server.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")
        for server in self.servers:
            server.start_thread()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ptr(self, ip: str, name: str, forward: list[str] | None = None) -> None:
        """A PTR for `ip`, and `name`'s A records (default: `ip`, so it confirms)."""
        import ipaddress

        self.records[(ipaddress.ip_address(ip).reverse_pointer, "PTR")] = [name]
        self.records[(name, "A")] = [ip] if forward is None else forward

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def zone() -> Iterator[Zone]:
    server = Zone()
    yield server
    server.close()
