"""HTTP/1.1 message framing for a forward proxy, sans-IO, on top of httptools (llhttp).

`RequestParser` and `ResponseParser` take bytes and return events; they never touch a
socket. llhttp already refuses the classic smuggling shapes (Content-Length with
Transfer-Encoding, duplicate lengths, obs-fold, bare LF, bad header tokens); this module
adds what a proxy needs on top: bounded heads, a strict view of framing headers and
versions, and request-target parsing for the three forms a proxy sees.

Bodies come out de-chunked; the gateway re-frames what it forwards, so the bytes a
vendor sees are always well formed whatever the client sent.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import httptools

from fixedip.bounded import remember

MAX_HEADERS: Final = 100
DEFAULT_MAX_HEAD_BYTES: Final = 65536
# One chunk-size line: size, extensions and CRLF. llhttp reads extensions without keeping
# them, but sets no bound; 16 KiB is the bound Node.js settled on (CVE-2024-22019).
MAX_CHUNK_LINE_BYTES: Final = 16384
_HEADER_OVERHEAD: Final = 4  # ": " and CRLF

# RFC 9110 section 7.6.1 and the proxy-specific ones: never forwarded.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers a client may not remove from forwarding by naming them in `Connection`.
_PROTECTED: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})
# Spellings that servers mapping header names to variables (CGI, WSGI) read as framing.
_FRAMING_LOOKALIKES: Final = frozenset({b"transfer_encoding", b"content_length"})
_NOTHING: Final[frozenset[bytes]] = frozenset()

_CTL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)
_NUMERIC_ISH = re.compile(r"^[0-9a-fx.]+$")

# The one-pass head parser (see _Parser._fast_messages). Each class is a subset of what
# llhttp accepts at that place (tests/proto/test_http1_fast.py checks every byte), so a
# head it takes, llhttp would have taken with the same meaning; anything else goes to
# llhttp, which decides.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rb"(?:[\x21-\x7e\x80-\xff][\t \x21-\x7e\x80-\xff]*)?"  # trailing OWS is kept
_FIELD_LINE_RE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")")
_REQUEST_LINE_RE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) ((?:http://[0-9A-Za-z.:\[\]-]+)?/[\x21-\x7e]*)"
    rb" HTTP/1\.([01])"
)
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.([01]) ([2-9][0-9][0-9]) (" + _VALUE + rb")")
# Field lines repeat from message to message (Host, User-Agent, Server, Content-Type):
# a line seen before is looked up, not matched, lowered and split again. Only short
# lines with these names are kept, so no credential (Authorization, Cookie, an API key
# in a header of the vendor's own) outlives its message and a client cannot pin large
# lines in memory. Date and Content-Length change, but each value repeats for a second
# or for every body of that size; the table is bounded like every memo here.
# The field is typed Any so that compiled code hands back the stored tuple object: a
# typed tuple[bytes, bytes] would be unboxed and built anew on every hit.
_LINES: dict[bytes, tuple[Any, bytes]] = {}
_LINES_MAX = 2048
_LINE_MAX_BYTES = 256
_MEMO_NAMES: Final = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"accept-ranges",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-type",
        b"date",
        b"host",
        b"keep-alive",
        b"pragma",
        b"server",
        b"strict-transport-security",
        b"user-agent",
        b"vary",
        b"x-content-type-options",
        b"x-frame-options",
    }
)
_CONNECTION_TOKEN = re.compile(rb"[a-z0-9-]+")
_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
}
_VERSIONS: Final = {b"0": "1.0", b"1": "1.1"}
# Connection values as sent by nearly everyone: (close, keep-alive) without splitting.
_SIMPLE_CONNECTION: Final = {
    b"keep-alive": (False, True),
    b"Keep-Alive": (False, True),
    b"close": (True, False),
    b"Close": (True, False),
}
_NOT_FAST: Final = frozenset({b"transfer-encoding", b"upgrade"}) | _FRAMING_LOOKALIKES
FAST_HEADS = True  # the default for new parsers; benchmarks.hotpath --llhttp-only clears it


class ProtocolError(Exception):
    """Input that must be refused: `status` is the HTTP status to answer with, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The hot events and records write their own __init__ (init=False): a compiled module
# compiles what its class body says, while the one @dataclass generates runs as
# interpreted Python, which costs about a microsecond per object.


@dataclass(slots=True, init=False)
class _Head:
    """What a request head and a response head have in common."""

    version: str
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    chunked: bool
    content_length: int | None
    # Lowercase header names, parallel to `headers`: lowered once, looked up many times.
    lnames: list[bytes] = field(compare=False, repr=False)

    def __init__(
        self,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        lnames: list[bytes] | None,
    ) -> None:
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length
        self.lnames = [] if lnames is None else lnames

    def get(self, name: bytes) -> bytes | None:
        return _first_value(self.headers, self.lnames, name)


@dataclass(slots=True, init=False)
class RequestHead(_Head):
    method: str
    target: bytes

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        lnames: list[bytes] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        _Head.__init__(self, version, headers, keep_alive, chunked, content_length, lnames)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True, init=False)
class ResponseHead(_Head):
    status: int
    reason: bytes

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        lnames: list[bytes] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        _Head.__init__(self, version, headers, keep_alive, chunked, content_length, lnames)


