"""`fixedip tls selfsigned`: a private CA and a certificate for the gateway's TLS listener.

For gateways without a public DNS name (or without an ACME client): the CA certificate
ships with the function (`FIXEDIP_CA`), and only this gateway's names and addresses can
ever be vouched for by it (the CA carries X.509 name constraints). Run it again with
the same `--out` to renew the gateway's certificate from the same CA: clients keep
working, and the running gateway picks the new files up on its own.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

app = typer.Typer(help="Certificates for the gateway's TLS listener.", no_args_is_help=True)

CA_DAYS = 3650
DEFAULT_DAYS = 397
DEFAULT_PORT = 3129
CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"
CERT_FILE, KEY_FILE = "fullchain.pem", "privkey.pem"
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class _Refused(Exception):
    """A usage problem, said in one line."""


def _host_name(name: str) -> str:
    host = name.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise _Refused(
            f"--name {name}: give a DNS name (any, e.g. gateway) and the address as --ip"
        )
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise _Refused(f"--name {name!r}: expected a DNS name such as gateway.example.com")
    return host


def _addresses(values: list[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise _Refused(f"--ip {value!r}: expected an IPv4 or IPv6 address") from None
    return out


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())  # P-256: the cheapest handshakes


def _pem_key(key: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(
    name: str, ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address], now: datetime.datetime
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fixedip CA for {name}")])
    permitted: list[x509.GeneralName] = [x509.DNSName(name)]
    permitted += [x509.IPAddress(ipaddress.ip_network(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # This CA can vouch for this gateway's names and addresses only.
        .add_extension(x509.NameConstraints(permitted, None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    name: str,
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    days: int,
    now: datetime.datetime,
) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    names += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_ca(out: Path) -> tuple[x509.Certificate, EllipticCurvePrivateKey] | None:
    """The CA already in `out`, to renew from it; None when there is none yet."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

    ca_path, key_path = out / CA_FILE, out / CA_KEY_FILE
    if not ca_path.exists() and not key_path.exists():
        return None
    if not key_path.exists():
        raise _Refused(
            f"{ca_path} exists without {key_path}: renewing needs the CA's key; "
            "choose another --out for a new CA (clients then need the new ca.pem)"
        )
    try:
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise _Refused(f"cannot read the CA in {out}: {exc}") from None
    if not isinstance(key, EllipticCurvePrivateKey):
        raise _Refused(f"{key_path}: not the key `fixedip tls selfsigned` writes")
    return cert, key


def _check_permitted(
    ca: x509.Certificate,
    host: str,
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    out: Path,
) -> None:
    """A renewal may only name what the CA was made for (its name constraints)."""
    from cryptography import x509

    try:
        permitted = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    allowed = set(permitted.permitted_subtrees or [])
    wanted: list[tuple[str, x509.GeneralName]] = [(host, x509.DNSName(host))]
    wanted += [(str(ip), x509.IPAddress(ipaddress.ip_network(ip))) for ip in ips]
    missing = [text for text, general in wanted if general not in allowed]
    if missing:
        raise _Refused(
            f"the CA in {out} was made for other names or addresses and cannot vouch for "
            f"{', '.join(missing)}; use the same --name and --ip, or another --out for a new CA"
        )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write beside and rename into place: a watching gateway never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@app.command("selfsigned")
def selfsigned(
    name: Annotated[str, typer.Option("--name", help="The DNS name clients use for the gateway.")],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for the CA and the gateway's files.")
    ],
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", help="An address clients may use instead (repeat for several)."),
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, max=3650, help="Validity of the gateway's certificate.")
    ] = DEFAULT_DAYS,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="listen.https port, for the URL shown.")
    ] = DEFAULT_PORT,
    output: Annotated[str, typer.Option("--format", help="text, or json for machines.")] = "text",
) -> None:
    """Write a private CA and a certificate for the gateway's TLS listener.

    Writes ca.pem (ship it with the function: FIXEDIP_CA), ca-key.pem (keep it off the
    gateway if you can; needed to renew), fullchain.pem and privkey.pem (tls.cert and
    tls.key). Run again with the same --out to renew from the same CA.
    """
    from cryptography.hazmat.primitives import serialization

    if output not in ("text", "json"):
        typer.echo("error: --format: expected text or json", err=True)
        raise typer.Exit(2)
    try:
        host = _host_name(name)
        ips = _addresses(ip or [])
        out.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        existing = _load_ca(out)
        if existing is None:
            ca, ca_key = _make_ca(host, ips, now)
            _write(out / CA_KEY_FILE, _pem_key(ca_key), 0o600)
            _write(out / CA_FILE, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        else:
            ca, ca_key = existing
            _check_permitted(ca, host, ips, out)
        cert, key = _issue(ca, ca_key, host, ips, days, now)
        _write(out / KEY_FILE, _pem_key(key), 0o600)
        _write(out / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except _Refused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"error: {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    _report(out.resolve(), host, ips, port, cert.not_valid_after_utc, existing is not None, output)


def _report(
    out: Path,
    host: str,
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
    port: int,
    expires: datetime.datetime,
    renewed: bool,
    output: str,
) -> None:
    shown = [host] + [f"[{ip}]" if ip.version == 6 else str(ip) for ip in ips]
    urls = [f"https://CLIENT:TOKEN@{h}:{port}" for h in shown]
    if output == "json":
        typer.echo(
            json.dumps(
                {
                    "ca": str(out / CA_FILE),
                    "ca_key": str(out / CA_KEY_FILE),
                    "cert": str(out / CERT_FILE),
                    "key": str(out / KEY_FILE),
                    "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "renewed_from_existing_ca": renewed,
                    "fixedip_ca": str(out / CA_FILE),
                    "proxy_urls": urls,
                },
                indent=2,
            )
        )
        return
    what = "renewed from the CA already in" if renewed else "new CA and certificate in"
    typer.echo(f"{what} {out} (the certificate expires {expires:%Y-%m-%d})")
    typer.echo("")
    typer.echo("the gateway's configuration:")
    typer.echo("")
    typer.echo("[listen]")
    typer.echo(f'https = "0.0.0.0:{port}"')
    typer.echo("[tls]")
    typer.echo(f'cert = "{out / CERT_FILE}"')
    typer.echo(f'key = "{out / KEY_FILE}"')
    typer.echo("")
    typer.echo(f"the function ships {out / CA_FILE} and sets:")
    typer.echo(f"  FIXEDIP_CA=<path of {CA_FILE} in the function's bundle>")
    for url in urls:
        typer.echo(f"  FIXEDIP_URL={url}")
    typer.echo("")
    typer.echo(f"keep {out / CA_KEY_FILE} secret (off the gateway if you can): it renews")
