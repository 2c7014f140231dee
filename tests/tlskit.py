"""Certificates for TLS tests: a CA for the gateway (separate from the vendor's), the
gateway's pair written where `[tls]` points, renewals and broken pairs, and clients.

The gateway and the stub vendor each get their own trustme CA, as in real life: the
client trusts the gateway through FIXEDIP_CA / --proxy-cacert and the vendor through
its own bundle.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    read_response,
)


class GatewayPKI:
    """The gateway's CA and the files `[tls]` names (rewritten in place to renew)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA(organization_name="fixedip test gateway CA")
        self.ca_file = directory / "gateway-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert = directory / "fullchain.pem"
        self.key = directory / "privkey.pem"
        self.serial = self.issue()

    def issue(self, **kwargs: Any) -> int:
        """Write a new certificate and key for 127.0.0.1 / localhost; its serial number."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", **kwargs)
        self.write(leaf.private_key_pem.bytes(), b"".join(p.bytes() for p in leaf.cert_chain_pems))
        return _serial(leaf.cert_chain_pems[0].bytes())

    def write(self, key: bytes, chain: bytes) -> None:
        """Replace both files the way an ACME client does (new inode, renamed into place),
        with a modification time that surely differs from the previous one."""
        for path, data in ((self.key, key), (self.cert, chain)):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            st = path.stat() if path.exists() else None
            if st is not None:
                later = st.st_mtime_ns + 2_000_000_000
                os.utime(tmp, ns=(later, later))
            tmp.replace(path)

    def settings(self, client_ca: Path | None = None) -> dict[str, str]:
        out = {"cert": str(self.cert), "key": str(self.key)}
        if client_ca is not None:
            out["client_ca"] = str(client_ca)
        return out

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _serial(pem: bytes) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).serial_number


def served_serial(address: tuple[str, int], pki: GatewayPKI) -> int:
    """The serial number of the certificate the listener shows a new connection."""
    with (
        socket.create_connection(address, timeout=5) as raw,
        pki.client_context().wrap_socket(raw, server_hostname=address[0]) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def pki(tmp_path: Path) -> GatewayPKI:
    directory = tmp_path / "tls"
    directory.mkdir()
    return GatewayPKI(directory)


def tls_overrides(pki: GatewayPKI, **extra: Any) -> dict[str, Any]:
    """gateway_config overrides that add the TLS listener on 127.0.0.1:0."""
    listen = {"https": "127.0.0.1:0", **extra.pop("listen", {})}
    return {"listen": listen, "tls": pki.settings(), **extra}


def https_address(gw: RunningGateway) -> tuple[str, int]:
    return gw.addresses["https"]


def https_proxy_url(gw: RunningGateway, user: str = "billing") -> str:
    host, port = https_address(gw)
    return f"https://{user}:{TOKENS[user]}@{host}:{port}"


# --- a vendor behind TLS, with a CA of its own ------------------------------------------


class TLSVendor:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA(organization_name="fixedip test vendor CA")
        self.ca_file = directory / "vendor-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server = VendorServer({ALLOWED_EGRESS})
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@pytest.fixture
def https_vendor(tmp_path: Path) -> Iterator[TLSVendor]:
    vendor = TLSVendor(tmp_path)
    vendor.server.thread.start()
    yield vendor
    vendor.server.shutdown()
    vendor.server.server_close()


# --- raw clients --------------------------------------------------------------------------


def tls_connect(
    address: tuple[str, int], context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=address[0], session=session)
    except BaseException:
        raw.close()
        raise


def forward_get(sock: socket.socket, url: str, user: str = "billing") -> bytes:
    """One keep-alive absolute-form GET on `sock`; the whole response (Content-Length)."""
    authority = url.split("/")[2]
    sock.sendall(
        f"GET {url} HTTP/1.1\r\nHost: {authority}\r\n"
        f"Proxy-Authorization: {basic(user, TOKENS[user])}\r\n\r\n".encode()
    )
    return read_response(sock)


def expired(days: int = 1) -> dict[str, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "not_before": now - datetime.timedelta(days=30),
        "not_after": now - datetime.timedelta(days=days),
    }
