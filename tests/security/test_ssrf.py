"""SSRF and destination confusion: no spelling of an internal address gets through.

Every case goes through a real gateway (HTTP absolute-form, CONNECT or SOCKS5) whose
client may go anywhere (`*:*`), so only the SSRF guard and the parsers stand in the way.
Each asserts the answer (status and `Proxy-Status`; for SOCKS5 the reply code and the
reason the gateway counted, since 0x02 covers every refusal) and that no upstream
connection happened, two ways:

- a trap listens on the test port on every local IPv4 and IPv6 address, and
- a spy on the gateway's upstream `connect` records every attempt, including one to an
  address off this machine (which the loopback-only namespace would make unreachable).

Expected answers: 403 `destination_ip_prohibited` when the gateway understood the target
and the guard refused the address; 403 `proxy_loop_detected` for the gateway's own
listeners; 400 `http_request_error` when the spelling is malformed or ambiguous (the
gateway refuses to guess what a client or a resolver would make of it); 403
`http_request_denied` (`port_not_allowed`) for a tunnel to a port outside
`connect_ports`. SOCKS5 refusals are 0x02 (not allowed by ruleset) and 0x01 for a
malformed request. Each case id says which, and why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import uvloop
from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger
from dnslib.server import DNSServer as DnslibServer

from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    gateway_config,
    token_hash,
)

AUTH = f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n"

# What each kind of refusal looks like: (HTTP status, Proxy-Status error, details).
EXPECT = {
    "ip": (403, "destination_ip_prohibited", "guard_denied"),
    "loop": (403, "proxy_loop_detected", "guard_loop"),
    "bad": (400, "http_request_error", "bad_request"),
    "port": (403, "http_request_denied", "port_not_allowed"),
}
SOCKS_NOT_ALLOWED = 0x02
SOCKS_GENERAL_FAILURE = 0x01
SOCKS_EXPECT = {
    "ip": SOCKS_NOT_ALLOWED,
    "loop": SOCKS_NOT_ALLOWED,
    "port": SOCKS_NOT_ALLOWED,
    "bad": SOCKS_GENERAL_FAILURE,
}
_ID_SUFFIX = {
    "ip": "403-ip-prohibited",
    "loop": "403-loop",
    "bad": "400-malformed",
    "port": "403-port-not-allowed",
}

PUBLIC_V4 = "93.184.215.14"  # passes the guard; unreachable from the test namespace
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
VICTIM = "127.0.0.2"  # loopback, outside the exception 127.0.0.1/32: never to be reached
HAIRPIN_PUBLIC = "198.18.7.7"  # an egress IP's "public" address (1:1 NAT), never assigned

# name -> answers; the scripted DNS server gives these to A and AAAA queries by family.
DNS_TABLE: dict[str, list[str]] = {
    "allowed.test": [PUBLIC_V4],
    "loopback.test": ["127.0.0.1"],
    "loop.test": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
    "localhost.localdomain": ["127.0.0.1", "::1"],
    "ip6-localhost": ["::1"],
    "ip6-loopback": ["::1"],
    "private.test": ["10.1.2.3"],
    "private172.test": ["172.16.5.4"],
    "private192.test": ["192.168.0.10"],
    "metadata.test": ["169.254.169.254"],
    "metadata.google.internal": ["169.254.169.254"],
    "ecs-metadata.test": ["169.254.170.2"],
    "alibaba-metadata.test": ["100.100.100.200"],
    "cgnat.test": ["100.64.1.1"],
    "zero.test": ["0.0.0.0"],
    "multicast.test": ["224.0.0.251"],
    "broadcast.test": ["255.255.255.255"],
    "benchmark.test": ["198.18.0.1"],
    "mixed-public-first.test": [PUBLIC_V4, "10.1.2.3"],
    "mixed-private-first.test": ["10.1.2.3", PUBLIC_V4],
    "mixed-many.test": [f"93.184.215.{i}" for i in range(1, 9)] + ["169.254.169.254"],
    "internal-a-public-aaaa.test": ["10.1.2.3", PUBLIC_V6],
    "public-a-loopback-aaaa.test": [PUBLIC_V4, "::1"],
    "public-a-metadata-aaaa.test": [PUBLIC_V4, "fd00:ec2::254"],
    "public-a-mapped-aaaa.test": [PUBLIC_V4, "::ffff:169.254.169.254"],
    "public-a-nat64-aaaa.test": [PUBLIC_V4, "64:ff9b::a00:1"],
    "public-a-6to4-aaaa.test": [PUBLIC_V4, "2002:a9fe:a9fe::1"],
    "public-a-ula-aaaa.test": [PUBLIC_V4, "fd12:3456::1"],
    "public-a-linklocal-aaaa.test": [PUBLIC_V4, "fe80::1"],
    "public-aaaa-private-a.test": ["192.168.1.1", PUBLIC_V6],
    # the rebinding tests' names point at the vendor / victim
    "vendor-and-victim.test": ["127.0.0.1", VICTIM],
    "vendor-and-private.test": ["127.0.0.1", "10.1.2.3"],
    "vendor-with-loopback-aaaa.test": ["127.0.0.1", "::1"],
}


# --- real servers: a scripted DNS server and listeners that must stay silent ------------


class ScriptedDNS:
    """A dnslib server whose answers may change from one query to the next.

    `script(name, [first], [second], ..., ttl=0)`: the n-th query of a type gets the n-th
    answer set (the last one repeats; `cycle=True` goes round). Names in DNS_TABLE answer
    the same every time, with a TTL of 60 s.
    """

    def __init__(self) -> None:
        self.scripts: dict[str, tuple[list[list[str]], int, bool]] = {
            name: ([answers], 60, False) for name, answers in DNS_TABLE.items()
        }
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Resolver(BaseResolver):  # type: ignore[misc]
            def resolve(self, request: Any, handler: Any) -> Any:
                return outer._reply(request)

        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server = DnslibServer(
            Resolver(),
            port=self.port,
            address="127.0.0.1",
            logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"),
        )
        self.server.start_thread()

    def script(self, name: str, *answer_sets: list[str], ttl: int = 0, cycle: bool = False) -> None:
        with self._lock:
            self.scripts[name] = (list(answer_sets), ttl, cycle)

    def count(self, name: str, qtype: str = "A") -> int:
        with self._lock:
            return self.queries.count((name, qtype))

    def _reply(self, request: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            nth = self.queries.count((name, qtype))
            self.queries.append((name, qtype))
            script = self.scripts.get(name)
        if script is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        answer_sets, ttl, cycle = script
        index = nth % len(answer_sets) if cycle else min(nth, len(answer_sets) - 1)
        for text in answer_sets[index]:
            if ":" in text and qtype == "AAAA":
                reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(_packed(text)), ttl=ttl))
            elif ":" not in text and qtype == "A":
                reply.add_answer(RR(name, QTYPE.A, rdata=A(text), ttl=ttl))
        return reply

    def close(self) -> None:
        self.server.stop()


def _packed(text: str) -> tuple[int, ...]:
    # dnslib's own IPv6 text parser rejects the dotted tail of ::ffff:169.254.169.254
    return tuple(ipaddress.IPv6Address(text).packed)


class Listener:
    """A TCP listener nobody should reach; `accepted()` lists who did.

    Never accepts in the background: a connect() that returned means the handshake is
    done and the connection sits in the accept queue, so checking right after the
    gateway answered is exact.
    """

    def __init__(self, host: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[str] = []

    def accepted(self) -> list[str]:
        while True:
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                return self.peers
            conn.close()
            self.peers.append(addr[0])

    def close(self) -> None:
        self.sock.close()


class Trap:
    """One port on every local address (0.0.0.0 and ::): any connection to it is a leak."""

    def __init__(self) -> None:
        for _ in range(20):
            v4 = Listener("0.0.0.0")
            try:
                v6 = Listener("::", v4.port)
            except OSError:
                v4.close()
                continue
            self.listeners = (v4, v6)
            self.port = v4.port
            return
        raise RuntimeError("no port free on both 0.0.0.0 and ::")

    def accepted(self) -> list[str]:
        return [peer for listener in self.listeners for peer in listener.accepted()]

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, for listeners whose ports connect_ports must list."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# --- talking to the gateway ------------------------------------------------------------


def http_exchange(address: tuple[str, int], request: bytes) -> tuple[int, str, bytes]:
    """Send one raw request; return (status, Proxy-Status, body)."""
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data, "the gateway closed the connection without answering"
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        length = int(headers.get("content-length", "-1"))
        while len(body) < length or (length < 0 and lines[0].split()[1] == "200"):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers.get("proxy-status", ""), body


def proxy_status(value: str) -> tuple[str, str]:
    match = re.fullmatch(r'fixedip; error=([a-z_]+); details="([a-z_]+)"', value)
    assert match, f"not a fixedip Proxy-Status: {value!r}"
    return match[1], match[2]


def get(url: str, *extra_headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in extra_headers)
    return f"GET {url} HTTP/1.1\r\n{extra}{AUTH}Connection: close\r\n\r\n".encode()


def connect(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{AUTH}\r\n".encode()


def socks_address(atyp: str, host: str) -> bytes:
    """DST.ADDR with its ATYP byte (RFC 1928 section 4)."""
    if atyp == "ipv4":
        return b"\x01" + ipaddress.IPv4Address(host).packed
    if atyp == "ipv6":
        return b"\x04" + ipaddress.IPv6Address(host).packed
    return b"\x03" + bytes([len(host)]) + host.encode()


def socks_open(address: tuple[str, int], atyp: str, host: str, port: int) -> socket.socket:
    """User/password handshake and CONNECT; the socket is positioned after the reply head."""
    s = socket.create_connection(address, timeout=5)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    user, password = b"billing", TOKENS["billing"].encode()
    s.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    assert s.recv(2) == b"\x01\x00"
    s.sendall(b"\x05\x01\x00" + socks_address(atyp, host) + struct.pack("!H", port))
    return s


def socks_reply(address: tuple[str, int], atyp: str, host: str, port: int) -> int:
    with socks_open(address, atyp, host, port) as s:
        reply = s.recv(262)
    assert len(reply) >= 2, "the gateway closed the SOCKS5 connection without a reply"
    return reply[1]


def tunnel_get(s: socket.socket) -> dict[str, Any]:
    """Plain HTTP through an open tunnel to the vendor; its JSON echo."""
    s.sendall(b"GET /through-tunnel HTTP/1.1\r\nHost: vendor\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    echoed: dict[str, Any] = json.loads(body)
    return echoed


# --- fixtures: one gateway of each kind for the whole module ------------------------------


class ConnectRecordingLoop(uvloop.Loop):  # type: ignore[misc]
    """An event loop that notes every TCP connect it is asked to make, (egress,
    address, port), before making it: the gateway's upstream connections all go through
    `loop.sock_connect`, compiled or not (a compiled module's calls to its own functions
    cannot be patched)."""

    def __init__(self, seen: list[tuple[str, str, int]]) -> None:
        super().__init__()
        self.seen = seen

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        self.seen.append((str(sock.getsockname()[0]), str(address[0]), int(address[1])))
        await super().sock_connect(sock, address)


@pytest.fixture(scope="module")
def attempts() -> list[tuple[str, str, int]]:
    """Every upstream connect the gateways of this module attempt: (egress, address, port)."""
    return []


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


@pytest.fixture(scope="module")
def scripted_dns() -> Iterator[ScriptedDNS]:
    server = ScriptedDNS()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rebind_vendor() -> Iterator[VendorServer]:
    server = VendorServer({ALLOWED_EGRESS})
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def victims(rebind_vendor: VendorServer) -> Iterator[list[Listener]]:
    """Listeners on the vendor's port at addresses only a rebinding answer points to."""
    listeners = [Listener(VICTIM, rebind_vendor.port), Listener("::1", rebind_vendor.port)]
    yield listeners
    for listener in listeners:
        listener.close()


