"""Fixtures for the SDK's tests: the SDK pointed at a real gateway, a scripted HTTP
server, the gateway's TLS listener, a TLS vendor, a moto server."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fixedip.client import Gateway
from tests.helpers import ALLOWED_EGRESS, TOKENS, RunningGateway, VendorServer, token_hash


@pytest.fixture(autouse=True)
def _no_sdk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads FIXEDIP_*; a test sets exactly what it means to."""
    for name in (
        "FIXEDIP_URL",
        "FIXEDIP_CA",
        "FIXEDIP_EXPECTED_IPS",
        "FIXEDIP_ALLOW_INSECURE",
        "FIXEDIP_NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


def dead_url(user: str = "billing") -> str:
    """A gateway URL on a port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://{user}:{TOKENS[user]}@127.0.0.1:{port}"


def client_entry(name: str = "billing", **fields: Any) -> dict[str, Any]:
    """A [[clients]] table for gateway_config overrides."""
    entry: dict[str, Any] = {"name": name, "token_hash": token_hash(name), "allow": ["127.0.0.1:*"]}
    entry.update(fields)
    return entry


POLL_INTERVAL_S = 0.05  # socketserver's default 0.5 s would make every teardown wait


def serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True
    )
    thread.start()
    return thread


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    """The shared stub vendor (200 only to 127.0.0.10), with quick teardown."""
    server = VendorServer({ALLOWED_EGRESS})
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sdk(gateway: RunningGateway) -> Gateway:
    """The SDK for client `billing` (egress 127.0.0.10) of the test gateway."""
    return Gateway(gateway.proxy_url())


# --- a server that answers from a script ---------------------------------------------


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next (status, headers) of its script; the last
    entry repeats. Counts requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script: list[tuple[int, dict[str, str]]] = [(200, {})]
        self.requests = 0
        self.lock = threading.Lock()

    def answer(self, *script: tuple[int, dict[str, str]]) -> ScriptedServer:
        self.script = list(script)
        self.requests = 0
        return self

    def next(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            index = min(self.requests, len(self.script) - 1)
            self.requests += 1
            return self.script[index]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status, headers = self.server.next()
        body = f'{{"status": {status}}}'.encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


# --- TLS: a CA, the gateway's TLS listener, a TLS vendor --------------------------


@pytest.fixture(scope="session")
def ca() -> Any:
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _server_context(ca: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def tls_listener(ca: Any, directory: Path) -> dict[str, Any]:
    """gateway_config overrides for the gateway's own TLS listener, with a certificate
    for 127.0.0.1 from the test CA (the one FIXEDIP_CA / `ca_file` names)."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "gateway-cert.pem", directory / "gateway-key.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return {"listen": {"https": "127.0.0.1:0"}, "tls": {"cert": str(cert), "key": str(key)}}


def https_url(gateway: RunningGateway, user: str = "billing") -> str:
    """The gateway's https:// URL (its TLS listener) for `user`."""
    host, port = gateway.addresses["https"]
    return f"https://{user}:{TOKENS[user]}@{host}:{port}"


@pytest.fixture
def tls_gateway_url(make_gateway: Callable[..., RunningGateway], ca: Any, tmp_path: Path) -> str:
    """An https:// gateway URL for client `billing`: the gateway's TLS listener."""
    return https_url(make_gateway(**tls_listener(ca, tmp_path)))


@pytest.fixture
def tls_vendor(ca: Any) -> Iterator[VendorServer]:
    """The stub vendor behind TLS (a certificate for 127.0.0.1 from the test CA)."""
    server = VendorServer({ALLOWED_EGRESS})
    server.socket = _server_context(ca).wrap_socket(server.socket, server_side=True)
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def trust_test_ca(ca_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ssl.create_default_context() trust the test CA (OpenSSL reads SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return ca_file


# --- moto ------------------------------------------------------------------------------


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1:0, recording each request's peer address."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.peers: list[str] = []

    def start(self) -> MotoServer:
        self.server.start()
        # The WSGI app is looked up per request: wrap it to see who connected.
        wsgi = self.server._server
        assert wsgi is not None
        app: Callable[..., Any] = wsgi.app

        def recording(environ: dict[str, Any], start_response: Any) -> Any:
            self.peers.append(environ.get("REMOTE_ADDR", ""))
            return app(environ, start_response)

        wsgi.app = recording
        return self

    @property
    def port(self) -> int:
        return self.server.get_host_and_port()[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer().start()
    yield server
    server.server.stop()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
