"""The few HTTP/1.1 exchanges the SDK makes itself, on `socket` and `ssl` only.

`GET /whoami` to a gateway, a canary, an echo request: each on a fresh connection with
`Connection: close`, directly or through a gateway (absolute-form for http:// targets,
CONNECT for https://, TLS inside TLS when the gateway itself speaks TLS). `http.client`
is not used because importing it (and the email parser it pulls in) costs a function's
cold start more than this module does.
"""

from __future__ import annotations

import socket
import ssl
import time
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = "fixedip-client"


class Hop:
    """How to reach a gateway: address, TLS context (None for plain http://) and the
    `Proxy-Authorization` value."""

    __slots__ = ("authorization", "host", "port", "tls")

    def __init__(
        self, host: str, port: int, tls: ssl.SSLContext | None, authorization: str
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.authorization = authorization


def _auth(hop: Hop) -> list[tuple[str, str]]:
    """The Proxy-Authorization header for `hop`, or none when it has no credentials
    (an empty header is a malformed credential, not an absent one)."""
    return [("Proxy-Authorization", hop.authorization)] if hop.authorization else []


class Response:
    """A status line, lower-cased headers (repeats joined with ", ") and the body."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class GatewayUnreachable(OSError):
    """Connecting to the gateway failed: the one failure that moves on to the next one."""


class TunnelRefused(Exception):
    """The gateway answered CONNECT with something other than 2xx."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"CONNECT answered {response.status} {response.reason}")
        self.response = response


class _Target:
    __slots__ = ("authority", "host", "hostport", "port", "scheme", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        default = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.hostport = f"{shown}:{self.port}"
        self.authority = shown if self.port == default else self.hostport
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _Conn:
    """A socket with a deadline; `start_tls` upgrades it, also when it already is TLS
    (TLS to the vendor inside TLS to the gateway, through memory BIOs)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inner: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    def _sock_recv(self, n: int) -> bytes:
        self.sock.settimeout(self._remaining())
        return self.sock.recv(n)

    def _sock_send(self, data: bytes) -> None:
        self.sock.settimeout(self._remaining())
        self.sock.sendall(data)

    def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        if isinstance(self.sock, ssl.SSLSocket):
            self.inner = context.wrap_bio(
                self.incoming, self.outgoing, server_hostname=server_hostname
            )
            self._pump(self.inner.do_handshake)
        else:
            self.sock.settimeout(self._remaining())
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def _pump(self, op: object, *args: object) -> object:
        assert callable(op)
        while True:
            try:
                result = op(*args)
            except ssl.SSLWantReadError:
                self._flush()
                data = self._sock_recv(65536)
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
            self._sock_send(data)

    def sendall(self, data: bytes) -> None:
        if self.inner is None:
            self._sock_send(data)
        else:
            self._pump(self.inner.write, data)

    def recv(self, n: int) -> bytes:
        if self.inner is None:
            return self._sock_recv(n)
        try:
            data = self._pump(self.inner.read, n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        assert isinstance(data, bytes)
        return data

    def close(self) -> None:
        self.sock.close()


class _Reader:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.buf = b""

    def _fill(self) -> bool:
        data = self.conn.recv(65536)
        self.buf += data
        return bool(data)

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise ConnectionError("response head too long")
            if not self._fill():
                raise ConnectionError("connection closed before a complete response head")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD_BYTES or not self._fill():
                raise ConnectionError("malformed chunked body")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n: int) -> bytes:
        if n > MAX_BODY_BYTES:
            raise ConnectionError("response body too large")
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed inside the response body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def rest(self) -> bytes:
        while self._fill():
            if len(self.buf) > MAX_BODY_BYTES:
                raise ConnectionError("response body too large")
        data, self.buf = self.buf, b""
        return data


def _parse_head(head: bytes) -> Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, b"")


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";")[0].strip(), 16)
    except ValueError:
        raise ConnectionError("malformed chunked body") from None


def _read_response(reader: _Reader, method: str, read_body: bool) -> Response:
    response = _parse_head(reader.head())
    while 100 <= response.status < 200:
        response = _parse_head(reader.head())
    if not read_body or method in ("HEAD", "CONNECT") or response.status in (204, 304):
        return response
    if "chunked" in response.headers.get("transfer-encoding", "").lower():
        body = b""
        while size := _chunk_size(reader.line()):
            body += reader.exactly(size)
            reader.line()
            if len(body) > MAX_BODY_BYTES:
                raise ConnectionError("response body too large")
        response.body = body
    elif "content-length" in response.headers:
        length = response.headers["content-length"]
        if not length.isdigit():
            raise ConnectionError(f"malformed Content-Length {length[:20]!r}")
        response.body = reader.exactly(int(length))
    else:
        response.body = reader.rest()
    return response


def _head(method: str, target: str, authority: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if method != "CONNECT":  # the tunnel stays open; the request inside it closes
        lines.append("Connection: close")
    lines += ["", ""]
    return "\r\n".join(lines).encode("latin-1")


def _open(host: str, port: int, tls: ssl.SSLContext | None, deadline: float) -> _Conn:
    sock = socket.create_connection((host, port), timeout=max(0.001, deadline - time.monotonic()))
    conn = _Conn(sock, deadline)
    try:
        if tls is not None:
            conn.start_tls(tls, host)
    except BaseException:
        conn.close()
        raise
    return conn


def gateway_request(hop: Hop, path: str, timeout_s: float) -> Response:
    """An origin-form request to the gateway itself (`/whoami`, `/egress`)."""
    deadline = time.monotonic() + timeout_s
    try:
        conn = _open(hop.host, hop.port, hop.tls, deadline)
    except ssl.SSLCertVerificationError:
        raise
    except OSError as exc:
        raise GatewayUnreachable(str(exc) or type(exc).__name__) from exc
    try:
        shown = f"[{hop.host}]" if ":" in hop.host else hop.host
        conn.sendall(_head("GET", path, f"{shown}:{hop.port}", _auth(hop)))
        return _read_response(_Reader(conn), "GET", read_body=True)
    finally:
        conn.close()


def fetch(
    url: str,
    *,
    method: str = "GET",
    timeout_s: float,
    via: Hop | None = None,
    read_body: bool = True,
) -> Response:
    """One request to `url`, directly or through the gateway `via`.

    Raises GatewayUnreachable when `via` cannot be connected to, TunnelRefused when it
    answers CONNECT with an error, and OSError for anything else on the way.
    """
    target = _Target(url)
    deadline = time.monotonic() + timeout_s
    tls = ssl.create_default_context() if target.scheme == "https" else None
    extra: list[tuple[str, str]] = [("Accept", "*/*")]
    if via is None:
        conn = _open(target.host, target.port, tls, deadline)
        request_target = target.target
    else:
        try:
            conn = _open(via.host, via.port, via.tls, deadline)
        except ssl.SSLCertVerificationError:
            raise
        except OSError as exc:
            raise GatewayUnreachable(str(exc) or type(exc).__name__) from exc
        request_target = f"{target.scheme}://{target.authority}{target.target}"
        if tls is None:
            extra += _auth(via)
    try:
        if via is not None and tls is not None:
            conn.sendall(_head("CONNECT", target.hostport, target.hostport, _auth(via)))
            answer = _read_response(_Reader(conn), "CONNECT", read_body=False)
            if not 200 <= answer.status < 300:
                raise TunnelRefused(answer)
            request_target = target.target
        if tls is not None:
            conn.start_tls(tls, target.host)
        conn.sendall(_head(method, request_target, target.authority, extra))
        return _read_response(_Reader(conn), method, read_body)
    finally:
        conn.close()