def _first_value(
    headers: list[tuple[bytes, bytes]], lnames: list[bytes], name: bytes
) -> bytes | None:
    """The first value of header `name` (lowercase) in a parsed head."""
    lnames = lnames or [k.lower() for k, _ in headers]
    try:
        return headers[lnames.index(name)][1]
    except ValueError:
        return None


@dataclass(slots=True, init=False)
class Body:
    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class EndOfMessage:
    pass


@dataclass(slots=True)
class Upgrade:
    """The parser handed the connection over (CONNECT); `leftover` belongs to the tunnel."""

    leftover: bytes


Event = RequestHead | ResponseHead | Body | EndOfMessage | Upgrade

END: Final = EndOfMessage()


@dataclass(slots=True, init=False)
class _HeadState:
    url: bytearray
    headers: list[tuple[bytes, bytes]]
    lnames: list[bytes]
    size: int
    raw: int  # bytes of pieces fed while this head was in progress
    reason: bytes

    def __init__(self) -> None:
        self.url = bytearray()
        self.headers = []
        self.lnames = []
        self.size = 0
        self.raw = 0
        self.reason = b""


_FRAMING_NAMES: Final = frozenset({b"transfer-encoding", b"content-length"}) | _FRAMING_LOOKALIKES


def _framing(
    headers: list[tuple[bytes, bytes]], lnames: list[bytes] | None = None
) -> tuple[bool, int | None]:
    """(chunked, content_length) from headers, refusing any ambiguity."""
    if lnames is None:
        lnames = [k.lower() for k, _ in headers]
    if _FRAMING_NAMES.isdisjoint(lnames):
        return False, None  # the common GET: nothing to check
    chunked = False
    length: int | None = None
    te_seen = False
    for lname, (name, value) in zip(lnames, headers, strict=True):
        if lname == b"transfer-encoding":
            if te_seen or value.lower() != b"chunked":
                raise ProtocolError(400, "Transfer-Encoding must be exactly one 'chunked'")
            te_seen = chunked = True
        elif lname == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                raise ProtocolError(400, "Content-Length must be one non-negative integer")
            length = int(value)
        elif lname in _FRAMING_LOOKALIKES:
            raise ProtocolError(400, f"header {name.decode()!r} looks like a framing header")
    if chunked and length is not None:
        raise ProtocolError(400, "Content-Length together with Transfer-Encoding")
    return chunked, length


# (headers, lowercase names, Content-Length, keep-alive) of a plain head
_Fields = tuple[list[tuple[bytes, bytes]], list[bytes], int | None, bool]


def _field_lines(data: bytes, start: int, stop: int, http11: bool) -> _Fields | None:
    """The field lines in `data[start:stop]` (each ending in CRLF) as headers and their
    lowercase names, then judged by _fast_fields; None for a line the one-pass parser
    leaves to llhttp."""
    headers: list[tuple[bytes, bytes]] = []
    lnames: list[bytes] = []
    if stop > start:
        lines = data[start : stop - 2].split(b"\r\n")
        if len(lines) > MAX_HEADERS:
            return None
        for line in lines:
            seen = _LINES.get(line)
            if seen is None:
                m = _FIELD_LINE_RE.fullmatch(line)
                if m is None:
                    return None
                field: Any = (m[1], m[2])
                lname = m[1].lower()
                if lname in _MEMO_NAMES and len(line) <= _LINE_MAX_BYTES:
                    remember(_LINES, line, (field, lname), _LINES_MAX)
            else:
                field, lname = seen
            headers.append(field)
            lnames.append(lname)
    return _fast_fields(headers, lnames, http11)


def _fast_fields(
    headers: list[tuple[bytes, bytes]], lnames: list[bytes], http11: bool
) -> _Fields | None:
    """(headers, lowercase names, Content-Length, keep-alive) of a head's fields, each
    already a valid line; None for a head llhttp must judge: chunked or look-alike
    framing, Upgrade, two Host fields, an odd Connection value, a bad Content-Length."""
    if not _NOT_FAST.isdisjoint(lnames) or lnames.count(b"host") > 1:
        return None
    length = None
    if b"content-length" in lnames:
        i = lnames.index(b"content-length")
        value = headers[i][1]
        if b"content-length" in lnames[i + 1 :] or not value.isdigit() or len(value) > 18:
            return None  # llhttp refuses it, with its own words
        length = int(value)
    close = keep = False
    if b"connection" in lnames:
        i = lnames.index(b"connection")
        simple = _SIMPLE_CONNECTION.get(headers[i][1])
        if simple is not None and b"connection" not in lnames[i + 1 :]:
            close, keep = simple
        else:
            for lname, (_, value) in zip(lnames, headers, strict=True):
                if lname != b"connection":
                    continue
                for token in value.lower().split(b","):
                    token = token.strip(b" \t")
                    if not _CONNECTION_TOKEN.fullmatch(token) or token == b"upgrade":
                        return None
                    close = close or token == b"close"
                    keep = keep or token == b"keep-alive"
    return headers, lnames, length, not close if http11 else keep


def _keep_alive(should_keep_alive: bool, chunked: bool, version: str) -> bool:
    # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing;
    # it is processed, then the connection closes, so a peer that framed it otherwise
    # cannot slip anything after it.
    return should_keep_alive and not (chunked and version == "1.0")


