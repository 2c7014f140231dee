"""Request parsing, end to end: ambiguous or malformed HTTP never gets through the gateway.

Every case is sent as raw bytes over a real socket to a real gateway in front of the stub
vendor. A refused request gets exactly `HTTP/1.1 400 Bad Request`, the gateway then
closes the connection, and the vendor sees nothing at all: no request and no connection,
not even for smuggling payloads that hide a second, well-formed request in the body.
Upstream responses with the same ambiguities come from a raw-socket "vendor" and are
answered with 502, never passed on, and their upstream connection is never reused.

One gateway and one vendor serve the whole module (a gateway per case would cost
seconds); each case opens its own client connection and starts from a clean vendor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fixedip.proto.http1 import MAX_CHUNK_LINE_BYTES
from tests.helpers import (
    ALLOWED_EGRESS,
    TOKENS,
    RunningGateway,
    VendorServer,
    basic,
    gateway_config,
)

AUTH = b"Proxy-Authorization: " + basic("billing", TOKENS["billing"]).encode()
WRONG_AUTH = b"Proxy-Authorization: " + basic("billing", "not-the-token").encode()
V = b"@V"  # the vendor's authority (127.0.0.1:port), filled in when a case is sent
SMUGGLED = b"GET http://@V/smuggled HTTP/1.1\r\nHost: @V\r\n" + AUTH + b"\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\n"
INJECTED = OK + b"Content-Length: 8\r\n\r\nINJECTED"  # never reaches a client
READ_TIMEOUT_S = 3.0
PIECE_PAUSE_S = 0.3


def post(*lines: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    """An authenticated absolute-form POST to the vendor with extra header lines."""
    head = [b"POST http://@V/first " + version, b"Host: @V", AUTH, *lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def get(
    *lines: bytes,
    target: bytes = b"http://@V/first",
    host: bytes = b"Host: @V",
    auth: bytes = AUTH,
) -> bytes:
    """An absolute-form GET; `host` or `auth` set to b"" leaves that line out."""
    head = [b"GET " + target + b" HTTP/1.1", host, auth, *lines]
    return b"\r\n".join(line for line in head if line) + b"\r\n\r\n"


def line(request_line: bytes, *lines: bytes) -> bytes:
    """A request with this exact request line, Host and credentials."""
    return b"\r\n".join([request_line, b"Host: @V", AUTH, *lines]) + b"\r\n\r\n"


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


def te(value: bytes, *, version: bytes = b"HTTP/1.1") -> bytes:
    """A chunked POST whose Transfer-Encoding line is `Transfer-Encoding:<value>`; the
    chunked body ends in a smuggled request that only a wrong framing would let out."""
    return post(b"Transfer-Encoding:" + value, body=b"0\r\n\r\n" + SMUGGLED, version=version)


def cl(value: bytes) -> bytes:
    """A POST with `Content-Length:<value>` whose 5-byte body is followed by a smuggled
    request."""
    return post(b"Content-Length:" + value, body=b"hello" + SMUGGLED)


# --- the refusal table ----------------------------------------------------------------

CL_AND_TE = [
    pytest.param(
        post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        id="cl-then-te",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Content-Length: 6", body=b"0\r\n\r\n" + SMUGGLED),
        id="te-then-cl",
    ),
    pytest.param(
        post(
            b"Content-Length: 4",
            b"Transfer-Encoding: chunked",
            body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
        ),
        id="te-cl-smuggle-in-chunk",
    ),
    pytest.param(
        post(b"Content-Length: 0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        id="cl-zero-and-te",
    ),
    pytest.param(
        post(b"Content-Length: 5", b"Transfer-Encoding: xchunked", body=b"hello" + SMUGGLED),
        id="cl-and-unknown-te",
    ),
]

OBFUSCATED_TE = [
    pytest.param(te(b" chunked "), id="trailing-space"),
    pytest.param(te(b" chunked\t"), id="trailing-tab"),
    pytest.param(te(b" xchunked"), id="xchunked"),
    pytest.param(te(b" chunkedx"), id="chunkedx"),
    pytest.param(te(b" chunked, identity"), id="chunked-identity"),
    pytest.param(te(b" identity, chunked"), id="identity-chunked"),
    pytest.param(te(b" identity"), id="identity"),
    pytest.param(te(b" gzip, chunked"), id="gzip-chunked"),
    pytest.param(te(b" chunked, chunked"), id="chunked-listed-twice"),
    pytest.param(te(b" chunked,"), id="trailing-comma"),
    pytest.param(te(b' "chunked"'), id="quoted"),
    pytest.param(te(b" chun ked"), id="space-inside"),
    pytest.param(te(b"\x0bchunked"), id="vtab-before-value"),
    pytest.param(te(b" \x0bchunked"), id="space-vtab-before-value"),
    pytest.param(te(b"\x0cchunked"), id="formfeed-before-value"),
    pytest.param(te(b" chunkeD\x0b"), id="mixed-case-vtab-after"),
    pytest.param(te(b" chunked\x00"), id="nul-after"),
    pytest.param(te(b" \xa0chunked"), id="nbsp-before-value"),
    pytest.param(te(b" chunk\xc3\xa9d"), id="non-ascii"),
    pytest.param(te(b""), id="empty"),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        id="duplicated-line",
    ),
    pytest.param(
        post(
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: identity",
            body=b"0\r\n\r\n" + SMUGGLED,
        ),
        id="duplicated-line-differing",
    ),
    pytest.param(
        post(b"Transfer-Encoding:", b" chunked", body=b"0\r\n\r\n" + SMUGGLED), id="folded-value"
    ),
    pytest.param(
        post(b"X-Pad: 1", b"\tTransfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        id="tab-started-line",
    ),
    pytest.param(
        post(b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"hello" + SMUGGLED),
        id="underscore-name",
    ),
]

CONTENT_LENGTH = [
    pytest.param(
        post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello" + SMUGGLED),
        id="duplicate-same",
    ),
    pytest.param(
        post(b"Content-Length: 5", b"Content-Length: 0", body=b"hello" + SMUGGLED),
        id="duplicate-differing",
    ),
    pytest.param(cl(b" abc"), id="word"),
    pytest.param(cl(b" 5a"), id="digits-then-letter"),
    pytest.param(cl(b" 0x5"), id="hex"),
    pytest.param(cl(b" 5.0"), id="decimal-point"),
    pytest.param(cl(b" +5"), id="plus-sign"),
    pytest.param(cl(b" -1"), id="minus-sign"),
    pytest.param(cl(b" 1 0"), id="space-inside"),
    pytest.param(cl(b" 5\t5"), id="tab-inside"),
    pytest.param(cl(b" 5, 5"), id="list"),
    pytest.param(cl(b" 5,5"), id="list-no-space"),
    pytest.param(cl(b" 5,"), id="trailing-comma"),
    pytest.param(cl(b""), id="empty"),
    pytest.param(cl(b" 99999999999999999999"), id="overflow"),
    pytest.param(cl(b"\x0b5"), id="vtab-before-value"),
    pytest.param(cl(b" \xd9\xa5"), id="non-ascii-digit"),
    pytest.param(
        post(b"Content_Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        id="underscore-name",
    ),
]

CHUNK_SIZES = [
    pytest.param(chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), id="hex-overflow"),
    pytest.param(chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"), id="hex-overflow-2-64"),
    pytest.param(chunked(b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), id="0x-prefix"),
    pytest.param(chunked(b"-5\r\nhello\r\n0\r\n\r\n"), id="negative"),
    pytest.param(chunked(b"+5\r\nhello\r\n0\r\n\r\n"), id="plus-sign"),
    pytest.param(chunked(b"zz\r\nhello\r\n0\r\n\r\n"), id="not-hex"),
    pytest.param(chunked(b"\r\nhello\r\n0\r\n\r\n"), id="empty"),
    pytest.param(chunked(b" 5\r\nhello\r\n0\r\n\r\n"), id="leading-space"),
    pytest.param(chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), id="space-before-extension"),
    pytest.param(chunked(b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n'), id="lf-in-quoted-extension"),
    pytest.param(
        chunked(b"5;" + b"e" * MAX_CHUNK_LINE_BYTES + b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
        id="extension-over-bound",
    ),
    pytest.param(
        chunked(b"0;" + b"e" * MAX_CHUNK_LINE_BYTES + b"\r\n\r\n" + SMUGGLED),
        id="last-chunk-extension-over-bound",
    ),
    pytest.param(chunked(b"5\r\nhelloX0\r\n\r\n" + SMUGGLED), id="missing-crlf-after-data"),
    pytest.param(chunked(b"5\r\nhello\n0\r\n\r\n" + SMUGGLED), id="bare-lf-after-data"),
    pytest.param(chunked(b"5\nhello\r\n0\r\n\r\n" + SMUGGLED), id="bare-lf-after-size"),
    pytest.param(chunked(b"5\rhello\r\n0\r\n\r\n" + SMUGGLED), id="bare-cr-after-size"),
    pytest.param(chunked(b"a\r\nhello\r\n0\r\n\r\n" + SMUGGLED), id="size-larger-than-data"),
    pytest.param(chunked(b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED), id="size-smaller-than-data"),
    pytest.param(chunked(b"0\r\nX-T: 1\n\r\n" + SMUGGLED), id="bare-lf-in-trailer"),
    pytest.param(chunked(b"0\r\nContent-Length: 5\r\n\r\n" + SMUGGLED), id="cl-in-trailer"),
]

OBS_FOLD = [
    pytest.param(get(b"X-A: a", b"  folded"), id="space-folded"),
    pytest.param(get(b"X-A: a", b"\tfolded"), id="tab-folded"),
    pytest.param(get(b"X-A:", b" folded-empty-first"), id="folded-after-empty-value"),
    pytest.param(b"GET http://@V/ HTTP/1.1\r\n Host: @V\r\n" + AUTH + b"\r\n\r\n", id="first-line"),
    pytest.param(post(b"Content-Length: 5", b" 0", body=b"hello" + SMUGGLED), id="folded-cl"),
]

LINE_ENDINGS = [
    pytest.param(get().replace(b"\r\n", b"\n"), id="bare-lf-everywhere"),
    pytest.param(get().replace(b"\r\n", b"\r"), id="bare-cr-everywhere"),
    pytest.param(get().replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n"), id="bare-lf-after-request-line"),
    pytest.param(get().replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r"), id="bare-cr-after-request-line"),
    pytest.param(get(b"X-A: 1\nX-B: 2"), id="bare-lf-between-headers"),
    pytest.param(get(b"X-A: 1\rX-B: 2"), id="bare-cr-between-headers"),
    pytest.param(get()[:-4] + b"\r\n\n", id="bare-lf-ending-head"),
    pytest.param(get()[:-4] + b"\r\n\r" + SMUGGLED, id="bare-cr-ending-head"),
    pytest.param(get()[:-4] + b"\n\r\n", id="lf-crlf-ending-head"),
    pytest.param(get(b"X-A: 1\r\r\n"), id="cr-cr-lf"),
    pytest.param(
        post(b"Content-Length: 5\nTransfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
        id="bare-lf-hides-te",
    ),
]

CONTROL_BYTES = [
    pytest.param(get(b"X\x00A: 1"), id="nul-in-name"),
    pytest.param(get(b"X\x01A: 1"), id="soh-in-name"),
    pytest.param(get(b"X\x7fA: 1"), id="del-in-name"),
    pytest.param(get(b"X\tA: 1"), id="tab-in-name"),
    pytest.param(get(b"X A: 1"), id="space-in-name"),
    pytest.param(get(b"X\xffA: 1"), id="high-byte-in-name"),
    pytest.param(get(b"X(A): 1"), id="separator-in-name"),
    pytest.param(get(b": 1"), id="empty-name"),
    pytest.param(get(b"X-A: a\x00b"), id="nul-in-value"),
    pytest.param(get(b"X-A: a\x01b"), id="soh-in-value"),
    pytest.param(get(b"X-A: a\x08b"), id="backspace-in-value"),
    pytest.param(get(b"X-A: a\x0bb"), id="vtab-in-value"),
    pytest.param(get(b"X-A: a\x0cb"), id="formfeed-in-value"),
    pytest.param(get(b"X-A: a\x1bb"), id="esc-in-value"),
    pytest.param(get(b"X-A: a\x7fb"), id="del-in-value"),
    pytest.param(get(b"X-A: a\rb"), id="cr-in-value"),
    pytest.param(get(b"X-A: a\x00"), id="nul-ending-value"),
    pytest.param(get(host=b"Host: 127.0.0.1\x00.evil"), id="nul-in-host"),
]

WHITESPACE_BEFORE_COLON = [
    pytest.param(get(b"X-A : 1"), id="space"),
    pytest.param(get(b"X-A\t: 1"), id="tab"),
    pytest.param(get(host=b"Host : @V"), id="host"),
    pytest.param(te(b" chunked").replace(b"Transfer-Encoding:", b"Transfer-Encoding :"), id="te"),
    pytest.param(cl(b" 5").replace(b"Content-Length:", b"Content-Length :"), id="cl"),
    pytest.param(get(b"Proxy-Authorization : x", auth=b""), id="proxy-authorization"),
]

HOST = [
    pytest.param(get(b"Host: @V"), id="duplicate-same"),
    pytest.param(get(b"Host: 127.0.0.2"), id="duplicate-differing"),
    pytest.param(get(b"hOST: @V"), id="duplicate-other-case"),
    pytest.param(get(host=b"Host: other.example"), id="other-name"),
    pytest.param(get(host=b"Host: 127.0.0.2"), id="other-address"),
    pytest.param(get(host=b"Host: 127.0.0.1:1"), id="other-port"),
    pytest.param(get(host=b"Host: @V", target=b"http://127.0.0.1:1/"), id="uri-other-port"),
    pytest.param(get(host=b"Host: "), id="empty"),
    pytest.param(get(host=b"Host: user@@V"), id="userinfo"),
    pytest.param(get(host=b"Host: @V/path"), id="path"),
    pytest.param(get(host=b"Host: 127.0.0.1 :80"), id="space-inside"),
    pytest.param(get(host=b"Host: @V, 127.0.0.2"), id="list"),
]

TARGET_FORMS = [
    pytest.param(get(target=b"/foo"), id="origin-form"),
    pytest.param(get(target=b"/"), id="origin-form-root"),
    pytest.param(get(target=b"/whoamix"), id="origin-form-near-whoami"),
    pytest.param(get(target=b"/egress/../foo"), id="origin-form-dot-dot"),
    pytest.param(get(target=b"//@V/first"), id="origin-form-network-path"),
    pytest.param(line(b"OPTIONS * HTTP/1.1"), id="asterisk-form"),
    pytest.param(line(b"GET * HTTP/1.1"), id="asterisk-form-get"),
    pytest.param(get(target=b"@V"), id="authority-form-without-connect"),
    pytest.param(get(target=b"https://@V/first"), id="https-without-connect"),
    pytest.param(get(target=b"ftp://@V/first"), id="other-scheme"),
    pytest.param(get(target=b"http:@V/first"), id="scheme-without-slashes"),
    pytest.param(get(target=b"http://user:pw@@V/first"), id="userinfo"),
]

VERSIONS = [
    pytest.param(b"GET /\r\n\r\n", id="http-0.9-origin"),
    pytest.param(b"GET http://@V/\r\n\r\n", id="http-0.9-absolute"),
    pytest.param(line(b"GET http://@V/ HTTP/0.9"), id="http-0.9-version"),
    pytest.param(line(b"GET http://@V/ HTTP/1.2"), id="http-1.2"),
    pytest.param(line(b"GET http://@V/ HTTP/1.10"), id="http-1.10"),
    pytest.param(line(b"GET http://@V/ HTTP/2.0"), id="http-2.0"),
    pytest.param(line(b"GET http://@V/ HTTP/2"), id="http-2"),
    pytest.param(line(b"GET http://@V/ HTTP/3"), id="http-3"),
    pytest.param(line(b"GET http://@V/ HTTP/3.0"), id="http-3.0"),
    pytest.param(line(b"GET http://@V/ HTTP/01.1"), id="leading-zero"),
    pytest.param(line(b"GET http://@V/ http/1.1"), id="lowercase-protocol"),
    pytest.param(line(b"GET http://@V/ HTTP/1.1 "), id="trailing-space"),
    pytest.param(line(b"GET http://@V/ HTTP /1.1"), id="space-in-version"),
    pytest.param(line(b"GET http://@V/ HTTPS/1.1"), id="https-protocol"),
    pytest.param(
        line(b"GET http://@V/ RTSP/1.0"),
        id="rtsp",
        marks=pytest.mark.xfail(
            strict=True,
            reason="needs a parser that reports the protocol name: llhttp accepts RTSP/1.0 "
            "with GET/POST/OPTIONS and httptools reports only the version numbers",
        ),
    ),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="http-2-preface"),
]

METHODS = [
    pytest.param(line(b"XYZZY http://@V/ HTTP/1.1"), id="unknown"),
    pytest.param(line(b"get http://@V/ HTTP/1.1"), id="lowercase"),
    pytest.param(line(b"G\x00ET http://@V/ HTTP/1.1"), id="nul-inside"),
    pytest.param(line(b"GET\thttp://@V/ HTTP/1.1"), id="tab-separator"),
    pytest.param(line(b" GET http://@V/ HTTP/1.1"), id="leading-space"),
    pytest.param(line(b"G" * 4096 + b" http://@V/ HTTP/1.1"), id="overlong"),
    pytest.param(line(b"DESCRIBE http://@V/ HTTP/1.1"), id="rtsp-method"),
    pytest.param(line(b"GET_PARAMETER http://@V/ HTTP/1.1"), id="rtsp-underscore-method"),
    pytest.param(line(b"GETS http://@V/ HTTP/1.1"), id="known-prefix"),
    pytest.param(line(b"\xc7\xa4ET http://@V/ HTTP/1.1"), id="non-ascii"),
]

TARGET_BYTES = [
    pytest.param(line(b"GET http://@V/a b HTTP/1.1"), id="space"),
    pytest.param(line(b"GET http://@V/a\tb HTTP/1.1"), id="tab"),
    pytest.param(line(b"GET http://@V/a\x00b HTTP/1.1"), id="nul"),
    pytest.param(line(b"GET http://@V/a\x01b HTTP/1.1"), id="soh"),
    pytest.param(line(b"GET http://@V/a\x0bb HTTP/1.1"), id="vtab"),
    pytest.param(line(b"GET http://@V/a\x0cb HTTP/1.1"), id="formfeed"),
    pytest.param(line(b"GET http://@V/a\x7fb HTTP/1.1"), id="del"),
    pytest.param(line(b"GET http://@V/a\rb HTTP/1.1"), id="cr"),
    pytest.param(line(b"GET http://@V/a\xffb HTTP/1.1"), id="high-byte"),
    pytest.param(line(b"GET http://127.0.0.1\x00.evil:1/ HTTP/1.1"), id="nul-in-authority"),
    pytest.param(line(b"GET http://@V/a\nb HTTP/1.1"), id="lf"),
]

REFUSED = {
    "Content-Length with Transfer-Encoding": CL_AND_TE,
    "obfuscated Transfer-Encoding": OBFUSCATED_TE,
    "bad Content-Length": CONTENT_LENGTH,
    "bad chunk framing": CHUNK_SIZES,
    "obs-fold": OBS_FOLD,
    "bare LF / bare CR": LINE_ENDINGS,
    "control bytes in header names and values": CONTROL_BYTES,
    "whitespace before the colon": WHITESPACE_BEFORE_COLON,
    "duplicate or disagreeing Host": HOST,
    "request-target forms not valid for a proxy": TARGET_FORMS,
    "HTTP/0.9 and unknown versions": VERSIONS,
    "absurd methods": METHODS,
    "space or control bytes in the request-target": TARGET_BYTES,
}
ALL_REFUSED = [case for cases in REFUSED.values() for case in cases]


# --- the servers ----------------------------------------------------------------------


@dataclass
class WatchedVendor:
    """The stub vendor, plus a count of every TCP connection it accepted."""

    server: VendorServer
    connections: int = 0

    @property
    def authority(self) -> bytes:
        return b"127.0.0.1:%d" % self.server.port

    @property
    def seen(self) -> list[tuple[str, int, str, str]]:
        return self.server.seen


@dataclass
class UpstreamConnection:
    requests: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class ScriptedUpstream:
    """A raw TCP "vendor" that answers every request head with the same bytes (or pieces
    of bytes, PIECE_PAUSE_S apart) and notes when the gateway closes the connection."""

    def __init__(self) -> None:
        self.answer: bytes | tuple[bytes, ...] = b""
        self.connections: list[UpstreamConnection] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def authority(self) -> bytes:
        return b"127.0.0.1:%d" % self.port

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            record = UpstreamConnection()
            self.connections.append(record)
            threading.Thread(target=self._talk, args=(conn, record), daemon=True).start()

    def _talk(self, conn: socket.socket, record: UpstreamConnection) -> None:
        buffered = b""
        with conn:
            conn.settimeout(READ_TIMEOUT_S * 2)
            try:
                while data := conn.recv(65536):
                    buffered += data
                    while b"\r\n\r\n" in buffered:
                        _, _, buffered = buffered.partition(b"\r\n\r\n")
                        record.requests += 1
                        self._answer(conn)
            except TimeoutError:
                return  # still open: `closed` stays unset
            except OSError:
                pass
            record.closed.set()

    def _answer(self, conn: socket.socket) -> None:
        pieces = self.answer if isinstance(self.answer, tuple) else (self.answer,)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(PIECE_PAUSE_S)
            conn.sendall(piece)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def module_vendor() -> Iterator[WatchedVendor]:
    server = VendorServer({ALLOWED_EGRESS})
    watched = WatchedVendor(server)
    accept = server.get_request

    def counting_accept() -> Any:
        request = accept()
        watched.connections += 1
        return request

    server.get_request = counting_accept  # type: ignore[method-assign]
    server.thread.start()
    yield watched
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw = RunningGateway(gateway_config(tmp_path_factory.mktemp("gateway"))).start()
    yield gw
    gw.stop()


@pytest.fixture
def vendor(module_vendor: WatchedVendor) -> WatchedVendor:
    """The module's vendor, forgetting what earlier cases sent it."""
    module_vendor.server.seen.clear()
    module_vendor.connections = 0
    return module_vendor


