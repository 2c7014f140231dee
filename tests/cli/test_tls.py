"""`fixedip tls selfsigned`: a private CA and a certificate the TLS listener serves and
clients verify; renewals keep the CA; the CA vouches for this gateway only."""

from __future__ import annotations

import datetime
import json
import ssl
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fixedip.gateway.tls import TlsConfig, check_pair
from tests.helpers import ALLOWED_EGRESS, TOKENS, RunningGateway, VendorServer
from tests.serve import FIXEDIP


def selfsigned(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), "tls", "selfsigned", *args], capture_output=True, text=True, timeout=60
    )


def test_selfsigned_writes_what_the_gateway_and_the_function_need(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = selfsigned("--name", "gateway.internal.test", "--ip", "127.0.0.1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "FIXEDIP_CA=" in result.stdout
    assert "FIXEDIP_URL=https://CLIENT:TOKEN@gateway.internal.test:3129" in result.stdout
    assert "FIXEDIP_URL=https://CLIENT:TOKEN@127.0.0.1:3129" in result.stdout
    assert f'cert = "{out.resolve() / "fullchain.pem"}"' in result.stdout
    for secret in ("privkey.pem", "ca-key.pem"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600
    check_pair(TlsConfig(cert=str(out / "fullchain.pem"), key=str(out / "privkey.pem")))


def test_json_output_for_machines(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = selfsigned(
        "--name", "gw.test", "--out", str(out), "--port", "8443", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["fixedip_ca"] == str(out.resolve() / "ca.pem")
    assert data["proxy_urls"] == ["https://CLIENT:TOKEN@gw.test:8443"]
    assert data["renewed_from_existing_ca"] is False


def test_clients_verify_the_gateway_with_the_ca_it_wrote(
    tmp_path: Path, make_gateway: Callable[..., RunningGateway], vendor: VendorServer
) -> None:
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--ip", "127.0.0.1", "--out", str(out)).returncode == 0
    gw = make_gateway(
        listen={"https": "127.0.0.1:0"},
        tls={"cert": str(out / "fullchain.pem"), "key": str(out / "privkey.pem")},
    )
    host, port = gw.addresses["https"]
    proxy = f"https://billing:{TOKENS['billing']}@{host}:{port}"
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-x",
            proxy,
            "--proxy-cacert",
            str(out / "ca.pem"),
            vendor.url("/selfsigned"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert curl.returncode == 0, curl.stderr
    assert json.loads(curl.stdout)["peer"] == ALLOWED_EGRESS


def test_running_it_again_renews_from_the_same_ca(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--out", str(out)).returncode == 0
    ca_before = (out / "ca.pem").read_bytes()
    cert_before = (out / "fullchain.pem").read_bytes()
    again = selfsigned("--name", "gw.test", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("renewed from the CA already in")
    assert (out / "ca.pem").read_bytes() == ca_before
    assert (out / "fullchain.pem").read_bytes() != cert_before
    _verify(out / "ca.pem", out / "fullchain.pem", "gw.test")


def test_a_renewal_cannot_add_names_the_ca_was_not_made_for(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--out", str(out)).returncode == 0
    refused = selfsigned("--name", "gw.test", "--ip", "127.0.0.5", "--out", str(out))
    assert refused.returncode == 2
    assert "cannot vouch for 127.0.0.5" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_ca_cannot_vouch_for_any_other_name(tmp_path: Path) -> None:
    """Name constraints: a certificate for another site made with the CA's key (say, by
    someone who stole it from the gateway) is refused by clients that trust the CA."""
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--ip", "127.0.0.1", "--out", str(out)).returncode == 0
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    forged_file = tmp_path / "forged.pem"
    forged_file.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ssl.SSLCertVerificationError):
        _verify(out / "ca.pem", forged_file, "bank.example", key=key)


def _verify(ca: Path, cert: Path, name: str, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    """A real handshake: a server with `cert` against a client that trusts `ca` only."""
    import socket
    import threading

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if key is None:
        server.load_cert_chain(str(cert), str(cert.parent / "privkey.pem"))
    else:
        key_file = cert.with_suffix(".key")
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        server.load_cert_chain(str(cert), str(key_file))
    client = ssl.create_default_context(cafile=str(ca))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname=name),
        ):
            pass
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "gw.test", "--ip", "not-an-ip"], "--ip 'not-an-ip': expected an IPv4"),
        (["--name", "10.0.0.1"], "give a DNS name"),
        (["--name", "bad_name!"], "expected a DNS name"),
        (["--name", "gw.test", "--format", "yaml"], "--format: expected text or json"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = selfsigned(*args, "--out", str(tmp_path / "tls"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _config_with_tls(tmp_path: Path, cert: Path, key: Path) -> Path:
    path = tmp_path / "fixedip.toml"
    path.write_text(
        '[egress]\nips = ["127.0.0.10"]\n[listen]\nhttps = "127.0.0.1:3129"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    )
    return path


def test_config_check_loads_the_tls_pair(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--out", str(out)).returncode == 0
    good = _config_with_tls(tmp_path, out / "fullchain.pem", out / "privkey.pem")
    result = subprocess.run(
        [str(FIXEDIP), "config", "check", str(good)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "expires" not in result.stderr  # a year left: no warning


def test_config_check_refuses_a_key_that_does_not_match(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    other = tmp_path / "other"
    assert selfsigned("--name", "gw.test", "--out", str(out)).returncode == 0
    assert selfsigned("--name", "gw.test", "--out", str(other)).returncode == 0
    bad = _config_with_tls(tmp_path, out / "fullchain.pem", other / "privkey.pem")
    result = subprocess.run(
        [str(FIXEDIP), "config", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"tls.key: {other / 'privkey.pem'}: does not match the certificate" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_check_warns_about_a_certificate_expiring_soon(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert selfsigned("--name", "gw.test", "--out", str(out), "--days", "3").returncode == 0
    path = _config_with_tls(tmp_path, out / "fullchain.pem", out / "privkey.pem")
    result = subprocess.run(
        [str(FIXEDIP), "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "# warning: tls.cert" in result.stderr and "renew it" in result.stderr