class _Parser:
    """Shared callback plumbing for the request and response parsers."""

    _bad_status = 400
    _malformed = "malformed request"  # how errors llhttp reports are introduced

    def __init__(self, max_head_bytes: int, fast: bool | None = None) -> None:
        self.max_head = max_head_bytes  # a head longer than this is refused (431)
        # try the one-pass head parser at message boundaries
        self._fast = FAST_HEADS if fast is None else fast
        self._llhttp_idle = True  # llhttp holds no part of a message
        self._fast_left = 0  # bytes to come of a Content-Length body the fast path reads
        self._closing = False  # the fast path ended a message that closes the connection
        self._events: list[Event] = []
        self._head: _HeadState | None = _HeadState()
        self._error: ProtocolError | None = None
        self._in_body = False
        self._quiet_bytes = 0
        self._body_left = 0  # bytes of a Content-Length or close-delimited body to come
        self._chunk_line: int | None = None  # bytes of the chunk-size line being read
        self._chunk_headers = 0  # chunk-size lines completed so far
        # llhttp's parser, made when a message first needs it: heads the one-pass parser
        # takes never do, and a connection that never makes one leaves no cycle behind.
        self._parser: Any = None
        self._released = False

    @property
    def at_boundary(self) -> bool:
        """True when the parser holds no part of a message: the next byte fed starts one.
        Only then may a caller parse a whole message itself (`whole_request`) and leave
        this parser out, its state unchanged."""
        return (
            self._llhttp_idle and not self._fast_left and not self._closing and self._error is None
        )

    def release(self) -> None:
        """The connection is gone: drop llhttp's parser. It holds this object's callbacks
        and this object holds it, a cycle only the garbage collector would free."""
        self._parser = None
        self._released = True

    def _llhttp(self, make: Callable[[Any], Any]) -> Any:
        """llhttp's parser for this connection, made by `make` on first use."""
        if self._parser is None:
            if self._released:
                raise RuntimeError("feed() after release(): the connection has ended")
            self._parser = make(self)
        return self._parser

    def whole_taken(self) -> None:
        """A whole message was parsed outside this parser (whole_request/whole_response):
        like a feed that yielded events, it ends a run of feeds without one."""
        self._quiet_bytes = 0

    # httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._llhttp_idle = False
        self._head = _HeadState()
        self._in_body = False
        self._body_left = 0
        self._chunk_line = None

    def on_url(self, url: bytes) -> None:
        head = self._head
        assert head is not None
        head.url += url
        head.size += len(url)
        if head.size > self.max_head:
            self._fail(ProtocolError(414, "request target too long"))

    def on_status(self, reason: bytes) -> None:
        head = self._head
        assert head is not None
        head.reason += reason
        head.size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # trailer fields: dropped, never forwarded
        head = self._head
        assert head is not None
        if _CTL_IN_VALUE.search(value):
            self._fail(ProtocolError(400, "control character in a header value"))
        head.headers.append((name, value))
        head.lnames.append(name.lower())
        head.size += len(name) + len(value) + _HEADER_OVERHEAD
        if head.size > self.max_head or len(head.headers) > MAX_HEADERS:
            self._fail(ProtocolError(431, "request header fields too large"))

    def on_body(self, body: bytes) -> None:
        if body:  # llhttp reports an empty span on an empty feed; chunk(b"") would end a body
            self._events.append(Body(body))
            self._body_left = max(0, self._body_left - len(body))

    def on_chunk_header(self) -> None:
        self._chunk_headers += 1
        self._chunk_line = None

    def on_chunk_complete(self) -> None:
        self._chunk_line = 0

    def on_message_complete(self) -> None:
        self._llhttp_idle = True
        self._events.append(END)
        self._body_left = 0
        self._chunk_line = None

    # the one-pass head parser ----------------------------------------------------------
    def _fast_messages(self, data: bytes) -> int:
        """Parse whole messages at the start of `data` without llhttp; returns where it
        stopped (a partial head, or a message it leaves to llhttp).

        llhttp calls back into Python once per header; a whole head taken in one pass
        (in C, or with regular expressions) costs a fraction of that. Only plain
        heads are taken (see _fast_fields); llhttp, idle at a message boundary whenever
        this runs, parses everything else from where this stopped.
        """
        pos, end = 0, len(data)
        events = self._events
        while pos < end:
            left = self._fast_left
            if left:
                take = min(left, end - pos)
                events.append(Body(data if take == end else data[pos : pos + take]))
                pos += take
                self._fast_left = left - take
                if not self._fast_left:
                    events.append(END)
                continue
            if self._closing:
                # llhttp refuses anything after a message that closes the connection
                self._fail(
                    ProtocolError(
                        self._bad_status, f"{self._malformed}: Data after `Connection: close`"
                    )
                )
            after = self._fast_head(data, pos, pos + self.max_head)
            if after < 0:
                break
            pos = after
        return pos

    def _fast_head(self, data: bytes, pos: int, limit: int) -> int:
        """Take the head at data[pos], ending before `limit`: where it ends, or -1 for
        a partial head or one left to llhttp."""
        raise NotImplementedError

    def _fast_body(self, keep_alive: bool, length: int | None) -> None:
        """After a head the fast path took: read its Content-Length body, or end it."""
        if length:
            self._fast_left = length
        else:
            self._events.append(END)
        self._closing = not keep_alive

    def _start_body(self, chunked: bool, identity_bytes: int) -> None:
        """A body follows the head just parsed: chunked, or `identity_bytes` long."""
        if chunked:
            self._chunk_line = 0
        else:
            self._body_left = identity_bytes

    def _raise_failed(self) -> None:
        """A parser that refused its input refuses everything after it. (A method, not an
        inline check: the callbacks set `_error` behind the caller's back, so the caller
        must not treat it as known to be None afterwards, as a compiled build would.)"""
        if self._error is not None:
            raise self._error

    def _fail(self, error: ProtocolError) -> NoReturn:
        self._error = error
        raise error

    def _bound_quiet_bytes(self, fed: int, head_before: _HeadState | None) -> None:
        """Refuse a run of feeds that yields no event once it passes max_head_bytes.

        httptools hands a header (or trailer) field over only when its line ends and
        buffers it until then, so a value that never ends would otherwise grow without
        limit. Buffered bytes stay below max_head_bytes plus one feed.
        """
        if self._events or self._head is not head_before:
            self._quiet_bytes = 0
            return
        self._quiet_bytes += fed
        if self._quiet_bytes > self.max_head:
            self._fail(ProtocolError(431, "request header fields too large"))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _feed_llhttp(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        data: bytes,
        start: int = 0,
    ) -> None:
        """Feed `data[start:]` to `parser`, in pieces wherever a chunk-size line may be.

        A chunk-size line holds no LF and starts right after the LF that ended the head or
        the previous chunk, so a line crossing a piece boundary is measured exactly from
        the LFs around it, and a line inside one piece is shorter than the piece. Identity
        bodies, the bulk of the bytes, go through in one call. HttpParserUpgrade carries
        its offset in `data`.
        """
        end = len(data)
        view = memoryview(data)
        pos = start
        while pos < end:
            stop = min(end, pos + (self._body_left or MAX_CHUNK_LINE_BYTES))
            line_before, headers_before = self._chunk_line, self._chunk_headers
            head_before = self._head if not self._in_body else None
            try:
                parser.feed_data(view[pos:stop])
            except httptools.HttpParserUpgrade as upgrade:
                offset = upgrade.args[0] if upgrade.args else stop - pos
                raise httptools.HttpParserUpgrade(pos + offset) from None
            if (
                head_before is not None
                and self._head is head_before
                and not self._in_body
                and not self._llhttp_idle  # bytes llhttp skips between messages are no head
            ):
                # A piece wholly inside one head. llhttp drops whitespace around header
                # values without reporting it, so the callbacks under-count; raw bytes
                # keep max_head_bytes honest (to within two pieces).
                head_before.raw += stop - pos
                if head_before.raw > self.max_head:
                    self._fail(ProtocolError(431, "request header fields too large"))
            if line_before is not None:
                if self._chunk_headers == headers_before:
                    self._chunk_line = line_before + stop - pos  # the same line goes on
                    self._check_chunk_line(self._chunk_line)
                else:
                    self._check_chunk_line(line_before + data.find(b"\n", pos, stop) + 1 - pos)
            if self._chunk_line is not None and (
                line_before is None or self._chunk_headers != headers_before
            ):
                self._chunk_line = stop - data.rfind(b"\n", pos, stop) - 1
                self._check_chunk_line(self._chunk_line)
            pos = stop

    def _check_chunk_line(self, size: int) -> None:
        if size > MAX_CHUNK_LINE_BYTES:
            self._fail(
                ProtocolError(
                    self._bad_status, f"chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes"
                )
            )