@pytest.fixture(scope="module")
def start_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    attempts: list[tuple[str, str, int]],
    trap: Trap,
    scripted_dns: ScriptedDNS,
) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway whose one client may go anywhere; `connect_ports` lists the trap
    port, the gateway's own listener ports and `extra_ports`."""
    started: list[RunningGateway] = []

    def start(
        *,
        allow_cidrs: tuple[str, ...] = (),
        egress: tuple[Any, ...] = (ALLOWED_EGRESS, "127.0.0.11"),
        use_dns: bool = True,
        hosts: tuple[str, str, str] = ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        extra_ports: tuple[int, ...] = (),
    ) -> RunningGateway:
        ports = free_ports(3)
        overrides: dict[str, Any] = {
            "listen": {
                name: f"{host}:{port}"
                for name, host, port in zip(("http", "socks", "admin"), hosts, ports, strict=True)
            },
            "egress": {"ips": list(egress), "strategy": "failover"},
            "guard": {"allow_cidrs": list(allow_cidrs)},
            "clients": [
                {
                    "name": "billing",
                    "token_hash": token_hash("billing"),
                    "allow": ["*:*"],
                    "connect_ports": sorted({443, trap.port, *ports, *extra_ports}),
                }
            ],
        }
        if use_dns:
            overrides["dns"] = {"servers": [f"127.0.0.1:{scripted_dns.port}"]}
        config = gateway_config(tmp_path_factory.mktemp("gateway"), **overrides)
        gw = RunningGateway(config, loop=ConnectRecordingLoop(attempts)).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def guarded(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """The default guard, IPv4 egress, names resolved by the scripted DNS server."""
    return start_gateway()


@pytest.fixture(scope="module")
def guarded_dual(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """The default guard with IPv4 and IPv6 egress: the resolver asks for A and AAAA."""
    return start_gateway(egress=(ALLOWED_EGRESS, "::1"))


@pytest.fixture(scope="module")
def guarded_system(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """The default guard with the system resolver (so /etc/hosts answers `localhost`)."""
    return start_gateway(use_dns=False)


@pytest.fixture(scope="module")
def excepted(
    start_gateway: Callable[..., RunningGateway], rebind_vendor: VendorServer
) -> RunningGateway:
    """Loopback allowed by exception (127.0.0.1/32 only): the vendor is reachable."""
    return start_gateway(allow_cidrs=("127.0.0.1/32",), extra_ports=(rebind_vendor.port,))


@pytest.fixture(scope="module")
def broad_v6_exception(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """IPv4 and IPv6 egress, and an operator exception for all of IPv6 (an IPv6 lab)."""
    return start_gateway(allow_cidrs=("::/0",), egress=(ALLOWED_EGRESS, "::1"))


@pytest.fixture(scope="module")
def hairpin(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """An egress IP that a cloud 1:1-NATs to a public address, listeners on 0.0.0.0 and on
    the egress bind address, and exceptions covering both the public address and loopback."""
    return start_gateway(
        allow_cidrs=("198.18.0.0/15", "127.0.0.0/8"),
        egress=({"bind": ALLOWED_EGRESS, "public": HAIRPIN_PUBLIC},),
        hosts=("0.0.0.0", ALLOWED_EGRESS, "127.0.0.1"),
    )


@contextlib.contextmanager
def nothing_reached(
    attempts: list[tuple[str, str, int]], *listeners: Trap | Listener
) -> Iterator[None]:
    """The block makes no upstream connect attempt and no listener gets a connection."""
    before = len(attempts)
    reached_before = [len(listener.accepted()) for listener in listeners]
    yield
    assert attempts[before:] == [], "the gateway tried to connect upstream"
    for listener, count in zip(listeners, reached_before, strict=True):
        assert listener.accepted()[count:] == [], "a listener got a connection"


def assert_http_refused(
    gw: RunningGateway,
    request: bytes,
    expect: str,
    attempts: list[tuple[str, str, int]],
    trap: Trap,
) -> None:
    with nothing_reached(attempts, trap):
        status, value, _ = http_exchange(gw.http, request)
    want_status, want_error, want_details = EXPECT[expect]
    assert (status, *proxy_status(value)) == (want_status, want_error, want_details)


def assert_socks_refused(
    gw: RunningGateway,
    atyp: str,
    host: str,
    port: int,
    expect: str,
    attempts: list[tuple[str, str, int]],
    trap: Trap,
) -> None:
    reason = EXPECT[expect][2]
    before = decisions(gw, reason)
    with nothing_reached(attempts, trap):
        assert socks_reply(gw.socks, atyp, host, port) == SOCKS_EXPECT[expect]
    # SOCKS5 says 0x02 for every refusal; the gateway's own count says which one it was.
    assert decisions(gw, reason) == before + 1


def decisions(gw: RunningGateway, reason: str) -> float:
    """How many flows the gateway refused for `reason` (read on its loop, so a flow whose
    reply the client already has is counted)."""
    registry = gw.gateway.metrics.registry
    labels = {"decision": "deny", "reason": reason}
    return gw.call(lambda: registry.get_sample_value("fixedip_decisions_total", labels) or 0.0)


def case(target: str, why: str, expect: str = "ip") -> Any:
    return pytest.param(target, expect, id=f"{target}--{why}--{_ID_SUFFIX[expect]}")


def socks_case(target: str, why: str, expect: str = "ip") -> Any:
    reply = f"socks-{SOCKS_EXPECT[expect]:#04x}-{'malformed' if expect == 'bad' else 'not-allowed'}"
    return pytest.param(target, expect, id=f"{target}--{why}--{reply}")


# --- HTTP absolute-form: http://<host>:<trap port>/ -------------------------------------

LEGACY_IPV4 = [
    case("2130706433", "decimal-integer-is-127.0.0.1"),
    case("0177.0.0.1", "octal-first-octet-is-127.0.0.1"),
    case("017700000001", "octal-integer-is-127.0.0.1"),
    case("0x7f.1", "hex-two-part-is-127.0.0.1"),
    case("0X7F.1", "uppercase-hex-is-127.0.0.1"),
    case("0x7f000001", "hex-integer-is-127.0.0.1"),
    case("0x7f.0x0.0x0.0x1", "hex-dotted-is-127.0.0.1"),
    case("127.1", "two-part-short-form-is-127.0.0.1"),
    case("127.0.1", "three-part-short-form-is-127.0.0.1"),
    case("127.000.000.001", "zero-padded-octets-are-octal-127.0.0.1"),
    case("127.0.0.1.", "trailing-dot-on-an-address"),
    case("0x7f.1.", "hex-short-form-with-trailing-dot"),
    case("0", "bare-zero-is-0.0.0.0-the-host-itself"),
    case("0x0", "hex-zero-is-0.0.0.0"),
    case("2852039166", "decimal-integer-is-169.254.169.254-metadata"),
    case("0xa9.0xfe.0xa9.0xfe", "hex-dotted-is-169.254.169.254-metadata"),
    case("0251.0376.0251.0376", "octal-dotted-is-169.254.169.254-metadata"),
    case("169.254.43518", "three-part-short-form-is-169.254.169.254-metadata"),
    case("012.1.2.3", "octal-012-is-10.1.2.3-private"),
    case("167772161", "decimal-integer-is-10.0.0.1-private"),
    case("0xc0.0xa8.1", "hex-short-form-is-192.168.0.1-private"),
    case("4294967295", "decimal-integer-is-255.255.255.255-broadcast"),
    case("127.0.0.08", "08-is-not-octal-ambiguous", "bad"),
    case("0x100.0.0.1", "octet-over-255", "bad"),
    case("1.2.3.4.5", "five-numeric-parts", "bad"),
    case("4294967296", "integer-over-32-bits", "bad"),
    case("127.0.0.1..", "two-trailing-dots", "bad"),
]

INTERNAL_IPV4 = [
    case("127.0.0.1", "loopback"),
    case("127.0.0.2", "loopback-beyond-.1"),
    case("127.255.255.254", "loopback-top-of-8"),
    case("0.0.0.0", "unspecified-reaches-the-host"),
    case("0.1.2.3", "this-network-0/8"),
    case("10.0.0.1", "private-10/8"),
    case("10.255.255.255", "private-10/8-top"),
    case("172.16.0.1", "private-172.16/12"),
    case("172.31.255.254", "private-172.16/12-top"),
    case("192.168.0.1", "private-192.168/16"),
    case("192.168.255.255", "private-192.168/16-top"),
    case("100.64.0.1", "cgnat-100.64/10"),
    case("100.127.255.254", "cgnat-100.64/10-top"),
    case("169.254.169.254", "aws-gcp-azure-metadata"),
    case("169.254.170.2", "aws-ecs-task-metadata"),
    case("100.100.100.200", "alibaba-metadata"),
    case("169.254.0.1", "link-local"),
    case("255.255.255.255", "limited-broadcast"),
    case("224.0.0.1", "multicast-all-hosts"),
    case("239.255.255.250", "multicast-ssdp"),
    case("240.0.0.1", "reserved-240/4"),
    case("198.18.0.1", "benchmark-198.18/15"),
    case("192.0.0.1", "ietf-protocol-192.0.0/24"),
    case("192.0.2.1", "documentation-test-net-1"),
    case("192.88.99.1", "6to4-relay-anycast"),
]

INTERNAL_IPV6 = [
    case("[::1]", "loopback"),
    case("[0:0:0:0:0:0:0:1]", "loopback-long-form"),
    case("[::]", "unspecified-reaches-the-host"),
    case("[fe80::1]", "link-local"),
    case("[fc00::1]", "unique-local-fc00/7"),
    case("[fd00::1]", "unique-local-fd00/8"),
    case("[fd00:ec2::254]", "aws-metadata-over-ipv6"),
    case("[ff02::1]", "multicast-all-nodes"),
    case("[fec0::1]", "site-local-deprecated"),
    case("[2001:db8::1]", "documentation"),
    case("[100::1]", "discard-only"),
    case("[fe80::1%25lo]", "zone-id-percent-encoded", "bad"),
    case("[fe80::1%lo]", "zone-id-raw", "bad"),
    case("[::1%251]", "zone-id-on-loopback", "bad"),
    case("[::ffff:0177.0.0.1]", "octal-inside-ipv6-is-not-an-address", "bad"),
    case("[::1", "unclosed-bracket", "bad"),
    case("::1", "ipv6-without-brackets", "bad"),
]

EMBEDDED_IPV4 = [
    case("[::ffff:127.0.0.1]", "ipv4-mapped-dotted-loopback"),
    case("[::ffff:7f00:1]", "ipv4-mapped-hex-loopback"),
    case("[::FFFF:7F00:1]", "ipv4-mapped-uppercase-hex"),
    case("[0:0:0:0:0:ffff:127.0.0.1]", "ipv4-mapped-long-form"),
    case("[::ffff:169.254.169.254]", "ipv4-mapped-metadata"),
    case("[::ffff:10.0.0.1]", "ipv4-mapped-private"),
    case("[::127.0.0.1]", "ipv4-compatible-deprecated"),
    case("[::ffff:0:127.0.0.1]", "ipv4-translated-siit"),
    case("[64:ff9b::7f00:1]", "nat64-loopback"),
    case("[64:ff9b::169.254.169.254]", "nat64-metadata"),
    case("[64:ff9b:1::a00:1]", "local-use-nat64-private"),
    case("[2002:7f00:1::]", "6to4-loopback"),
    case("[2002:a9fe:a9fe::1]", "6to4-metadata"),
    case("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "teredo-client-127.0.0.1-obfuscated"),
]

DNS_NAMES = [
    case("loopback.test", "answers-127.0.0.1"),
    case("private.test", "answers-10.1.2.3"),
    case("private172.test", "answers-172.16.5.4"),
    case("private192.test", "answers-192.168.0.10"),
    case("metadata.test", "answers-169.254.169.254"),
    case("metadata.google.internal", "gcp-metadata-name-answers-169.254.169.254"),
    case("Metadata.Google.Internal.", "mixed-case-trailing-dot-metadata-name"),
    case("ecs-metadata.test", "answers-ecs-metadata-169.254.170.2"),
    case("alibaba-metadata.test", "answers-100.100.100.200"),
    case("cgnat.test", "answers-100.64.1.1"),
    case("zero.test", "answers-0.0.0.0"),
    case("multicast.test", "answers-224.0.0.251"),
    case("broadcast.test", "answers-255.255.255.255"),
    case("benchmark.test", "answers-198.18.0.1"),
    case("localhost", "dns-answers-127.0.0.1"),
    case("LocalHost", "mixed-case-localhost"),
    case("LOCALHOST.", "uppercase-trailing-dot-localhost"),
    case("localhost.localdomain", "localhost-variant"),
    case("PRIVATE.TEST.", "uppercase-trailing-dot-private-name"),
    case("mixed-public-first.test", "public-A-then-private-A"),
    case("mixed-private-first.test", "private-A-then-public-A"),
    case("mixed-many.test", "eight-public-A-then-metadata-A"),
    case("internal-a-public-aaaa.test", "internal-A-public-AAAA-ipv4-egress"),
]

DNS_NAMES_DUAL_EGRESS = [
    case("ip6-localhost", "AAAA-only-::1"),
    case("ip6-loopback", "AAAA-only-::1"),
    case("localhost.localdomain", "A-127.0.0.1-and-AAAA-::1"),
    case("public-a-loopback-aaaa.test", "public-A-AAAA-::1"),
    case("public-a-metadata-aaaa.test", "public-A-AAAA-fd00:ec2::254"),
    case("public-a-mapped-aaaa.test", "public-A-AAAA-ipv4-mapped-metadata"),
    case("public-a-nat64-aaaa.test", "public-A-AAAA-nat64-private"),
    case("public-a-6to4-aaaa.test", "public-A-AAAA-6to4-metadata"),
    case("public-a-ula-aaaa.test", "public-A-AAAA-unique-local"),
    case("public-a-linklocal-aaaa.test", "public-A-AAAA-link-local"),
    case("public-aaaa-private-a.test", "private-A-public-AAAA"),
    case("[::1]", "ipv6-literal-with-ipv6-egress"),
    case("[::ffff:127.0.0.1]", "ipv4-mapped-with-ipv6-egress"),
]

ETC_HOSTS_NAMES = [
    case("localhost", "etc-hosts-127.0.0.1"),
    case("LOCALHOST.", "uppercase-trailing-dot-etc-hosts"),
    case("LocalHost", "mixed-case-etc-hosts"),
    case("localhost.", "trailing-dot-etc-hosts"),
]


def test_the_connect_spy_sees_an_allowed_connection(
    start_gateway: Callable[..., RunningGateway],
    attempts: list[Any],
    rebind_vendor: VendorServer,
) -> None:
    """The refusal tests below assert that `attempts` stays empty; this one shows that
    a connect the gateway does make lands there, so an empty list means something."""
    gw = start_gateway(allow_cidrs=("127.0.0.1/32",), extra_ports=(rebind_vendor.port,))
    before = len(attempts)
    status, _, _ = http_exchange(gw.http, get(f"http://127.0.0.1:{rebind_vendor.port}/"))
    assert status == 200
    assert attempts[before:] == [(ALLOWED_EGRESS, "127.0.0.1", rebind_vendor.port)]


@pytest.mark.parametrize(("host", "expect"), LEGACY_IPV4)
def test_legacy_ipv4_spelling_is_normalised_then_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), INTERNAL_IPV4)
def test_internal_ipv4_address_is_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), INTERNAL_IPV6)
def test_internal_ipv6_literal_is_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), EMBEDDED_IPV4)
def test_ipv6_form_embedding_an_internal_ipv4_is_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), DNS_NAMES)
def test_name_whose_dns_answer_points_inside_is_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), DNS_NAMES_DUAL_EGRESS)
def test_internal_aaaa_answer_is_refused_when_ipv6_egress_asks_for_it(
    guarded_dual: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded_dual, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), ETC_HOSTS_NAMES)