@pytest.fixture
def gateway(module_gateway: RunningGateway) -> RunningGateway:
    return module_gateway


@pytest.fixture
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    """A fresh port per test, so no case meets a connection the gateway pooled before."""
    upstream = ScriptedUpstream()
    yield upstream
    upstream.close()


# --- talking to the gateway -----------------------------------------------------------


@dataclass
class Outcome:
    data: bytes
    ending: str  # "eof": the gateway closed; "reset": it reset; "open": still open

    @property
    def status_line(self) -> bytes:
        return self.data.split(b"\r\n", 1)[0]

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]


def exchange(gw: RunningGateway, payload: bytes, *, pause_after: int | None = None) -> Outcome:
    """Send `payload` (in two writes split at `pause_after`, with a pause between them),
    then read until the gateway closes the connection or READ_TIMEOUT_S passes."""
    with socket.create_connection(gw.http, timeout=READ_TIMEOUT_S) as s:
        try:
            if pause_after is None:
                s.sendall(payload)
            else:
                s.sendall(payload[:pause_after])
                time.sleep(PIECE_PAUSE_S)
                s.sendall(payload[pause_after:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was sent: what it answered is still readable
        return read_until_closed(s)


def read_until_closed(s: socket.socket) -> Outcome:
    """Everything the gateway sends until it closes `s`, or READ_TIMEOUT_S passes."""
    data = b""
    deadline = time.monotonic() + READ_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Outcome(data, "reset")
        if not chunk:
            return Outcome(data, "eof")
        data += chunk
    return Outcome(data, "open")


def send(gw: RunningGateway, template: bytes, authority: bytes, **kwargs: Any) -> Outcome:
    return exchange(gw, template.replace(V, authority), **kwargs)


def read_response(s: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One complete response with a Content-Length body: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a full head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for header_line in lines:
        name, _, value = header_line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "closed before the full body"
        body += chunk
    return status, headers, body


def forwarded(gw: RunningGateway, payload: bytes) -> tuple[bytes, dict[bytes, bytes], Any]:
    """Send one request that should get through; returns the client's status line and
    headers, and what the vendor echoed about the request it received."""
    with socket.create_connection(gw.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(payload)
        status, headers, body = read_response(s)
    return status, headers, json.loads(body) if status.startswith(b"HTTP/1.1 200") else None


def assert_refused_and_closed(outcome: Outcome, vendor: WatchedVendor) -> None:
    assert outcome.status_line == b"HTTP/1.1 400 Bad Request", outcome.data[:300]
    assert b"connection: close" in outcome.head.lower()
    assert outcome.ending == "eof", f"connection {outcome.ending} after the refusal"
    assert outcome.data.count(b"HTTP/1.1 ") == 1, "a second response followed the refusal"
    assert vendor.seen == []
    assert vendor.connections == 0, "the gateway opened a connection to the vendor"


# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("template", ALL_REFUSED)
def test_malformed_or_ambiguous_request_gets_400_then_close_and_never_reaches_the_vendor(
    gateway: RunningGateway, vendor: WatchedVendor, template: bytes
) -> None:
    outcome = send(gateway, template, vendor.authority)

    assert_refused_and_closed(outcome, vendor)


WITHOUT_CREDENTIALS = [
    pytest.param(post(b"Content-Length: 6", b"Transfer-Encoding: chunked"), id="cl-and-te"),
    pytest.param(te(b" chunked "), id="te-trailing-space"),
    pytest.param(cl(b" 5, 5"), id="cl-list"),
    pytest.param(get(b"X-A: a", b" folded"), id="obs-fold"),
    pytest.param(get(host=b"Host: other.example"), id="host-disagrees"),
    pytest.param(get(target=b"/foo"), id="origin-form"),
]


@pytest.mark.parametrize("template", WITHOUT_CREDENTIALS)
@pytest.mark.parametrize("auth", [b"", WRONG_AUTH], ids=["no-credentials", "wrong-token"])
def test_malformed_request_without_valid_credentials_is_refused_the_same(
    gateway: RunningGateway, vendor: WatchedVendor, template: bytes, auth: bytes
) -> None:
    outcome = send(
        gateway, template.replace(AUTH + b"\r\n", auth and auth + b"\r\n"), vendor.authority
    )

    assert_refused_and_closed(outcome, vendor)


def test_ambiguous_request_after_a_good_one_is_refused_and_the_connection_closed(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    # A good request is answered; the next one on the same connection, ambiguous and
    # carrying a third in its body, is refused and the connection closes before the third.
    bad = post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED)
    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(get(target=b"http://@V/good").replace(V, vendor.authority))
        status, _, _ = read_response(s)
        s.sendall(bad.replace(V, vendor.authority))
        rest = read_until_closed(s)

    assert status == b"HTTP/1.1 200 OK"
    assert rest.status_line == b"HTTP/1.1 400 Bad Request"
    assert (rest.ending, rest.data.count(b"HTTP/1.1 ")) == ("eof", 1)
    assert [path for *_, path in vendor.seen] == ["/good"]


def test_pipelined_good_request_before_an_ambiguous_one_is_refused_with_it(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    # Both arrive in one read: the parser refuses the read as a whole, so nothing of it
    # is forwarded, not even the good request in front.
    good = get(target=b"http://@V/good")
    bad = post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED)

    outcome = send(gateway, good + bad, vendor.authority)

    assert_refused_and_closed(outcome, vendor)


def test_bad_chunk_arriving_after_the_body_started_gets_400_and_no_request_completes(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    # The head and a first chunk are forwarded before the bad chunk arrives: the gateway
    # refuses and closes both sides, so the vendor never completes a request.
    payload = chunked(b"5\r\nhello\r\n" + b"0x5\r\nworld\r\n0\r\n\r\n" + SMUGGLED)
    first_chunk_end = payload.index(b"hello\r\n") + len(b"hello\r\n")

    outcome = send(gateway, payload, vendor.authority, pause_after=first_chunk_end)

    assert outcome.status_line == b"HTTP/1.1 400 Bad Request"
    assert outcome.ending == "eof"
    time.sleep(PIECE_PAUSE_S)
    assert vendor.seen == []


def test_bad_chunk_after_the_response_started_never_writes_a_400_into_the_response(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream
) -> None:
    # The vendor answers before the request body ends (legal); a bad chunk arriving then
    # must cut the connection, not append a second status line to the response body.
    scripted_upstream.answer = OK + b"Content-Length: 100\r\n\r\nfirst part"
    payload = chunked(b"5\r\nhello\r\n")
    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(payload.replace(V, scripted_upstream.authority))
        data = b""
        while b"first part" not in data:
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        s.sendall(b"0x5\r\nworld\r\n0\r\n\r\n")
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass

    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.count(b"HTTP/1.1 ") == 1, data


# --- what is accepted is re-framed ----------------------------------------------------

ACCEPTED = [
    pytest.param(b"Transfer-Encoding: CHUNKED", b"5\r\nhello\r\n0\r\n\r\n", id="te-upper"),
    pytest.param(b"Transfer-Encoding: Chunked", b"5\r\nhello\r\n0\r\n\r\n", id="te-title"),
    pytest.param(b"Transfer-Encoding:chunked", b"5\r\nhello\r\n0\r\n\r\n", id="te-no-ows"),
    # RFC 9110 section 5.6.3: OWS is SP or HTAB; llhttp drops it as it drops a space.
    pytest.param(b"Transfer-Encoding:\tchunked", b"5\r\nhello\r\n0\r\n\r\n", id="te-tab-ows"),
    pytest.param(
        b"Transfer-Encoding: chunked", b'5;ext="q"\r\nhello\r\n0\r\n\r\n', id="te-extension"
    ),
    pytest.param(
        b"Transfer-Encoding: chunked",
        b"5;" + b"e" * (MAX_CHUNK_LINE_BYTES - 4) + b"\r\nhello\r\n0\r\n\r\n",
        id="te-extension-at-bound",
    ),
    pytest.param(
        b"Transfer-Encoding: chunked", b"0005\r\nhello\r\n0\r\n\r\n", id="te-leading-zeros"
    ),
    pytest.param(
        b"Transfer-Encoding: chunked",
        b"5\r\nhello\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n",
        id="te-trailers-dropped",
    ),
    pytest.param(b"Content-Length: 005", b"hello", id="cl-leading-zeros"),
    pytest.param(b"Content-Length:\t5", b"hello", id="cl-tab-ows"),
]


@pytest.mark.parametrize(("framing", "body"), ACCEPTED)
def test_valid_framing_variant_is_accepted_and_re_framed_for_the_vendor(
    gateway: RunningGateway, vendor: WatchedVendor, framing: bytes, body: bytes
) -> None:
    payload = post(framing, b"Connection: close", body=body).replace(V, vendor.authority)

    status, _, echoed = forwarded(gateway, payload)

    assert status == b"HTTP/1.1 200 OK"
    assert echoed["body_len"] == 5
    sent = echoed["headers"]
    if b"Transfer-Encoding" in framing:
        assert (sent["transfer-encoding"], "content-length" in sent) == ("chunked", False)
    else:
        assert (sent["content-length"], "transfer-encoding" in sent) == ("5", False)
    assert "x-checksum" not in sent
    assert [path for *_, path in vendor.seen] == ["/first"]


def test_http_1_0_request_with_transfer_encoding_is_served_then_the_connection_closes(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    # RFC 9112 section 6.1: the framing is faulty, so the request is processed and the
    # connection closed after it, keep-alive or not; the request behind it never runs.
    payload = post(
        b"Connection: keep-alive",
        b"Transfer-Encoding: chunked",
        body=b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
        version=b"HTTP/1.0",
    )

    outcome = send(gateway, payload, vendor.authority)

    assert outcome.status_line == b"HTTP/1.1 200 OK"
    assert b"connection: close" in outcome.head.lower()
    assert (outcome.ending, outcome.data.count(b"HTTP/1.1 ")) == ("eof", 1)
    assert [path for *_, path in vendor.seen] == ["/first"]


def test_http_1_0_request_with_transfer_encoding_and_bytes_after_it_gets_400(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    # Without keep-alive, anything after the request is refused with it.
    outcome = send(gateway, te(b" chunked", version=b"HTTP/1.0"), vendor.authority)

    assert_refused_and_closed(outcome, vendor)


# --- hop-by-hop headers ---------------------------------------------------------------

HOP_BY_HOP_SENT = [
    b"Connection: keep-alive, X-Listed, x-listed-lower , Upgrade",
    b"Connection: X-Second-Line",
    b"Keep-Alive: timeout=5, max=100",
    b"Proxy-Connection: keep-alive",
    b"Proxy-Authenticate: Basic",
    b"Proxy-Foo: 1",
    b"Proxy: http://attacker.example:3128",
    b"TE: trailers",
    b"Trailer: X-Checksum",
    b"Upgrade: websocket",
    b"X-Listed: secret",
    b"X-Listed-Lower: secret",
    b"X-Second-Line: secret",
    b"X-End-To-End: kept",
]
HOP_BY_HOP_NAMES = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-foo",
    "proxy",
    "te",
    "trailer",
    "upgrade",
    "x-listed",
    "x-listed-lower",
    "x-second-line",
]


@pytest.mark.parametrize("name", HOP_BY_HOP_NAMES)
def test_hop_by_hop_request_header_is_not_forwarded(
    gateway: RunningGateway, vendor: WatchedVendor, name: str
) -> None:
    status, _, echoed = forwarded(gateway, get(*HOP_BY_HOP_SENT).replace(V, vendor.authority))

    assert status == b"HTTP/1.1 200 OK"
    assert name not in echoed["headers"]
    assert echoed["headers"]["x-end-to-end"] == "kept"


CONNECTION_TRICKS = [
    pytest.param(b"close, Host, Content-Length, Transfer-Encoding", id="framing"),
    pytest.param(b"close, Proxy-Authorization", id="proxy-authorization"),
    pytest.param(b"close, Host, Content-Length, Transfer-Encoding, Proxy-Authorization", id="all"),
    pytest.param(b"HOST,content-length , TRANSFER-ENCODING", id="odd-case-and-spacing"),
]


@pytest.mark.parametrize("connection", CONNECTION_TRICKS)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_connection_header_cannot_strip_host_or_framing(
    gateway: RunningGateway, vendor: WatchedVendor, connection: bytes, framing: str
) -> None:
    body = b"hello world, all of it"
    if framing == "chunked":
        framed = b"Transfer-Encoding: chunked"
        wire = b"b\r\n%s\r\nb\r\n%s\r\n0\r\n\r\n" % (body[:11], body[11:])
    else:
        framed, wire = b"Content-Length: %d" % len(body), body
    payload = post(b"Connection: " + connection, framed, body=wire).replace(V, vendor.authority)

    status, _, echoed = forwarded(gateway, payload)

    assert status == b"HTTP/1.1 200 OK"
    assert echoed["headers"]["host"] == vendor.authority.decode()
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "proxy-authorization" not in echoed["headers"]


@pytest.mark.parametrize("auth", [b"", WRONG_AUTH], ids=["no-credentials", "wrong-token"])
def test_listing_proxy_authorization_in_connection_does_not_skip_authentication(
    gateway: RunningGateway, vendor: WatchedVendor, auth: bytes
) -> None:
    payload = get(b"Connection: Proxy-Authorization", auth=auth).replace(V, vendor.authority)

    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(payload)
        status, _, _ = read_response(s)

    assert status == b"HTTP/1.1 407 Proxy Authentication Required"
    assert vendor.seen == [] and vendor.connections == 0


def test_refusal_the_gateway_answers_itself_honours_connection_close(
    gateway: RunningGateway, vendor: WatchedVendor
) -> None:
    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(get(b"Connection: close", auth=b"").replace(V, vendor.authority))
        status, headers, _ = read_response(s)
        assert (status, headers.get(b"connection")) == (
            b"HTTP/1.1 407 Proxy Authentication Required",
            b"close",
        )
        assert read_until_closed(s).ending == "eof"


@pytest.mark.parametrize(
    "host",
    [
        pytest.param(b"Host: 127.0.0.1.:@P", id="trailing-dot"),
        pytest.param(b"Host: 0x7f.1:@P", id="legacy-ipv4-spelling"),
    ],
)
def test_host_header_agreeing_with_the_target_is_replaced_by_the_target_authority(
    gateway: RunningGateway, vendor: WatchedVendor, host: bytes
) -> None:
    # The vendor must see where the request really went, never the client's spelling.
    payload = get(b"Connection: close", host=host.replace(b"@P", b"%d" % vendor.server.port))

    status, _, echoed = forwarded(gateway, payload.replace(V, vendor.authority))

    assert status == b"HTTP/1.1 200 OK"
    assert echoed["headers"]["host"] == vendor.authority.decode()


# --- ambiguous responses from upstream ------------------------------------------------


BAD_RESPONSES = [
    pytest.param(
        OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + INJECTED,
        id="cl-and-te",
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + INJECTED,
        id="te-and-cl",
    ),
    pytest.param(
        OK + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + INJECTED, id="two-cls-same"
    ),
    pytest.param(
        OK + b"Content-Length: 5\r\nContent-Length: 0\r\n\r\nhello" + INJECTED,
        id="two-cls-differing",
    ),
    pytest.param(OK + b"Content-Length: 5, 5\r\n\r\nhello" + INJECTED, id="cl-list"),
    pytest.param(OK + b"Content-Length: +5\r\n\r\nhello" + INJECTED, id="cl-plus-sign"),
    pytest.param(OK + b"Content-Length: -1\r\n\r\n" + INJECTED, id="cl-negative"),
    pytest.param(OK + b"Content-Length: 5x\r\n\r\nhello" + INJECTED, id="cl-not-a-number"),
    pytest.param(OK + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + INJECTED, id="te-xchunked"),
    pytest.param(
        OK + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n" + INJECTED, id="te-trailing-space"
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + INJECTED,
        id="te-chunked-identity",
    ),
    pytest.param(
        OK
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + INJECTED,
        id="te-twice",
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n" + INJECTED,
        id="chunk-size-overflow",
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + INJECTED,
        id="chunk-size-0x",
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n" + INJECTED,
        id="chunk-size-negative",
    ),
    pytest.param(
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n" + INJECTED,
        id="chunk-missing-crlf",
    ),
    pytest.param(
        OK
        + b"Transfer-Encoding: chunked\r\n\r\n5;"
        + b"e" * MAX_CHUNK_LINE_BYTES
        + b"\r\nhello\r\n0\r\n\r\n"
        + INJECTED,
        id="chunk-extension-over-bound",
    ),
    pytest.param(
        OK + b"Content-Length: 5\r\nX-A: a\r\n folded\r\n\r\nhello" + INJECTED, id="obs-fold"
    ),
    pytest.param(
        OK + b"Content-Length: 5\r\nX-A: a\r\n\tfolded\r\n\r\nhello" + INJECTED, id="obs-fold-tab"
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello" + INJECTED, id="bare-lf-everywhere"
    ),
    pytest.param(
        OK + b"Content-Length: 5\nX-A: 1\r\n\r\nhello" + INJECTED, id="bare-lf-after-header"
    ),
    pytest.param(OK + b"Content-Length: 5\rX-A: 1\r\n\r\nhello" + INJECTED, id="bare-cr"),
    pytest.param(OK + b"Content-Length: 5\r\nX-A: a\x00b\r\n\r\nhello" + INJECTED, id="nul"),
    pytest.param(OK + b"Content-Length : 5\r\n\r\nhello" + INJECTED, id="space-before-colon"),
    pytest.param(b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello" + INJECTED, id="http-1.2"),
    pytest.param(b"hello " + INJECTED, id="http-0.9"),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n" + INJECTED,
        id="switching-protocols",
    ),
]


@pytest.mark.parametrize("answer", BAD_RESPONSES)
def test_ambiguous_upstream_response_gets_502_and_its_connection_is_not_reused(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream, answer: bytes
) -> None:
    scripted_upstream.answer = answer
    before = len(scripted_upstream.connections)

    outcome = send(gateway, get(target=b"http://@V/"), scripted_upstream.authority)

    assert outcome.status_line == b"HTTP/1.1 502 Bad Gateway", outcome.data[:300]
    assert b"INJECTED" not in outcome.data and b"hello" not in outcome.data
    assert outcome.ending == "eof"
    assert len(scripted_upstream.connections) == before + 1
    upstream = scripted_upstream.connections[-1]
    assert upstream.closed.wait(READ_TIMEOUT_S), "the gateway kept the upstream connection"
    assert upstream.requests == 1


def test_bad_chunk_after_the_response_started_cuts_the_client_and_passes_nothing_after_it(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream
) -> None:
    # The head is out when the bad chunk arrives: the only honest signal left is to cut
    # the connection before the client sees a complete response or anything after it.
    scripted_upstream.answer = (
        OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"0x5\r\nworld\r\n0\r\n\r\n" + INJECTED,
    )

    outcome = send(gateway, get(target=b"http://@V/"), scripted_upstream.authority)

    assert outcome.status_line == b"HTTP/1.1 200 OK"
    assert outcome.ending in ("eof", "reset")
    assert outcome.body == b"5\r\nhello\r\n", "more than the good chunk reached the client"
    assert scripted_upstream.connections[-1].closed.wait(READ_TIMEOUT_S)


def test_http_1_0_response_with_transfer_encoding_is_passed_on_and_its_connection_closed(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream
) -> None:
    # RFC 9112 section 6.1: processed, then the connection is closed, never reused.
    scripted_upstream.answer = (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )

    outcome = send(
        gateway, get(b"Connection: close", target=b"http://@V/"), scripted_upstream.authority
    )

    assert outcome.status_line == b"HTTP/1.1 200 OK"
    assert outcome.body == b"5\r\nhello\r\n0\r\n\r\n"
    assert scripted_upstream.connections[-1].closed.wait(READ_TIMEOUT_S)
    assert scripted_upstream.connections[-1].requests == 1


SURPLUS = [
    pytest.param(INJECTED, id="second-response"),
    pytest.param(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nINJECTED\r\n0\r\n\r\n",
        id="second-response-1.0-chunked",
    ),
    pytest.param(b"INJECTED garbage", id="garbage"),
]
HELLO = OK + b"Content-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("surplus", SURPLUS)
def test_bytes_arriving_after_a_response_ended_close_that_idle_connection(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream, surplus: bytes
) -> None:
    # The surplus reaches the pooled, idle connection: it is closed, and the client's
    # next request goes out on a new one and gets a genuine answer.
    scripted_upstream.answer = (HELLO, surplus)
    request = get(target=b"http://@V/").replace(V, scripted_upstream.authority)
    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(request)
        first = read_response(s)
        assert scripted_upstream.connections[0].closed.wait(READ_TIMEOUT_S)
        scripted_upstream.answer = HELLO
        s.sendall(request)
        second = read_response(s)

    assert (first[0], first[2]) == (second[0], second[2]) == (b"HTTP/1.1 200 OK", b"hello")
    assert [c.requests for c in scripted_upstream.connections] == [1, 1]


@pytest.mark.parametrize(
    "surplus",
    [
        pytest.param(SURPLUS[0].values[0], id="second-response"),
        pytest.param(SURPLUS[1].values[0], id="second-response-1.0-chunked"),
        pytest.param(SURPLUS[2].values[0], id="garbage"),
    ],
)
def test_bytes_after_a_response_in_the_same_read_are_dropped_with_the_connection(
    gateway: RunningGateway,
    scripted_upstream: ScriptedUpstream,
    surplus: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scripted_upstream.answer = HELLO + surplus

    outcome = send(
        gateway, get(b"Connection: close", target=b"http://@V/"), scripted_upstream.authority
    )

    assert outcome.status_line in (b"HTTP/1.1 200 OK", b"HTTP/1.1 502 Bad Gateway")
    assert b"INJECTED" not in outcome.data
    assert scripted_upstream.connections[0].closed.wait(READ_TIMEOUT_S)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "internal error"


def test_surplus_response_is_never_the_answer_to_a_pipelined_request_elsewhere(
    gateway: RunningGateway, vendor: WatchedVendor, scripted_upstream: ScriptedUpstream
) -> None:
    # Two pipelined requests to two destinations; the first destination answers twice.
    # Its second answer must not become the answer to the request sent to the vendor.
    scripted_upstream.answer = HELLO + INJECTED
    there = get(target=b"http://@V/").replace(V, scripted_upstream.authority)
    elsewhere = get(b"Connection: close", target=b"http://@V/elsewhere")

    outcome = exchange(gateway, there + elsewhere.replace(V, vendor.authority))

    assert b"INJECTED" not in outcome.data


def test_hop_by_hop_response_headers_are_not_passed_on(
    gateway: RunningGateway, scripted_upstream: ScriptedUpstream
) -> None:
    scripted_upstream.answer = (
        OK + b"Content-Length: 2\r\n"
        b"Connection: keep-alive, X-Vendor-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Vendor-Hop: 1\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Proxy-Foo: 1\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Vendor-Kept: 1\r\n"
        b"\r\nok"
    )
    with socket.create_connection(gateway.http, timeout=READ_TIMEOUT_S) as s:
        s.sendall(get(target=b"http://@V/").replace(V, scripted_upstream.authority))
        status, headers, body = read_response(s)

    assert (status, body) == (b"HTTP/1.1 200 OK", b"ok")
    assert headers[b"x-vendor-kept"] == b"1"
    for name in (b"x-vendor-hop", b"keep-alive", b"proxy-authenticate", b"proxy-foo"):
        assert name not in headers
    assert (b"trailer" in headers, b"upgrade" in headers) == (False, False)


# --- the counts the report asks for -------------------------------------------

CASE_COUNTS: dict[str, int] = {
    **{f"refused with 400: {category}": len(cases) for category, cases in REFUSED.items()},
    "refused with 400 without valid credentials": 2 * len(WITHOUT_CREDENTIALS),
    "refused mid-connection (after a good request, pipelined, split body, response started)": 4,
    "HTTP/1.0 with Transfer-Encoding (served then closed, or refused)": 2,
    "accepted framing variants, re-framed": len(ACCEPTED),
    "hop-by-hop request headers not forwarded": len(HOP_BY_HOP_NAMES),
    "Connection-header tricks (Host, framing and auth survive; close honoured)": (
        2 * len(CONNECTION_TRICKS) + 2 + 1
    ),
    "Host replaced by the target authority": 2,
    "ambiguous upstream responses never passed on": len(BAD_RESPONSES) + 1 + 2 * len(SURPLUS) + 1,
    "upstream framing passed on safely (HTTP/1.0 TE, hop-by-hop)": 2,
}