class RequestParser(_Parser):
    """Client side: bytes in, RequestHead / Body / EndOfMessage / Upgrade out."""

    def __init__(
        self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, fast: bool | None = None
    ) -> None:
        super().__init__(max_head_bytes, fast)
        self._upgraded = False
        self._connect = False

    def _fast_head(self, data: bytes, pos: int, limit: int) -> int:
        found = _plain_request(data, pos, limit)
        if found is None:
            return -1
        head, end = found
        self._events.append(head)
        self._fast_body(head.keep_alive, head.content_length)
        return end

    @property
    def upgraded(self) -> bool:
        """True once a CONNECT head was parsed: later bytes belong to the tunnel."""
        return self._upgraded

    @property
    def head_in_progress(self) -> bool:
        """True while a head has started but not finished (the header timeout runs)."""
        return (
            self._head is not None
            and not self._in_body
            and (bool(self._head.url) or self._head.size > 0)
        )

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(ProtocolError(400, f"HTTP/{version} is not supported"))
        method = self._parser.get_method().decode("ascii")
        try:
            chunked, length = _framing(head.headers, head.lnames)
        except ProtocolError as error:
            self._fail(error)
        hosts = sum(1 for n, _ in head.headers if n.lower() == b"host")
        if hosts > 1:
            self._fail(ProtocolError(400, "more than one Host header"))
        self._connect = method == "CONNECT"
        if self._parser.should_upgrade() and not self._connect and (chunked or length):
            # llhttp skips the body of a request asking to switch protocols (Connection:
            # upgrade); we never switch, so that body would reach the upstream unframed.
            self._fail(ProtocolError(400, "a request asking to switch protocols has a body"))
        self._events.append(
            RequestHead(
                method=method,
                target=bytes(head.url),
                version=version,
                headers=head.headers,
                keep_alive=_keep_alive(self._parser.should_keep_alive(), chunked, version),
                chunked=chunked,
                content_length=length,
                lnames=head.lnames,
            )
        )
        self._in_body = True
        if not self._connect:
            self._start_body(chunked, length or 0)

    def feed(self, data: bytes) -> list[Event]:
        """Parse `data`; raises ProtocolError for input that must be refused."""
        self._raise_failed()
        if self._upgraded:
            raise RuntimeError("feed() after Upgrade: the bytes belong to the tunnel")
        head_before = self._head
        start = 0
        if self._fast_left or (self._fast and self._llhttp_idle):
            start = self._fast_messages(data)
            if start == len(data) and self._events:
                self._quiet_bytes = 0  # all taken without llhttp: the common keep-alive feed
                return self._take()
        try:
            leftover = self._execute(data, start)
        except ProtocolError:
            raise
        except httptools.HttpParserCallbackError as exc:
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(400, self._malformed) from exc
        except httptools.HttpParserError as exc:
            if self._error is not None:
                raise self._error from None
            self._error = ProtocolError(400, f"{self._malformed}: {exc}")
            raise self._error from None
        if leftover is not None:
            self._events.append(Upgrade(leftover))
            self._upgraded = True
        self._bound_quiet_bytes(len(data), head_before)
        return self._take()

    def _execute(self, data: bytes, start: int) -> bytes | None:
        """Feed llhttp; returns the bytes after a CONNECT head, which belong to the tunnel.

        llhttp also stops after a request asking for another protocol (Connection:
        upgrade). Only CONNECT hands the connection over: Upgrade is hop-by-hop and never
        forwarded, so parsing goes on with the next request.
        """
        parser = self._llhttp(httptools.HttpRequestParser)
        while True:
            try:
                self._feed_llhttp(parser, data, start)
                return None
            except httptools.HttpParserUpgrade as upgrade:
                start = upgrade.args[0]
                if self._connect:
                    return data[start:]


