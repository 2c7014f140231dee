"""Canary probes: a real request from an egress IP to a stub vendor on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from fixedip.gateway.dns import Resolver
from fixedip.identity.canary import CanarySpec, probe
from fixedip.identity.health import CanaryResult
from fixedip.policy.guard import Guard

EGRESS_A = ipaddress.IPv4Address("127.0.0.10")
EGRESS_B = ipaddress.IPv4Address("127.0.0.11")
LOOPBACK_ONLY = Guard(allow_cidrs=[ipaddress.IPv4Network("127.0.0.1/32")])
IPV4 = frozenset({socket.AF_INET})


@dataclass
class Seen:
    peer: str
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class StubVendor:
    """Answers every request with `status` and records who asked and what."""

    port: int
    status: int = 200
    seen: list[Seen] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        stub = self.server.stub
        stub.seen.append(
            Seen(self.client_address[0], self.command, self.path, dict(self.headers.items()))
        )
        self.send_response(stub.status)
        self.send_header("Content-Length", "5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b"hello")

    do_OPTIONS = do_GET = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    stub: StubVendor

    def verify_request(self, request: object, client_address: object) -> bool:
        self.stub.connections.append(client_address[0])  # type: ignore[index]
        return True


def _run(server: _Server) -> Iterator[StubVendor]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _server(tls_context: ssl.SSLContext | None = None) -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    server.stub = StubVendor(port=server.server_address[1])
    return server


@pytest.fixture
def vendor() -> Iterator[StubVendor]:
    yield from _run(_server())


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_vendor(ca: trustme.CA) -> Iterator[StubVendor]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    yield from _run(_server(context))


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener whose backlog completes the handshake but that never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_probe(
    spec: CanarySpec,
    egress: ipaddress.IPv4Address = EGRESS_A,
    guard: Guard = LOOPBACK_ONLY,
    ca_file: str | None = None,
) -> CanaryResult:
    return asyncio.run(
        probe(
            spec,
            egress,
            resolver=Resolver(),
            guard_vet=guard.vet,
            families=IPV4,
            ca_file=ca_file,
        )
    )


# Probing --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 403, 404, 500])
def test_probe_returns_the_vendors_status(vendor: StubVendor, status: int) -> None:
    vendor.status = status
    assert run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/")) == status


@pytest.mark.parametrize("egress", [EGRESS_A, EGRESS_B])
def test_probe_connects_from_the_egress_ip(
    vendor: StubVendor, egress: ipaddress.IPv4Address
) -> None:
    run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/"), egress)
    assert [s.peer for s in vendor.seen] == [str(egress)]


def test_probe_sends_method_target_and_identifying_headers(vendor: StubVendor) -> None:
    run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/v1/ping?x=1#frag"))
    (seen,) = vendor.seen
    assert (seen.method, seen.path) == ("OPTIONS", "/v1/ping?x=1")
    assert seen.headers["Host"] == f"127.0.0.1:{vendor.port}"
    assert seen.headers["User-Agent"] == "fixedip-canary"
    assert seen.headers["Connection"] == "close"


def test_probe_with_head_method_reads_the_bodiless_answer(vendor: StubVendor) -> None:
    vendor.status = 403
    assert run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/", method="HEAD")) == 403


def test_probe_resolves_a_host_name(vendor: StubVendor) -> None:
    assert run_probe(CanarySpec(f"http://localhost:{vendor.port}/")) == 200
    assert vendor.seen[0].headers["Host"] == f"localhost:{vendor.port}"


def test_probe_to_a_silent_server_times_out_within_its_timeout(silent_port: int) -> None:
    started = time.monotonic()
    result = run_probe(CanarySpec(f"http://127.0.0.1:{silent_port}/", timeout_s=0.3))
    assert result == "timeout"
    assert time.monotonic() - started < 1.5


def test_probe_to_a_refused_port_is_an_error(closed_port: int) -> None:
    assert run_probe(CanarySpec(f"http://127.0.0.1:{closed_port}/")) == "error"


def test_probe_to_an_address_the_guard_refuses_is_an_error_and_never_connects(
    vendor: StubVendor,
) -> None:
    assert run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/"), guard=Guard()) == "error"
    time.sleep(0.05)
    assert vendor.connections == []


def test_probe_from_an_egress_ip_not_on_this_host_is_an_error(vendor: StubVendor) -> None:
    not_here = ipaddress.IPv4Address("192.0.2.1")
    assert run_probe(CanarySpec(f"http://127.0.0.1:{vendor.port}/"), not_here) == "error"
    assert vendor.connections == []


def test_probe_to_a_name_that_does_not_resolve_is_an_error() -> None:
    assert run_probe(CanarySpec("http://no-such-host.invalid/")) == "error"


def test_probe_over_https_verifies_against_the_ca_file(
    tls_vendor: StubVendor, ca_file: str
) -> None:
    tls_vendor.status = 403
    spec = CanarySpec(f"https://localhost:{tls_vendor.port}/")
    assert run_probe(spec, ca_file=ca_file) == 403
    assert [s.peer for s in tls_vendor.seen] == [str(EGRESS_A)]


def test_probe_over_https_with_an_untrusted_certificate_is_an_error(
    tls_vendor: StubVendor, tmp_path: Path
) -> None:
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    spec = CanarySpec(f"https://localhost:{tls_vendor.port}/")
    assert run_probe(spec, ca_file=str(other)) == "error"
    assert tls_vendor.seen == []


def test_probe_over_https_checks_the_host_name(ca: trustme.CA, ca_file: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.example").configure_cert(context)
    for stub in _run(_server(context)):
        assert run_probe(CanarySpec(f"https://127.0.0.1:{stub.port}/"), ca_file=ca_file) == "error"
        assert stub.seen == []


# The spec -------------------------------------------------------------------------


def test_spec_defaults_match_the_design() -> None:
    spec = CanarySpec("https://api.vendor.example/")
    assert (spec.method, spec.blocked, spec.interval_s, spec.timeout_s) == (
        "OPTIONS",
        frozenset({403}),
        300.0,
        3.0,
    )
    assert (spec.host, spec.port, spec.tls, spec.target) == ("api.vendor.example", 443, True, "/")


def test_spec_from_mapping_reads_a_config_table() -> None:
    spec = CanarySpec.from_mapping(
        {
            "url": "http://API.Vendor.example:8080/health",
            "method": "head",
            "blocked": [403, 451],
            "interval_s": 60,
            "timeout_s": 2,
        }
    )
    assert spec == CanarySpec(
        "http://API.Vendor.example:8080/health", "HEAD", frozenset({403, 451}), 60.0, 2.0
    )
    assert (spec.host, spec.port, spec.tls) == ("api.vendor.example", 8080, False)
    assert spec.rule.blocked == frozenset({403, 451}) and spec.rule.timeout_s == 2.0


def test_spec_accepts_an_ipv6_literal() -> None:
    spec = CanarySpec("https://[2001:db8::1]:8443/")
    assert (spec.host, spec.is_ip, spec.port) == ("2001:db8::1", True, 8443)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "needs a url"),
        ({"url": "ftp://vendor.example/"}, "http:// or https://"),
        ({"url": "vendor.example/"}, "http:// or https://"),
        ({"url": "https:///path"}, "no host"),
        ({"url": "https://vendor.example:99999/"}, "invalid port"),
        ({"url": "https://user:pw@vendor.example/"}, "credentials"),
        ({"url": "https://vendor.example/a b"}, "spaces"),
        ({"url": "https://vendor.example/\r\nX: y"}, "control"),
        ({"url": "https://bad_host!/"}, "not a valid host"),
        ({"url": 5}, "url must be a string"),
        ({"url": "https://v.example/", "method": "GET /x"}, "HTTP method"),
        ({"url": "https://v.example/", "method": ""}, "HTTP method"),
        ({"url": "https://v.example/", "blocked": []}, "at least one status"),
        ({"url": "https://v.example/", "blocked": 403}, "list of statuses"),
        ({"url": "https://v.example/", "blocked": [99]}, "100-599"),
        ({"url": "https://v.example/", "blocked": ["403"]}, "100-599"),
        ({"url": "https://v.example/", "blocked": [True]}, "100-599"),
        ({"url": "https://v.example/", "interval_s": 0}, "positive"),
        ({"url": "https://v.example/", "timeout_s": -1}, "positive"),
        ({"url": "https://v.example/", "timeout_s": float("inf")}, "positive"),
        ({"url": "https://v.example/", "timeout_s": "3"}, "number of seconds"),
        ({"url": "https://v.example/", "interval": 60}, "unknown canary key 'interval'"),
    ],
)
def test_spec_rejects_bad_values_with_a_clear_message(
    data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        CanarySpec.from_mapping(data)
