"""Real servers the tests talk to: the gateway (in a thread), a stub vendor, DNS, TCP echo.

Everything listens on 127.0.0.1 with port 0 and is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import tomli_w
import uvloop

from fixedip.config import Config, parse
from fixedip.policy.tokens import hash_token

ALLOWED_EGRESS = "127.0.0.10"
OTHER_EGRESS = "127.0.0.11"

# Hashing is slow on purpose; hash each test token once per process.
TOKENS = {
    "billing": "tok-billing-s3cret",
    "pinned": "tok-pinned-s3cret",
    "other": "tok-other-s3cret",
}
_HASHES: dict[str, str] = {}


def token_hash(name: str) -> str:
    if name not in _HASHES:
        _HASHES[name] = hash_token(TOKENS[name])
    return _HASHES[name]


def url_of(address: tuple[str, int], path: str = "") -> str:
    return f"http://{address[0]}:{address[1]}{path}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def wait_for(check: Callable[[], bool], timeout: float = 5) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


# --- the gateway, in a thread of its own ---------------------------------------------


class RunningGateway:
    """A real Gateway on its own uvloop loop in a background thread."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.loop = loop or uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateway: Any = None
        self.addresses: dict[str, tuple[str, int]] = {}

    def start(self) -> RunningGateway:
        from fixedip.gateway.server import Gateway

        self.thread.start()

        async def boot() -> None:
            self.gateway = Gateway(self.config)
            await self.gateway.start()
            self.addresses = self.gateway.addresses()

        self.run(boot())
        return self

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    def stop(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.run(self.gateway.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def http(self) -> tuple[str, int]:
        return self.addresses["http"]

    @property
    def socks(self) -> tuple[str, int]:
        return self.addresses["socks"]

    @property
    def admin(self) -> tuple[str, int]:
        return self.addresses["admin"]

    def proxy_url(self, user: str = "billing", password: str | None = None) -> str:
        password = TOKENS[user] if password is None else password
        host, port = self.http
        return f"http://{user}:{password}@{host}:{port}"

    def socks_url(
        self, user: str = "billing", password: str | None = None, scheme: str = "socks5h"
    ) -> str:
        password = TOKENS[user] if password is None else password
        host, port = self.socks
        return f"{scheme}://{user}:{password}@{host}:{port}"


def gateway_config(tmp_path: Path, **overrides: Any) -> Config:
    """A test configuration: listeners on port 0, egress .10/.11, loopback vendor allowed."""
    data: dict[str, Any] = {
        "listen": {"http": "127.0.0.1:0", "socks": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "egress": {"ips": [ALLOWED_EGRESS, OTHER_EGRESS], "strategy": "failover"},
        "guard": {"allow_cidrs": ["127.0.0.1/32"]},
        "log": {"flow": str(tmp_path / "flow.jsonl")},
        "timeouts": {"connect_s": 2},
        "clients": [
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["127.0.0.1:*", "localhost:*", "vendor.test:*"],
                "deny": ["127.0.0.1:9"],
                "connect_ports": [443],
            },
            {
                "name": "pinned",
                "token_hash": token_hash("pinned"),
                "allow": ["127.0.0.1:*"],
                "egress": OTHER_EGRESS,
            },
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse(tomli_w.dumps(data), str(tmp_path / "fixedip.toml"))


def read_flow_log(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Wait until the flow log holds at least `count` records (it is written in batches)."""
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            records = [json.loads(line) for line in path.read_text().splitlines() if line]
            if len(records) >= count:
                return records
        time.sleep(0.05)
    return records


class RawVendor:
    """A destination that speaks bytes: it reads whole requests (head and Content-Length
    body) on any number of connections, keeps them raw in `requests`, and answers the
    n-th request overall (n from 1) with `answer(n)`: the pieces to send, each a separate
    send, and whether to close the connection after them."""

    def __init__(self, answer: Callable[[int], tuple[list[bytes], bool]]) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        # The client may hang up on a long answer, and close() shuts every connection.
        with conn, contextlib.suppress(OSError):
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = content_length(head)
                while len(buf) < length:
                    buf += conn.recv(65536)
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + buf[:length])
                    pieces, close = self.answer(len(self.requests))
                buf = buf[length:]
                for i, piece in enumerate(pieces):
                    if i:
                        time.sleep(0.05)  # a separate read at the other end
                    conn.sendall(piece)
                if close:
                    return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv()
        for thread in self.threads:
            thread.join(10)


def content_length(head: bytes) -> int:
    """The Content-Length of a message head (0 without one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head, then a Content-Length body), however the gateway's
    writes were split into segments; what arrived so far if the peer closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = content_length(head)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# --- the stub vendor ------------------------------------------------------------------


class _VendorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: VendorServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        peer, port = self.client_address[0], self.client_address[1]
        self.server.seen.append((peer, port, self.command, self.path))
        path = self.path.split("?", 1)[0]
        query = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p)
        if path == "/slow":
            time.sleep(float(query.get("s", "1")))
        if path == "/big":
            self._send_big(int(query.get("n", "1000000")), query.get("mode", "length"))
            return
        status = 200 if peer in self.server.allowed else 403
        payload = json.dumps(
            {
                "peer": peer,
                "port": port,
                "method": self.command,
                "path": self.path,
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
        ).encode()
        if path == "/status":
            status = int(query.get("code", "200"))
        self.send_response(status)
        if "retry_after" in query:
            self.send_header("Retry-After", query["retry_after"])
        if path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for piece in (payload[:10], payload[10:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/close":
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.close_connection = True
            return
        self.send_header("Content-Type", "application/json")
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(payload)

    def _send_big(self, n: int, mode: str) -> None:
        block = hashlib.sha256(b"fixedip").digest() * 2048  # 64 KiB
        self.send_response(200)
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        sent = 0
        while sent < n:
            piece = block[: min(len(block), n - sent)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if mode == "chunked" else piece)
            sent += len(piece)
        if mode == "chunked":
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class VendorServer(ThreadingHTTPServer):
    """Answers 200 only to the allowlisted egress address, 403 to anyone else."""

    daemon_threads = True

    def __init__(self, allowed: set[str]) -> None:
        super().__init__(("127.0.0.1", 0), _VendorHandler)
        self.allowed = allowed
        self.seen: list[tuple[str, int, str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def big_body_sha256(n: int) -> str:
    block = hashlib.sha256(b"fixedip").digest() * 2048
    h = hashlib.sha256()
    sent = 0
    while sent < n:
        piece = block[: min(len(block), n - sent)]
        h.update(piece)
        sent += len(piece)
    return h.hexdigest()


# --- a raw TCP echo, and a DNS server ---------------------------------------------------


class EchoServer:
    """Echoes bytes back; tells the peer address first (`peer <ip>\\n`)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn, addr), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket, addr: Any) -> None:
        with conn:
            conn.sendall(f"peer {addr[0]}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class DNSServer:
    """A real DNS server (dnslib) on 127.0.0.1 answering from a fixed table."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        from dnslib import AAAA, QTYPE, RR, A
        from dnslib.server import BaseResolver, DNSLogger
        from dnslib.server import DNSServer as _Server

        outer = self

        class Resolver(BaseResolver):  # type: ignore[misc]
            def resolve(self, request: Any, handler: Any) -> Any:
                reply = request.reply()
                name = str(request.q.qname).rstrip(".").lower()
                outer.queries.append((name, QTYPE[request.q.qtype]))
                if name not in outer.table:
                    reply.header.rcode = 3  # NXDOMAIN
                    return reply
                for addr in outer.table[name]:
                    if ":" in addr and request.q.qtype == QTYPE.AAAA:
                        reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(addr), ttl=60))
                    elif ":" not in addr and request.q.qtype == QTYPE.A:
                        reply.add_answer(RR(name, QTYPE.A, rdata=A(addr), ttl=60))
                return reply

        self.table = table
        self.queries: list[tuple[str, str]] = []
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server = _Server(
            Resolver(),
            port=self.port,
            address="127.0.0.1",
            logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"),
        )
        self.server.start_thread()

    def close(self) -> None:
        self.server.stop()


@contextlib.contextmanager
def running(config: Config) -> Iterator[RunningGateway]:
    gw = RunningGateway(config).start()
    try:
        yield gw
    finally:
        gw.stop()