class ResponseParser(_Parser):
    """Upstream side. Call `expect(method)` before each response so HEAD is framed right."""

    _bad_status = 502
    _malformed = "malformed upstream response"

    def __init__(
        self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, fast: bool | None = None
    ) -> None:
        super().__init__(max_head_bytes, fast)
        self._no_body = False
        self._done_early = False
        self.close_delimited = False

    def _fast_head(self, data: bytes, pos: int, limit: int) -> int:
        """Final responses framed by Content-Length, or with no body; interim (1xx),
        chunked and close-delimited ones, and answers to HEAD, go to llhttp."""
        found = None if self._no_body else _plain_response(data, pos, limit)
        if found is None:
            return -1
        head, end = found
        self.close_delimited = False
        self._events.append(head)
        bodiless = head.status in (204, 304)
        self._fast_body(head.keep_alive, None if bodiless else head.content_length)
        return end

    def expect(self, method: str) -> None:
        self._no_body = method == "HEAD"
        self._done_early = False
        self.close_delimited = False

    def on_headers_complete(self) -> None:
        head = self._head
        assert head is not None
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(ProtocolError(502, f"upstream spoke HTTP/{version}"))
        status = self._parser.get_status_code()
        chunked, length = _framing(head.headers, head.lnames)
        if 100 <= status < 200 and (chunked or length is not None):
            # llhttp frames a body for some 1xx statuses; a body there is a response
            # smuggled ahead of the real one. Refuse rather than pass it on.
            self._fail(ProtocolError(502, f"upstream sent a body with interim status {status}"))
        bodiless = self._no_body or status in (204, 304) or 100 <= status < 200
        self.close_delimited = not bodiless and not chunked and length is None
        if not bodiless:
            self._start_body(chunked, sys.maxsize if self.close_delimited else length or 0)
        self._events.append(
            ResponseHead(
                status=status,
                reason=bytes(head.reason),
                version=version,
                headers=head.headers,
                keep_alive=_keep_alive(self._parser.should_keep_alive(), chunked, version)
                and not self.close_delimited,
                chunked=chunked and not bodiless,
                content_length=length,
                lnames=head.lnames,
            )
        )
        self._in_body = True
        if self._no_body and not 100 <= status < 200:
            # llhttp cannot be told "no body follows" from Python; the response to a
            # HEAD ends here and the next one gets a fresh parser.
            self._events.append(END)
            self._done_early = True
            raise _HeadDone

    def feed(self, data: bytes) -> list[Event]:
        self._raise_failed()
        head_before = self._head
        start = 0
        if self._fast_left or (self._fast and self._llhttp_idle):
            start = self._fast_messages(data)
            if start == len(data) and self._events:
                self._quiet_bytes = 0
                return self._take()
        try:
            self._feed_llhttp(self._llhttp(httptools.HttpResponseParser), data, start)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadDone) or self._done_early:
                self._parser = None  # the next response gets a fresh one
                self._llhttp_idle = True
                return self._take()
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(502, self._malformed) from exc
        except httptools.HttpParserUpgrade:
            self._error = ProtocolError(502, "upstream switched protocols")
            raise self._error from None
        except httptools.HttpParserError as exc:
            if self._done_early:
                self._parser = None
                self._llhttp_idle = True
                return self._take()
            if self._error is not None:
                raise self._error from None
            self._error = ProtocolError(502, f"{self._malformed}: {exc}")
            raise self._error from None
        self._bound_quiet_bytes(len(data), head_before)
        return self._take()

    def feed_eof(self) -> list[Event]:
        """The upstream closed: ends a close-delimited body, else the response was cut."""
        if self._in_body and self.close_delimited:
            self._in_body = False
            return [*self._take(), END]
        return self._take()