def test_localhost_from_etc_hosts_is_refused(
    guarded_system: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_http_refused(guarded_system, get(f"http://{host}:{trap.port}/"), expect, attempts, trap)


BROAD_IPV6_EXCEPTION = [
    case("[::ffff:169.254.169.254]", "ipv4-mapped-is-judged-as-its-ipv4"),
    case("[::ffff:127.0.0.1]", "ipv4-mapped-loopback"),
    case("[::127.0.0.1]", "ipv4-compatible"),
    case("[::ffff:0:169.254.169.254]", "ipv4-translated"),
    case("[64:ff9b::169.254.169.254]", "nat64"),
    case("[64:ff9b:1::a9fe:a9fe]", "local-use-nat64"),
    case("[2002:a9fe:a9fe::1]", "6to4"),
    case("[2001:0:4136:e378:8000:63bf:5601:5601]", "teredo-client-169.254.169.254"),
    case("public-a-mapped-aaaa.test", "dns-AAAA-ipv4-mapped-metadata"),
    case("public-a-nat64-aaaa.test", "dns-AAAA-nat64-private"),
]


@pytest.mark.parametrize(("host", "expect"), BROAD_IPV6_EXCEPTION)
def test_broad_ipv6_exception_does_not_open_forms_that_reach_an_ipv4_address(
    broad_v6_exception: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    """`allow_cidrs = ["::/0"]` is about IPv6 destinations; these reach IPv4 ones."""
    request = get(f"http://{host}:{trap.port}/")
    assert_http_refused(broad_v6_exception, request, expect, attempts, trap)


# --- URL and Host tricks ------------------------------------------------------------------

URL_TRICKS = [
    case("http://allowed.test@127.0.0.1:{p}/", "userinfo-hides-the-real-host", "bad"),
    case("http://allowed.test:80@127.0.0.1:{p}/", "userinfo-with-port-lookalike", "bad"),
    case("http://user:pass@169.254.169.254:{p}/", "userinfo-before-metadata", "bad"),
    case("http://allowed.test\\@127.0.0.1:{p}/", "backslash-userinfo-confusion", "bad"),
    case("http://127.0.0.1:{p}#@allowed.test/", "fragment-is-not-part-of-absolute-uri", "bad"),
    case("http://127.0.0.1:{p}?@allowed.test/", "query-hides-userinfo-host-is-127.0.0.1"),
    case("http://%31%32%37.0.0.1:{p}/", "percent-encoded-digits", "bad"),
    case("http://127%2e0%2e0%2e1:{p}/", "percent-encoded-dots", "bad"),
    case("http://%6c%6f%63%61%6c%68%6f%73%74:{p}/", "percent-encoded-localhost", "bad"),
    case("http://127.0.0.1%00.allowed.test:{p}/", "encoded-nul-truncation", "bad"),
    case("http://127.0.0.1;.allowed.test:{p}/", "semicolon-in-host", "bad"),
    case("http://\uff11\uff12\uff17.0.0.1:{p}/", "fullwidth-digits-non-ascii", "bad"),
    case(
        "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:{p}/",
        "idna-maps-to-localhost",
        "bad",
    ),
    case("HTTP://127.0.0.1:{p}/", "uppercase-scheme-still-127.0.0.1"),
    case("http://127.0.0.1:00{p}/", "port-longer-than-5-digits", "bad"),
    case("http://127.0.0.1:{p}/#@allowed.test/", "fragment-after-path-host-is-127.0.0.1"),
    case("http://127.0.0.1:{p}:{p}/", "double-port", "bad"),
    case("http:///127.0.0.1:{p}/", "empty-authority", "bad"),
    case("http:/127.0.0.1:{p}/", "one-slash-scheme", "bad"),
    case("gopher://127.0.0.1:{p}/_", "non-http-scheme", "bad"),
    case("file:///etc/passwd", "file-scheme", "bad"),
    case("https://127.0.0.1:{p}/", "https-target-needs-connect", "bad"),
]


@pytest.mark.parametrize(("url", "expect"), URL_TRICKS)
def test_url_trick_cannot_smuggle_an_internal_host(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, url: str, expect: str
) -> None:
    assert_http_refused(guarded, get(url.format(p=trap.port)), expect, attempts, trap)


HOST_TRICKS = [
    case(
        "GET http://allowed.test:{p}/ HTTP/1.1|Host: 127.0.0.1:{p}",
        "host-header-names-an-internal-address",
        "bad",
    ),
    case(
        "GET http://127.0.0.1:{p}/ HTTP/1.1|Host: allowed.test:{p}",
        "host-header-names-an-allowed-name",
        "bad",
    ),
    case(
        "GET http://allowed.test:{p}/ HTTP/1.1|Host: allowed.test:{p}|Host: 127.0.0.1:{p}",
        "second-host-header",
        "bad",
    ),
    case(
        "GET http://allowed.test:{p}/ HTTP/1.1|Host: 169.254.169.254",
        "host-header-names-metadata",
        "bad",
    ),
    case("GET / HTTP/1.1|Host: 127.0.0.1:{p}", "origin-form-never-routed-by-host", "bad"),
    case(
        "GET /latest/meta-data/ HTTP/1.1|Host: 169.254.169.254",
        "origin-form-to-metadata-by-host",
        "bad",
    ),
    case("OPTIONS * HTTP/1.1|Host: 127.0.0.1:{p}", "asterisk-form", "bad"),
    case("GET 127.0.0.1:{p} HTTP/1.1|Host: 127.0.0.1:{p}", "authority-form-on-get", "bad"),
    case(
        "GET http://2130706433:{p}/ HTTP/1.1|Host: 127.0.0.1:{p}",
        "host-agrees-after-normalising-still-127.0.0.1",
    ),
    case(
        "GET http://127.0.0.1:{p}/ HTTP/1.1|Host: 0x7f.1:{p}",
        "legacy-host-agrees-still-127.0.0.1",
    ),
]


@pytest.mark.parametrize(("lines", "expect"), HOST_TRICKS)
def test_host_header_cannot_send_a_request_inside(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, lines: str, expect: str
) -> None:
    head = "\r\n".join(lines.format(p=trap.port).split("|"))
    request = f"{head}\r\n{AUTH}Connection: close\r\n\r\n".encode()
    assert_http_refused(guarded, request, expect, attempts, trap)


def test_host_header_without_port_disagrees_with_a_target_on_another_port(
    excepted: RunningGateway, rebind_vendor: VendorServer, attempts: list[Any], trap: Trap
) -> None:
    seen = len(rebind_vendor.seen)
    request = get(f"http://127.0.0.1:{rebind_vendor.port}/", "Host: 127.0.0.1")
    with nothing_reached(attempts, trap):
        status, value, _ = http_exchange(excepted.http, request)
    assert (status, *proxy_status(value)) == EXPECT["bad"]
    assert len(rebind_vendor.seen) == seen


# --- CONNECT ------------------------------------------------------------------------------

CONNECT_TARGETS = [
    case("127.0.0.1:{p}", "loopback"),
    case("0x7f.1:{p}", "legacy-hex-loopback"),
    case("2130706433:{p}", "legacy-decimal-loopback"),
    case("[::1]:{p}", "ipv6-loopback"),
    case("[::ffff:127.0.0.1]:{p}", "ipv4-mapped-loopback"),
    case("[64:ff9b::a9fe:a9fe]:{p}", "nat64-metadata"),
    case("169.254.169.254:{p}", "metadata"),
    case("[fd00:ec2::254]:{p}", "aws-ipv6-metadata"),
    case("10.0.0.1:{p}", "private"),
    case("0.0.0.0:{p}", "unspecified"),
    case("localhost:{p}", "dns-answers-127.0.0.1"),
    case("LOCALHOST.:{p}", "uppercase-trailing-dot-localhost"),
    case("metadata.google.internal:{p}", "dns-answers-metadata"),
    case("mixed-public-first.test:{p}", "dns-public-then-private"),
    case("127.0.0.1:22", "port-outside-connect-ports", "port"),
    case("10.0.0.1:6379", "redis-port-outside-connect-ports", "port"),
    case("[::1]:5432", "postgres-port-outside-connect-ports", "port"),
    case("169.254.169.254:80", "port-80-outside-connect-ports", "port"),
    case("allowed.test:25", "smtp-port-on-an-allowed-name", "port"),
    case("allowed.test@127.0.0.1:{p}", "userinfo", "bad"),
    case("127.0.0.1", "no-port", "bad"),
    case("127.0.0.1:0", "port-zero", "bad"),
    case("[fe80::1%25lo]:{p}", "zone-id", "bad"),
    case("%31%32%37.0.0.1:{p}", "percent-encoded-host", "bad"),
    case("127.0.0.08:{p}", "ambiguous-octal", "bad"),
]


@pytest.mark.parametrize(("authority", "expect"), CONNECT_TARGETS)
def test_connect_to_an_internal_destination_or_denied_port_is_refused(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, authority: str, expect: str
) -> None:
    request = connect(authority.format(p=trap.port))
    assert_http_refused(guarded, request, expect, attempts, trap)


# --- SOCKS5, each address type ----------------------------------------------------------

SOCKS_IPV4 = [
    socks_case("127.0.0.1", "loopback"),
    socks_case("127.0.0.2", "loopback-beyond-.1"),
    socks_case("0.0.0.0", "unspecified"),
    socks_case("10.0.0.1", "private-10/8"),
    socks_case("172.16.0.1", "private-172.16/12"),
    socks_case("192.168.1.1", "private-192.168/16"),
    socks_case("100.64.0.1", "cgnat"),
    socks_case("169.254.169.254", "metadata"),
    socks_case("100.100.100.200", "alibaba-metadata"),
    socks_case("255.255.255.255", "broadcast"),
    socks_case("224.0.0.1", "multicast"),
]

SOCKS_IPV6 = [
    socks_case("::1", "loopback"),
    socks_case("::", "unspecified"),
    socks_case("::ffff:127.0.0.1", "ipv4-mapped-loopback"),
    socks_case("::ffff:169.254.169.254", "ipv4-mapped-metadata"),
    socks_case("64:ff9b::7f00:1", "nat64-loopback"),
    socks_case("2002:7f00:1::", "6to4-loopback"),
    socks_case("2001:0:4136:e378:8000:63bf:80ff:fffe", "teredo-loopback"),
    socks_case("fd00:ec2::254", "aws-ipv6-metadata"),
    socks_case("fe80::1", "link-local"),
    socks_case("fc00::1", "unique-local"),
    socks_case("ff02::1", "multicast"),
]

SOCKS_DOMAINS = [
    socks_case("localhost", "dns-answers-127.0.0.1"),
    socks_case("LOCALHOST.", "uppercase-trailing-dot"),
    socks_case("127.0.0.1", "ipv4-literal-as-a-name"),
    socks_case("2130706433", "legacy-decimal-as-a-name"),
    socks_case("0x7f.1", "legacy-hex-as-a-name"),
    socks_case("0177.0.0.1", "legacy-octal-as-a-name"),
    socks_case("0", "zero-as-a-name-is-0.0.0.0"),
    socks_case("169.254.169.254", "metadata-literal-as-a-name"),
    socks_case("metadata.google.internal", "dns-answers-metadata"),
    socks_case("private.test", "dns-answers-10.1.2.3"),
    socks_case("mixed-public-first.test", "dns-public-then-private"),
    socks_case("1.2.3.4.5", "five-numeric-parts", "bad"),
    socks_case("127.0.0.08", "ambiguous-octal", "bad"),
    socks_case("%31%32%37.0.0.1", "percent-encoded", "bad"),
    socks_case("fe80::1%lo", "ipv6-with-zone-as-a-name", "bad"),
    socks_case("allowed.test@127.0.0.1", "userinfo-in-a-name", "bad"),
    socks_case(
        "\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54", "fullwidth-localhost", "bad"
    ),
]


@pytest.mark.parametrize(("host", "expect"), SOCKS_IPV4)
def test_socks5_ipv4_address_inside_is_not_allowed(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_socks_refused(guarded, "ipv4", host, trap.port, expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), SOCKS_IPV6)
def test_socks5_ipv6_address_inside_is_not_allowed(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_socks_refused(guarded, "ipv6", host, trap.port, expect, attempts, trap)


@pytest.mark.parametrize(("host", "expect"), SOCKS_DOMAINS)
def test_socks5_domain_pointing_inside_is_not_allowed(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, host: str, expect: str
) -> None:
    assert_socks_refused(guarded, "domain", host, trap.port, expect, attempts, trap)


@pytest.mark.parametrize(
    ("atyp", "host"),
    [
        pytest.param("ipv4", "127.0.0.1", id="ipv4-127.0.0.1:22--socks-0x02-port-not-allowed"),
        pytest.param("ipv6", "::1", id="ipv6-[::1]:22--socks-0x02-port-not-allowed"),
        pytest.param(
            "domain", "allowed.test", id="domain-allowed.test:22--socks-0x02-port-not-allowed"
        ),
    ],
)
def test_socks5_to_a_port_outside_connect_ports_is_not_allowed(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, atyp: str, host: str
) -> None:
    assert_socks_refused(guarded, atyp, host, 22, "port", attempts, trap)


# --- loops: the gateway never connects to its own listeners ------------------------------

LISTENERS = ("http", "socks", "admin")
LOOP_HOSTS_EXCEPTED = [
    ("127.0.0.1", "loopback-allowed-by-exception"),
    ("loop.test", "dns-name-answering-127.0.0.1"),
    ("LOOP.TEST.", "uppercase-trailing-dot-name"),
    ("0.0.0.0", "unspecified-reaches-every-listener"),
    ("[::ffff:127.0.0.1]", "ipv4-mapped-loopback"),
    ("2130706433", "legacy-decimal-loopback"),
]


def _loop_params(hosts: list[tuple[str, str]]) -> list[Any]:
    return [
        pytest.param(listener, host, id=f"{host}:{listener}-port--{why}--403-loop")
        for listener in LISTENERS
        for host, why in hosts
    ]


@pytest.mark.parametrize(("listener", "host"), _loop_params(LOOP_HOSTS_EXCEPTED))
def test_http_request_to_the_gateways_own_listener_is_a_loop(
    excepted: RunningGateway, attempts: list[Any], trap: Trap, listener: str, host: str
) -> None:
    port = excepted.addresses[listener][1]
    assert_http_refused(excepted, get(f"http://{host}:{port}/"), "loop", attempts, trap)


@pytest.mark.parametrize(
    ("listener", "host"), _loop_params([("127.0.0.1", "default-guard-loop-wins-over-deny")])
)
def test_own_listener_is_a_loop_with_the_default_guard_too(
    guarded: RunningGateway, attempts: list[Any], trap: Trap, listener: str, host: str
) -> None:
    port = guarded.addresses[listener][1]
    assert_http_refused(guarded, get(f"http://{host}:{port}/"), "loop", attempts, trap)


@pytest.mark.parametrize("listener", LISTENERS)
def test_localhost_from_etc_hosts_to_own_listener_is_a_loop(
    guarded_system: RunningGateway, attempts: list[Any], trap: Trap, listener: str
) -> None:
    port = guarded_system.addresses[listener][1]
    request = get(f"http://localhost:{port}/")
    assert_http_refused(guarded_system, request, "loop", attempts, trap)


@pytest.mark.parametrize(
    ("listener", "host"),
    _loop_params([("127.0.0.1", "loopback-allowed-by-exception"), ("loop.test", "dns-name")]),
)
def test_connect_to_the_gateways_own_listener_is_a_loop(
    excepted: RunningGateway, attempts: list[Any], trap: Trap, listener: str, host: str
) -> None:
    port = excepted.addresses[listener][1]
    assert_http_refused(excepted, connect(f"{host}:{port}"), "loop", attempts, trap)


@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize(
    ("atyp", "host"),
    [
        pytest.param("ipv4", "127.0.0.1", id="ipv4-127.0.0.1--socks-0x02-loop"),
        pytest.param("domain", "loop.test", id="domain-answering-127.0.0.1--socks-0x02-loop"),
        pytest.param("ipv6", "::ffff:127.0.0.1", id="ipv6-ipv4-mapped--socks-0x02-loop"),
    ],
)
def test_socks5_to_the_gateways_own_listener_is_a_loop(
    excepted: RunningGateway,
    attempts: list[Any],
    trap: Trap,
    listener: str,
    atyp: str,
    host: str,
) -> None:
    port = excepted.addresses[listener][1]
    assert_socks_refused(excepted, atyp, host, port, "loop", attempts, trap)


def test_own_listener_on_0_0_0_0_via_another_loopback_address_is_a_loop(
    hairpin: RunningGateway, attempts: list[Any], trap: Trap
) -> None:
    port = hairpin.addresses["http"][1]
    assert_http_refused(hairpin, get(f"http://127.0.0.5:{port}/"), "loop", attempts, trap)


def test_own_listener_via_the_egress_bind_address_is_a_loop(
    hairpin: RunningGateway, attempts: list[Any], trap: Trap
) -> None:
    port = hairpin.addresses["socks"][1]
    assert_socks_refused(hairpin, "ipv4", ALLOWED_EGRESS, port, "loop", attempts, trap)


@pytest.mark.parametrize(
    ("listener", "entry"),
    [
        pytest.param("http", "http", id="listener-on-0.0.0.0-via-public-egress-ip--403-loop"),
        pytest.param(
            "socks", "socks", id="listener-on-egress-bind-via-its-public-ip--socks-0x02-loop"
        ),
    ],
)
def test_own_listener_via_the_public_address_of_an_egress_ip_is_a_loop(
    hairpin: RunningGateway, attempts: list[Any], trap: Trap, listener: str, entry: str
) -> None:
    """A cloud 1:1-NATs the public address onto the bind address, so a connection to it
    hairpins back into the gateway (design: "the gateway's own listeners always refused")."""
    port = hairpin.addresses[listener][1]
    if entry == "http":
        request = get(f"http://{HAIRPIN_PUBLIC}:{port}/")
        assert_http_refused(hairpin, request, "loop", attempts, trap)
    else:
        assert_socks_refused(hairpin, "ipv4", HAIRPIN_PUBLIC, port, "loop", attempts, trap)


# --- mixed answers and rebinding, against a real vendor and victims ---------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("vendor-and-victim.test", id="vendor-A-and-127.0.0.2-A--403-ip-prohibited"),
        pytest.param("vendor-and-private.test", id="vendor-A-and-10.1.2.3-A--403-ip-prohibited"),
    ],
)
def test_answer_mixing_an_allowed_and_a_denied_address_is_refused_whole(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    attempts: list[Any],
    trap: Trap,
    name: str,
) -> None:
    seen = len(rebind_vendor.seen)
    request = get(f"http://{name}:{rebind_vendor.port}/")
    with nothing_reached(attempts, trap, *victims):
        status, value, _ = http_exchange(excepted.http, request)
    assert (status, *proxy_status(value)) == EXPECT["ip"]
    assert len(rebind_vendor.seen) == seen


def test_ipv4_only_egress_never_asks_for_aaaa_so_an_internal_aaaa_is_never_used(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
) -> None:
    name = "vendor-with-loopback-aaaa.test"
    status, _, body = http_exchange(excepted.http, get(f"http://{name}:{rebind_vendor.port}/"))
    assert status == 200 and json.loads(body)["peer"] == ALLOWED_EGRESS
    assert scripted_dns.count(name, "A") == 1
    assert scripted_dns.count(name, "AAAA") == 0
    assert all(v.accepted() == [] for v in victims)


def _rebinding_name(scripted_dns: ScriptedDNS, name: str, ttl: int = 0) -> str:
    scripted_dns.script(name, ["127.0.0.1"], [VICTIM], ttl=ttl)
    return name


def test_rebinding_over_http_connects_only_to_the_address_it_vetted(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
    attempts: list[Any],
) -> None:
    name = _rebinding_name(scripted_dns, "rebind-http.test")
    url = f"http://{name}:{rebind_vendor.port}/"
    before = len(attempts)
    status, _, body = http_exchange(excepted.http, get(url))
    assert status == 200 and json.loads(body)["peer"] == ALLOWED_EGRESS
    assert scripted_dns.count(name) == 1  # resolved once; connected to that answer
    status, value, _ = http_exchange(excepted.http, get(url))
    assert (status, *proxy_status(value)) == EXPECT["ip"]
    assert {address for _, address, _ in attempts[before:]} <= {"127.0.0.1"}
    assert all(v.accepted() == [] for v in victims)


def test_rebinding_over_connect_connects_only_to_the_address_it_vetted(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
    attempts: list[Any],
) -> None:
    name = _rebinding_name(scripted_dns, "rebind-connect.test")
    authority = f"{name}:{rebind_vendor.port}"
    before = len(attempts)
    with socket.create_connection(excepted.http, timeout=5) as s:
        s.sendall(connect(authority))
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert tunnel_get(s)["peer"] == ALLOWED_EGRESS
    assert scripted_dns.count(name) == 1
    status, value, _ = http_exchange(excepted.http, connect(authority))
    assert (status, *proxy_status(value)) == EXPECT["ip"]
    assert {address for _, address, _ in attempts[before:]} <= {"127.0.0.1"}
    assert all(v.accepted() == [] for v in victims)


def test_rebinding_over_socks5_connects_only_to_the_address_it_vetted(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
    attempts: list[Any],
) -> None:
    name = _rebinding_name(scripted_dns, "rebind-socks.test")
    before = len(attempts)
    with socks_open(excepted.socks, "domain", name, rebind_vendor.port) as s:
        reply = s.recv(10)  # IPv4 bound address: VER REP RSV ATYP 4+2 bytes
        assert reply[1] == 0x00
        assert tunnel_get(s)["peer"] == ALLOWED_EGRESS
    assert scripted_dns.count(name) == 1
    assert socks_reply(excepted.socks, "domain", name, rebind_vendor.port) == SOCKS_NOT_ALLOWED
    assert {address for _, address, _ in attempts[before:]} <= {"127.0.0.1"}
    assert all(v.accepted() == [] for v in victims)


def test_cached_answer_is_the_vetted_one_and_expires_with_its_ttl(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
    attempts: list[Any],
) -> None:
    name = _rebinding_name(scripted_dns, "rebind-cached.test", ttl=1)
    url = f"http://{name}:{rebind_vendor.port}/"
    before = len(attempts)
    for _ in range(2):
        status, _, body = http_exchange(excepted.http, get(url))
        assert status == 200 and json.loads(body)["peer"] == ALLOWED_EGRESS
    assert scripted_dns.count(name) == 1  # the second request came from the cache
    time.sleep(1.2)
    status, value, _ = http_exchange(excepted.http, get(url))
    assert (status, *proxy_status(value)) == EXPECT["ip"]
    status, value, _ = http_exchange(excepted.http, get(url))  # a denied answer stays denied
    assert (status, *proxy_status(value)) == EXPECT["ip"]
    assert {address for _, address, _ in attempts[before:]} <= {"127.0.0.1"}
    assert all(v.accepted() == [] for v in victims)


def test_flapping_answers_under_concurrency_never_reach_the_victim(
    excepted: RunningGateway,
    rebind_vendor: VendorServer,
    victims: list[Listener],
    scripted_dns: ScriptedDNS,
    attempts: list[Any],
) -> None:
    """Answers alternate per query (TTL 0) while requests overlap and share lookups."""
    name = "rebind-flap.test"
    scripted_dns.script(name, ["127.0.0.1"], [VICTIM], ["127.0.0.1", VICTIM], cycle=True)
    url = f"http://{name}:{rebind_vendor.port}/"
    before = len(attempts)

    def one(_: int) -> int:
        status, value, body = http_exchange(excepted.http, get(url))
        if status == 200:
            assert json.loads(body)["peer"] == ALLOWED_EGRESS
        else:
            assert (status, *proxy_status(value)) == EXPECT["ip"]
        return status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(24)))
    assert set(statuses) <= {200, 403} and 200 in statuses and 403 in statuses
    assert {address for _, address, _ in attempts[before:]} <= {"127.0.0.1"}
    assert all(v.accepted() == [] for v in victims)
