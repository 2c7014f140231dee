"""`fixedip serve` with the TLS listener, as operators run it: SIGHUP picks up a renewed
certificate, bad files stop it with exit 2, and plain listeners off loopback are flagged."""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import VendorServer
from tests.serve import FIXEDIP, ServeProcess, client, serve_config, write_config
from tests.tlskit import GatewayPKI, expired, forward_get, served_serial, tls_connect

ServeFactory = Callable[[dict[str, Any]], ServeProcess]


def tls_config(tmp_path: Path, pki: GatewayPKI, **listen: str) -> dict[str, Any]:
    data = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])])
    data["listen"].update({"https": "127.0.0.1:0", **listen})
    data["tls"] = pki.settings()
    return data


def test_sighup_serves_a_renewed_certificate(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path
) -> None:
    gateway = serve(tls_config(tmp_path, pki))
    address = gateway.addresses["https"]
    assert served_serial(address, pki) == pki.serial
    renewed = pki.issue()
    mark = gateway.mark
    gateway.signal(signal.SIGHUP)
    gateway.wait_for_line("TLS certificate loaded from", after=mark)
    assert served_serial(address, pki) == renewed


def test_sighup_with_a_broken_pair_keeps_the_certificate_in_service(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path
) -> None:
    gateway = serve(tls_config(tmp_path, pki))
    address = gateway.addresses["https"]
    pki.key.write_text("not a key\n")
    mark = gateway.mark
    gateway.signal(signal.SIGHUP)
    line = gateway.wait_for_line("TLS reload refused", after=mark)
    assert f"tls.key: {pki.key}: holds no usable PEM private key" in line
    assert served_serial(address, pki) == pki.serial


def test_an_expired_certificate_at_start_up_exits_2_naming_the_file(
    pki: GatewayPKI, tmp_path: Path
) -> None:
    stale = pki.ca.issue_cert("127.0.0.1", **expired())
    pki.write(stale.private_key_pem.bytes(), b"".join(p.bytes() for p in stale.cert_chain_pems))
    path = tmp_path / "fixedip.toml"
    write_config(path, tls_config(tmp_path, pki))
    result = subprocess.run(
        [str(FIXEDIP), "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"error: tls.cert: {pki.cert}: the certificate expired on" in result.stderr
    assert "Traceback" not in result.stderr


def test_plain_listeners_off_loopback_are_warned_about(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path
) -> None:
    gateway = serve(tls_config(tmp_path, pki, http="0.0.0.0:0", socks="0.0.0.0:0"))
    warnings = [line for line in gateway.stderr if "WARNING" in line]
    assert any(
        "listen.http = 0.0.0.0:0: the HTTP proxy listener is plain text" in w for w in warnings
    )
    assert any("listen.socks = 0.0.0.0:0: the SOCKS5 listener is plain text" in w for w in warnings)
    assert len(warnings) == 2  # the https listener is not one of them


def test_loopback_listeners_are_not_warned_about(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path
) -> None:
    gateway = serve(tls_config(tmp_path, pki))
    assert not [line for line in gateway.stderr if "plain text" in line]
    assert "https" in gateway.addresses


def test_two_workers_share_the_tls_port_and_both_reload(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path
) -> None:
    from tests.e2e.test_workers import free_port

    data = tls_config(tmp_path, pki)
    data["server"] = {"workers": 2}
    data["listen"] = {
        "http": f"127.0.0.1:{free_port()}",
        "https": f"127.0.0.1:{free_port()}",
        "socks": "",
        "admin": "",
    }
    gateway = serve(data)
    address = gateway.addresses["https"]
    # New connections are spread over the workers by the kernel; every one gets TLS.
    assert {served_serial(address, pki) for _ in range(8)} == {pki.serial}
    renewed = pki.issue()
    mark = gateway.mark
    gateway.signal(signal.SIGHUP)  # the supervisor passes it to each worker
    deadline = time.monotonic() + 10
    while sum("TLS certificate loaded" in line for line in gateway.stderr[mark:]) < 2:
        assert time.monotonic() < deadline, "both workers should log the reload"
        time.sleep(0.05)
    assert {served_serial(address, pki) for _ in range(8)} == {renewed}


def test_sigterm_closes_idle_tls_connections_and_exits_0(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path, vendor: VendorServer
) -> None:
    data = tls_config(tmp_path, pki)
    data["timeouts"]["shutdown_grace_s"] = 60
    gateway = serve(data)
    with tls_connect(gateway.addresses["https"], pki.client_context()) as sock:
        assert forward_get(sock, vendor.url("/before")).startswith(b"HTTP/1.1 200")
        gateway.signal(signal.SIGTERM)
        # Well before shutdown_grace_s (60 s here): the idle connection is not waited for.
        assert gateway.wait_exit(timeout=30) == 0
        with contextlib.suppress(ssl.SSLError, ConnectionError):  # or cut: nothing more
            assert sock.recv(1) == b""  # closed by the gateway (close_notify, then FIN)


def test_a_client_resumes_its_session_on_either_worker_also_after_a_renewal(
    serve: ServeFactory, pki: GatewayPKI, tmp_path: Path, vendor: VendorServer
) -> None:
    """Workers share their session-ticket keys (the supervisor makes the context before it
    forks them), so a reconnect resumes wherever the kernel sends it. Ten reconnects
    all landing on the worker that issued the ticket would be a 1-in-512 chance."""
    from tests.e2e.test_workers import free_port

    data = tls_config(tmp_path, pki)
    data["server"] = {"workers": 2}
    data["listen"] = {
        "http": f"127.0.0.1:{free_port()}",
        "https": f"127.0.0.1:{free_port()}",
        "socks": "",
        "admin": "",
    }
    gateway = serve(data)
    address = gateway.addresses["https"]
    context = pki.client_context()
    with tls_connect(address, context) as first:
        assert forward_get(first, vendor.url("/first")).startswith(b"HTTP/1.1 200")
        session = first.session

    def resumed() -> list[bool]:
        out = []
        for i in range(10):
            with tls_connect(address, context, session=session) as again:
                assert forward_get(again, vendor.url(f"/again{i}")).startswith(b"HTTP/1.1 200")
                out.append(again.session_reused)
        return out

    assert all(resumed())
    # A renewal loaded by both workers keeps the keys they share: still resumed everywhere.
    pki.issue()
    mark = gateway.mark
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while sum("TLS certificate loaded" in line for line in gateway.stderr[mark:]) < 2:
        assert time.monotonic() < deadline, "both workers should log the reload"
        time.sleep(0.05)
    assert all(resumed())