def whole_request(data: bytes, max_head: int) -> tuple[RequestHead, int] | None:
    """`data` as exactly one plain request and the whole of its Content-Length body: its
    head, as a RequestParser at a message boundary would give it, and where the body
    starts. None for anything else (part of a message, more than one, chunked, Upgrade,
    any head the one-pass parser leaves to llhttp): the parser decides those."""
    found = _plain_request(data, 0, max_head)
    if found is None or len(data) - found[1] != (found[0].content_length or 0):
        return None
    return found


def whole_response(data: bytes, max_head: int) -> tuple[ResponseHead, int] | None:
    """`data` as exactly one final response framed by Content-Length (or a bodiless 204
    or 304), body and all: its head, as a ResponseParser at a message boundary would
    give it for any method but HEAD, and where the body starts. None for anything else."""
    found = _plain_response(data, 0, max_head)
    if found is None:
        return None
    head, stop = found
    body = 0 if head.status in (204, 304) else head.content_length
    return found if len(data) - stop == body else None


def _plain_request(data: bytes, pos: int, limit: int) -> tuple[RequestHead, int] | None:
    """The request head at data[pos], ending in the first CRLF CRLF before `limit`, and
    where it ends, if the one-pass parser takes it (see _Parser._fast_messages); None for
    a partial head or one left to llhttp."""
    parts = _parse_request(data, pos, limit)
    if parts is None:
        return None
    method, target, version, headers, lnames, length, keep_alive, end = parts
    head = RequestHead(method, target, version, headers, keep_alive, False, length, lnames)
    return head, end


def _plain_response(data: bytes, pos: int, limit: int) -> tuple[ResponseHead, int] | None:
    """The final response head at data[pos] and where it ends, if the one-pass parser
    takes it: framed by Content-Length, or a bodiless 204 or 304; else None."""
    parts = _parse_response(data, pos, limit)
    if parts is None:
        return None
    status, reason, version, headers, lnames, length, keep_alive, end = parts
    head = ResponseHead(status, reason, version, headers, keep_alive, False, length, lnames)
    return head, end


# What the one-pass parser makes of a head, before it becomes a RequestHead or a
# ResponseHead: (method or status, target or reason, version, headers, lowercase names,
# Content-Length, keep-alive, where the head ends).
_RequestParts = tuple[
    str, bytes, str, list[tuple[bytes, bytes]], list[bytes], int | None, bool, int
]
_ResponseParts = tuple[
    int, bytes, str, list[tuple[bytes, bytes]], list[bytes], int | None, bool, int
]


def _parse_request_py(data: bytes, pos: int, limit: int, /) -> _RequestParts | None:
    """_heads.parse_request in Python (see _parse_request below)."""
    blank = data.find(b"\r\n\r\n", pos, limit)
    if blank < 0:
        return None
    stop = blank + 4
    eol = data.find(b"\r\n", pos, stop)
    m = _REQUEST_LINE_RE.fullmatch(data, pos, eol)
    if m is None:
        return None
    version = _VERSIONS[m[3]]
    fields = _field_lines(data, eol + 2, stop - 2, version == "1.1")
    if fields is None:
        return None
    headers, lnames, length, keep_alive = fields
    return _METHODS[m[1]], m[2], version, headers, lnames, length, keep_alive, stop


def _parse_response_py(data: bytes, pos: int, limit: int, /) -> _ResponseParts | None:
    """_heads.parse_response in Python."""
    blank = data.find(b"\r\n\r\n", pos, limit)
    if blank < 0:
        return None
    stop = blank + 4
    eol = data.find(b"\r\n", pos, stop)
    line = data[pos:eol]
    first = _STATUS_LINES_SEEN.get(line)
    if first is None:
        m = _STATUS_LINE_RE.fullmatch(line)
        if m is None:
            return None
        first = (int(m[2]), m[3], _VERSIONS[m[1]])
        if len(line) <= _LINE_MAX_BYTES:
            remember(_STATUS_LINES_SEEN, line, first, _STATUS_LINES_MAX)
    status, reason, version = first
    fields = _field_lines(data, eol + 2, stop - 2, version == "1.1")
    if fields is None:
        return None
    headers, lnames, length, keep_alive = fields
    if length is None and status not in (204, 304):
        return None  # close-delimited
    return status, reason, version, headers, lnames, length, keep_alive, stop


# A vendor's status lines repeat ("HTTP/1.1 200 OK"): each seen is matched once (bounded).
# (status, reason, version); typed Any, like _LINES, so compiled code hands back the
# stored tuple instead of building a new one on every hit.
_STATUS_LINES_SEEN: dict[bytes, Any] = {}


class _HeadDone(Exception):
    """Internal: stop llhttp after a bodiless (HEAD) response head."""


