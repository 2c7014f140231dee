"""Certificates change under a running gateway: renewals are picked up for new
handshakes without dropping open connections, and a bad new pair never replaces a good one.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from fixedip.config import ConfigError
from fixedip.gateway import tls
from fixedip.gateway.server import Gateway, StartupError
from tests.helpers import RunningGateway, VendorServer, gateway_config
from tests.tlskit import (
    GatewayPKI,
    expired,
    forward_get,
    https_address,
    served_serial,
    tls_connect,
    tls_overrides,
)

MakeGateway = Callable[..., RunningGateway]
WAIT_S = 10.0


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the files every 50 ms instead of every few seconds."""
    monkeypatch.setattr(tls, "FILE_POLL_S", 0.05)


def wait_for_serial(gw: RunningGateway, pki: GatewayPKI, serial: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while served_serial(https_address(gw), pki) != serial:
        assert time.monotonic() < deadline, "the renewed certificate was not picked up"
        time.sleep(0.05)


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while True:
        for record in caplog.records:
            if text in record.getMessage():
                return record.getMessage()
        assert time.monotonic() < deadline, f"no log line with {text!r}"
        time.sleep(0.05)


def test_a_renewal_on_disk_serves_new_handshakes_and_keeps_open_connections(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, fast_poll: None
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    old = pki.serial
    with tls_connect(https_address(gw), pki.client_context()) as kept:
        assert forward_get(kept, vendor.url("/before")).startswith(b"HTTP/1.1 200")
        new = pki.issue()
        wait_for_serial(gw, pki, new)
        # The keep-alive connection opened under the old certificate carries on.
        assert forward_get(kept, vendor.url("/after")).startswith(b"HTTP/1.1 200")
        from cryptography import x509

        der = kept.getpeercert(binary_form=True)
        assert der is not None
        assert x509.load_der_x509_certificate(der).serial_number == old
    assert [path for *_, path in vendor.seen] == ["/before", "/after"]


@pytest.mark.parametrize(
    ("breakage", "file", "reason"),
    [
        ("mismatch", "privkey.pem", "does not match the certificate"),
        ("expired", "fullchain.pem", "expired on"),
        ("garbage", "fullchain.pem", "holds no PEM certificate"),
        ("missing key", "privkey.pem", "no such file"),
    ],
)
def test_a_bad_new_pair_is_refused_with_the_file_named_and_the_old_one_kept(
    make_gateway: MakeGateway,
    pki: GatewayPKI,
    vendor: VendorServer,
    fast_poll: None,
    caplog: pytest.LogCaptureFixture,
    breakage: str,
    file: str,
    reason: str,
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    old = pki.serial
    with tls_connect(https_address(gw), pki.client_context()) as kept:
        assert forward_get(kept, vendor.url("/before")).startswith(b"HTTP/1.1 200")
        _break(pki, breakage)
        line = wait_for_log(caplog, "TLS reload refused")
        assert str(pki.dir / file) in line
        assert reason in line
        assert served_serial(https_address(gw), pki) == old
        assert forward_get(kept, vendor.url("/after")).startswith(b"HTTP/1.1 200")
    # A good pair written later is picked up.
    new = pki.issue()
    wait_for_serial(gw, pki, new)


def _break(pki: GatewayPKI, breakage: str) -> None:
    leaf = pki.ca.issue_cert("127.0.0.1")
    chain = b"".join(p.bytes() for p in leaf.cert_chain_pems)
    if breakage == "mismatch":
        other = pki.ca.issue_cert("127.0.0.1")
        pki.write(other.private_key_pem.bytes(), chain)
    elif breakage == "expired":
        stale = pki.ca.issue_cert("127.0.0.1", **expired())
        pki.write(stale.private_key_pem.bytes(), b"".join(p.bytes() for p in stale.cert_chain_pems))
    elif breakage == "garbage":
        pki.write(leaf.private_key_pem.bytes(), b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif breakage == "missing key":
        pki.key.unlink()


def test_a_half_written_renewal_is_not_loaded_until_it_settles(
    make_gateway: MakeGateway, pki: GatewayPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACME client writes the certificate, then the key: the watcher waits for both."""
    gw = make_gateway(**tls_overrides(pki))
    listener = gw.gateway.tls
    leaf = pki.ca.issue_cert("127.0.0.1", "localhost")
    pki.cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    gw.call(listener.poll)  # the change is seen, not yet loaded
    pki.key.write_bytes(leaf.private_key_pem.bytes())
    gw.call(listener.poll)  # changed again: still settling
    gw.call(listener.poll)  # unchanged for one interval: loaded
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    from tests.tlskit import _serial

    assert served_serial(https_address(gw), pki) == _serial(leaf.cert_chain_pems[0].bytes())


# --- at start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("breakage", "file", "reason"),
    [
        ("mismatch", "privkey.pem", "does not match the certificate"),
        ("expired", "fullchain.pem", "expired on"),
        ("garbage", "fullchain.pem", "holds no PEM certificate"),
        ("missing key", "privkey.pem", "no such file"),
    ],
)
def test_bad_files_at_start_up_stop_the_gateway_naming_the_file(
    pki: GatewayPKI, tmp_path: Path, breakage: str, file: str, reason: str
) -> None:
    _break(pki, breakage)
    config = gateway_config(tmp_path, **tls_overrides(pki))
    gw = RunningGateway(config)
    gw.thread.start()
    try:

        async def boot() -> str:
            gateway = Gateway(config)
            try:
                await gateway.start()
            except StartupError as exc:
                await gateway.close()
                return str(exc)
            await gateway.close()
            return ""

        message = gw.run(boot())
    finally:
        gw.loop.call_soon_threadsafe(gw.loop.stop)
        gw.thread.join(5)
        gw.loop.close()
    assert message.startswith(f"tls.{'key' if file == 'privkey.pem' else 'cert'}: ")
    assert str(pki.dir / file) in message
    assert reason in message


def test_an_encrypted_key_is_refused_with_what_to_do(pki: GatewayPKI) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(tls.TlsFileError, match="encrypted; give the gateway an unencrypted key"):
        tls.check_pair(tls.TlsConfig(**pki.settings()))


def test_a_client_ca_without_a_certificate_is_refused(pki: GatewayPKI, tmp_path: Path) -> None:
    bogus = tmp_path / "client-ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(tls.TlsFileError, match=r"tls\.client_ca: .*client-ca\.pem: holds no PEM"):
        tls.check_pair(tls.TlsConfig(**pki.settings(client_ca=bogus)))


def test_a_certificate_from_another_ca_still_loads(pki: GatewayPKI) -> None:
    """Whoever signed it, the gateway serves what it is given; clients decide trust."""
    leaf = trustme.CA().issue_cert("gateway.example")
    pki.write(leaf.private_key_pem.bytes(), b"".join(p.bytes() for p in leaf.cert_chain_pems))
    tls.check_pair(tls.TlsConfig(**pki.settings()))


def test_listen_https_without_tls_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen\.https: .*\[tls\] section.*tls\.cert"):
        gateway_config(tmp_path, listen={"https": "127.0.0.1:3129"})


# --- session resumption across renewals -----------------------------------------------------


def test_a_renewal_keeps_the_session_tickets_clients_hold(
    make_gateway: MakeGateway, pki: GatewayPKI, vendor: VendorServer, fast_poll: None
) -> None:
    gw = make_gateway(**tls_overrides(pki))
    context = pki.client_context()
    with tls_connect(https_address(gw), context) as first:
        assert forward_get(first, vendor.url("/ticket")).startswith(b"HTTP/1.1 200")
        session = first.session
    wait_for_serial(gw, pki, pki.issue())  # same kind of key: loaded into the same context
    with tls_connect(https_address(gw), context, session=session) as again:
        assert again.session_reused
        assert forward_get(again, vendor.url("/resumed")).startswith(b"HTTP/1.1 200")


def test_a_renewal_to_another_kind_of_key_leaves_nothing_of_the_old_certificate(
    make_gateway: MakeGateway, pki: GatewayPKI, fast_poll: None
) -> None:
    """OpenSSL keeps one certificate per kind of key in a context: an RSA renewal of an
    ECDSA certificate gets a fresh context, so the old ECDSA one is never served again."""
    gw = make_gateway(**tls_overrides(pki))
    ecdsa_only = pki.client_context()
    ecdsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    ecdsa_only.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    tls_connect(https_address(gw), ecdsa_only).close()  # the ECDSA certificate is served
    wait_for_serial(gw, pki, pki.issue(key_type=trustme.KeyType.RSA))
    with pytest.raises(ssl.SSLError):
        tls_connect(https_address(gw), ecdsa_only).close()
