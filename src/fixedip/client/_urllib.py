"""urllib through an https:// gateway, which `urllib.request.ProxyHandler` cannot do.

ProxyHandler speaks plain text to the proxy. `GatewayTLSHandler` opens TLS to the
gateway first (verified against the gateway's CA) and then sends `http://` URLs in
absolute form, and `https://` URLs through a CONNECT tunnel with the vendor's TLS inside
the gateway's (the inner TLS runs on memory BIOs, since `ssl` cannot wrap an SSLSocket).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import urllib.request

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

READ_SIZE = 65536


class GatewayTLSHandler(urllib.request.AbstractHTTPHandler):
    """Sends every http:// and https:// request through one https:// gateway."""

    handler_order = 100  # before urllib's own HTTP(S)Handler and any ProxyHandler

    def __init__(
        self,
        host: str,
        port: int,
        authorization: str,
        gateway_tls: ssl.SSLContext,
        vendor_tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.gateway = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.authorization = authorization
        self.gateway_tls = gateway_tls
        self.vendor_tls = vendor_tls or ssl.create_default_context()

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        req.set_proxy(self.gateway, "http")  # absolute-form to the gateway
        if self.authorization:
            req.add_unredirected_header("Proxy-Authorization", self.authorization)
        return self.do_open(self._connection, req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        req.set_proxy(self.gateway, "https")  # CONNECT to the vendor
        if self.authorization:
            req.add_unredirected_header("Proxy-Authorization", self.authorization)
        return self.do_open(self._tunnel_connection, req)

    def _connection(self, host: str, **kwargs: Any) -> http.client.HTTPSConnection:
        kwargs.pop("context", None)
        return http.client.HTTPSConnection(host, context=self.gateway_tls, **kwargs)

    def _tunnel_connection(self, host: str, **kwargs: Any) -> _TunnelConnection:
        kwargs.pop("context", None)
        return _TunnelConnection(host, self.gateway_tls, self.vendor_tls, **kwargs)


class _TunnelConnection(http.client.HTTPSConnection):
    """TLS to the gateway, CONNECT over it, then TLS to the vendor inside the tunnel."""

    def __init__(
        self, host: str, gateway_tls: ssl.SSLContext, vendor_tls: ssl.SSLContext, **kwargs: Any
    ) -> None:
        super().__init__(host, context=vendor_tls, **kwargs)
        self.gateway_tls = gateway_tls
        self.vendor_tls = vendor_tls

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.gateway_tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self._tunnel()  # type: ignore[attr-defined]  # CONNECT, with Proxy-Authorization
        vendor: str = self._tunnel_host  # type: ignore[attr-defined]
        self.sock = _InnerTLS(self.sock, self.vendor_tls, vendor)


class _InnerTLS:
    """The vendor's TLS on top of the gateway's: the few socket methods http.client uses."""

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str):
        self.outer = outer
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self._pump(self.tls.do_handshake)

    def _pump(self, op: Any, *args: Any) -> Any:
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self.outer.recv(READ_SIZE)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.outer.sendall(data)

    def sendall(self, data: bytes) -> None:
        self._pump(self.tls.write, data)

    send = sendall

    def recv(self, n: int) -> bytes:
        try:
            data: bytes = self._pump(self.tls.read, n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        return data

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def settimeout(self, timeout: float | None) -> None:
        self.outer.settimeout(timeout)

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.tls.getpeercert(binary_form)

    def close(self) -> None:
        self.outer.close()


class _Reader(io.RawIOBase):
    def __init__(self, conn: _InnerTLS) -> None:
        self.conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.conn.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)