# Request targets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a proxied request goes. `host` is canonical: lowercase name or IP text."""

    host: str
    port: int
    path: bytes  # origin-form path + query to send upstream ("" for CONNECT)
    is_ip: bool

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def canonical_host(raw: str) -> tuple[str, bool]:
    """Lowercase DNS name or canonical IP text; legacy IPv4 spellings become dotted quads.

    `0x7f.1`, `2130706433` and `0177.0.0.1` are what inet_aton accepts and what some
    resolvers would turn into 127.0.0.1 behind our back: normalising them here means the
    guard and the rules see the real address.
    """
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if "%" in inner:
            raise ProtocolError(400, "IPv6 zone identifiers are not accepted")
        try:
            return str(ipaddress.IPv6Address(inner)), True
        except ValueError:
            raise ProtocolError(400, f"bad IPv6 literal {raw!r}") from None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    try:
        return str(ipaddress.IPv4Address(host)), True
    except ValueError:
        pass
    if _NUMERIC_ISH.match(host) and not re.search(r"[g-wyz]", host):
        try:
            return socket.inet_ntoa(socket.inet_aton(host)), True
        except OSError:
            pass
        if all(label.isdigit() or label.startswith("0x") for label in host.split(".")):
            raise ProtocolError(400, f"{raw!r} is not a valid IPv4 address")
    if not _DNS_NAME.match(host):
        raise ProtocolError(400, f"{raw!r} is not a valid host name")
    return host, False


def _port(text: str, default: int | None) -> int:
    if not text:
        if default is None:
            raise ProtocolError(400, "port missing")
        return default
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ProtocolError(400, f"bad port {text!r}")
    return int(text)


@functools.lru_cache(maxsize=4096)
def parse_authority(raw: bytes, default_port: int | None) -> tuple[str, bool, int]:
    """`host:port` / `[v6]:port` as in CONNECT and Host; returns (host, is_ip, port)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(400, "non-ASCII authority") from None
    if "@" in text or "%" in text or "/" in text or not text:
        raise ProtocolError(400, f"bad authority {text!r}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ProtocolError(400, f"bad authority {text!r}")
        host_part, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ProtocolError(400, f"bad authority {text!r}")
        port_text = rest[1:]
    else:
        host_part, sep, port_text = text.rpartition(":")
        if not sep:
            host_part, port_text = text, ""
        if ":" in host_part:
            raise ProtocolError(400, f"bad authority {text!r}: IPv6 needs brackets")
    host, is_ip = canonical_host(host_part)
    return host, is_ip, _port(port_text, default_port)


def parse_connect_target(raw: bytes) -> Target:
    host, is_ip, port = parse_authority(raw, None)
    return Target(host, port, b"", is_ip)


def parse_absolute_target(raw: bytes) -> Target:
    """`http://host[:port]/path?query` → Target. Other schemes and userinfo are refused.
    Short targets are remembered (bounded): functions call the same URLs again and again,
    a connection per request as often as not."""
    if len(raw) <= _TARGET_MEMO_BYTES:
        target = _TARGET_MEMO.get(raw)
        if target is None:
            target = remember(_TARGET_MEMO, raw, _parse_absolute_target(raw), _TARGET_MEMO_SIZE)
        return target
    return _parse_absolute_target(raw)


_TARGET_MEMO: dict[bytes, Target] = {}
_TARGET_MEMO_SIZE: Final = 4096
_TARGET_MEMO_BYTES: Final = 256


def _parse_absolute_target(raw: bytes) -> Target:
    lower = raw[:8].lower()
    if lower.startswith(b"https://"):
        raise ProtocolError(400, "https:// targets need CONNECT (the gateway does not see TLS)")
    if not lower.startswith(b"http://"):
        raise ProtocolError(400, "a proxy request needs an absolute http:// target or CONNECT")
    rest = raw[7:]
    cut = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    if b"#" in path:
        path = path[: path.index(b"#")]
    if not path.startswith(b"/"):
        path = b"/" + path
    host, is_ip, port = parse_authority(authority, 80)
    return Target(host, port, path, is_ip)


# Serialisation -----------------------------------------------------------------------


def connection_tokens(
    headers: list[tuple[bytes, bytes]], lnames: list[bytes] | None = None
) -> frozenset[bytes]:
    """Header names a sender listed in `Connection` (to drop), minus the protected ones."""
    if lnames is None:
        lnames = [k.lower() for k, _ in headers]
    if b"connection" not in lnames:
        return _NOTHING
    i = lnames.index(b"connection")
    value = headers[i][1]
    if len(value) <= _CONNECTION_MEMO_VALUE and b"connection" not in lnames[i + 1 :]:
        # One short field, usually "keep-alive" or "close": the same answer every time.
        listed = _CONNECTION_MEMO.get(value)
        if listed is None:
            listed = remember(
                _CONNECTION_MEMO, value, _listed_names([value]), _CONNECTION_MEMO_SIZE
            )
        return listed
    return _listed_names(
        [v for lname, (_, v) in zip(lnames, headers, strict=True) if lname == b"connection"]
    )


def _listed_names(values: list[bytes]) -> frozenset[bytes]:
    names: set[bytes] = set()
    for v in values:
        for token in v.split(b","):
            t = token.strip().lower()
            if t and t not in _PROTECTED:
                names.add(t)
    return frozenset(names)


_CONNECTION_MEMO: dict[bytes, frozenset[bytes]] = {}
_CONNECTION_MEMO_SIZE: Final = 256
_CONNECTION_MEMO_VALUE: Final = 64


def _is_proxy_header(lname: bytes) -> bool:
    """`Proxy-*` fields are about the hop to a proxy; a bare `Proxy` is httpoxy bait."""
    return lname.startswith(b"proxy-") or lname == b"proxy"


def end_to_end(
    headers: list[tuple[bytes, bytes]],
    lnames: list[bytes] | None = None,
    drop: frozenset[bytes] = frozenset(),
    keep: frozenset[bytes] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Headers minus hop-by-hop ones and `drop` (and, given `keep`, minus every name not
    in it), framing headers included (the caller re-frames). `lnames` are the lowercase
    names if the caller has them."""
    if lnames is None:
        lnames = [k.lower() for k, _ in headers]
    listed = connection_tokens(headers, lnames)
    # Which positions survive depends only on the names and the sets: the same client
    # and vendor send the same names request after request.
    key = (tuple(lnames), listed, drop, keep)
    kept = _E2E_MEMO.get(key)
    if kept is None:
        kept = tuple(
            i
            for i, lk in enumerate(lnames)
            if not (
                lk in HOP_BY_HOP
                or lk in listed
                or lk in drop
                or (keep is not None and lk not in keep)
                or lk == b"content-length"
                or _is_proxy_header(lk)
            )
        )
        remember(_E2E_MEMO, key, kept, _E2E_MEMO_SIZE)
    return [headers[i] for i in kept]


_E2E_MEMO: dict[
    tuple[tuple[bytes, ...], frozenset[bytes], frozenset[bytes], frozenset[bytes] | None],
    tuple[int, ...],
] = {}
_E2E_MEMO_SIZE: Final = 4096


def forward_head(
    first_line: bytes,
    head: _Head,
    drop: frozenset[bytes] = _NOTHING,
    keep: frozenset[bytes] | None = None,
    before: Sequence[tuple[bytes, bytes]] = (),
    after: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> bytes:
    """`head` as it leaves the gateway, in one bytes object: `first_line`, the fields in
    `before`, the end-to-end fields of `head` (see end_to_end), the fields in `after`,
    the blank line, then `body`."""
    return _forward_head(first_line, head.headers, head.lnames, drop, keep, before, after, body)


def _forward_head_py(
    first_line: bytes,
    headers: list[tuple[bytes, bytes]],
    lnames: list[bytes],
    drop: frozenset[bytes],
    keep: frozenset[bytes] | None,
    before: Sequence[tuple[bytes, bytes]],
    after: Sequence[tuple[bytes, bytes]],
    body: bytes,
    /,
) -> bytes:
    """_heads.forward_head in Python."""
    fields = [*before, *end_to_end(headers, lnames, drop, keep), *after]
    return serialize_head(first_line, fields) + body


def status_line(status: int, reason: bytes) -> bytes:
    """`HTTP/1.1 200 OK` (`-` for an empty reason). A vendor answers with the same few
    lines over and over, so short ones are remembered (bounded: the reason is theirs)."""
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s" % (status, reason or b"-")
        if len(reason) <= _STATUS_REASON_MEMO:
            remember(_STATUS_LINES, key, line, _STATUS_LINES_MAX)
    return line


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_STATUS_LINES_MAX: Final = 256
_STATUS_REASON_MEMO: Final = 64


def request_line(method: str, path: bytes) -> bytes:
    """`GET /path HTTP/1.1`, as forwarded."""
    prefix = _METHOD_PREFIXES.get(method)
    if prefix is None:
        prefix = method.encode() + b" "
    return prefix + path + b" HTTP/1.1"


_METHOD_PREFIXES: Final = {m: m.encode() + b" " for m in _METHODS.values()}


def content_length_field(length: int) -> Any:
    """The field `Content-Length: <length>`, a (bytes, bytes) tuple; bodies of the same
    size repeat, so each is made once (bounded). Typed Any, like _LINES, so that compiled
    code hands back the stored tuple rather than a new one."""
    field = _LENGTH_FIELDS.get(length)
    if field is None:
        field = (b"Content-Length", b"%d" % length)
        remember(_LENGTH_FIELDS, length, field, _LENGTH_FIELDS_MAX)
    return field


_LENGTH_FIELDS: dict[int, Any] = {}
_LENGTH_FIELDS_MAX: Final = 1024


def serialize_head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [first_line, b"\r\n"]
    for k, v in headers:
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"

REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def simple_response(
    status: int,
    body: bytes,
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
    content_type: bytes = b"text/plain; charset=utf-8",
) -> bytes:
    """A complete small response generated by the gateway itself."""
    reason = REASONS.get(status, "Status").encode()
    headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Cache-Control", b"no-store"),
    ]
    if extra:
        headers += extra
    if close:
        headers.append((b"Connection", b"close"))
    return serialize_head(b"HTTP/1.1 %d %s" % (status, reason), headers) + body


# The one-pass parser and the serialiser in C (fixedip/proto/_heads.c), built by
# scripts/compile beside the compiled hot path; without a C compiler, the same functions
# in Python above. tests/proto/test_heads_c.py checks that both give the same answers.
_parse_request = _parse_request_py
_parse_response = _parse_response_py
_forward_head = _forward_head_py
HEADS_IN_C = False
try:
    from fixedip.proto import _heads
except ImportError:
    pass
else:
    _parse_request = _heads.parse_request
    _parse_response = _heads.parse_response
    _forward_head = _heads.forward_head
    HEADS_IN_C = True


def remembered_lines() -> tuple[list[bytes], list[bytes]]:
    """The field lines and status lines the one-pass parser remembers now (for tests)."""
    if HEADS_IN_C:
        return _heads.remembered()
    return list(_LINES), list(_STATUS_LINES_SEEN)
