"""The fuzz harnesses: one function per target, bytes in, AssertionError on a broken invariant.

Nothing here imports atheris, so any input can be replayed in a plain interpreter or a
test: `TARGETS["socks5"](data)`. Every binary target reads its first byte as a control
byte (how to cut the rest into feeds, which limit or which answers to use) and the rest
as what the peer sent; `config_loader` reads the whole input as TOML text. The seed
files in `fuzz/corpus/<target>/` follow that layout.

The invariants, per target:

- `http_request_head`: `RequestParser.feed` raises only `ProtocolError` (400, 414 or
  431); events are well formed (a head first, bodies only where the head frames one, an
  end matching the framing, Upgrade only right after a CONNECT); after a refusal every
  further feed raises the same error; how the bytes are cut changes nothing but the
  feed-size-dependent 431; and whatever came before, the next valid request on a fresh
  parser, or on the same parser between messages, is parsed exactly or refused, never
  read as something else.
- `http_response`: the same for `ResponseParser` (502 only), with `expect()` called
  before each response as the gateway does and `feed_eof()` at the end.
- `socks5`: `Socks5Server.feed` never raises, returns only its documented events in
  the documented order, keeps its buffers within the documented bounds, and does not
  depend on how the bytes are cut.
- `config_loader`: `config.parse` returns a `Config` or raises `ConfigError` whose
  message starts with the source name, and a `Config` can be redacted.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from fixedip import config
from fixedip.proto.http1 import (
    DEFAULT_MAX_HEAD_BYTES,
    END,
    MAX_HEADERS,
    Body,
    EndOfMessage,
    Event,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Upgrade,
)
from fixedip.proto.socks5 import (
    MAX_PENDING_BYTES,
    AddressType,
    AuthRequest,
    Close,
    ConnectRequest,
    Socks5Server,
    State,
)
from fixedip.proto.socks5 import Event as SocksEvent

SMALL_HEAD_BYTES = 1024  # a control bit picks it, so inputs under -max_len reach the limits
CONFIG_SOURCE = "fuzz.toml"

# The request that must come out right after anything: one with a body, so a parser
# that lost its framing state would show it.
NEXT_REQUEST = (
    b"POST http://example.com/next HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nnext"
)
NEXT_REQUEST_EVENTS: list[Event] = [
    RequestHead(
        method="POST",
        target=b"http://example.com/next",
        version="1.1",
        headers=[(b"Host", b"example.com"), (b"Content-Length", b"4")],
        keep_alive=True,
        chunked=False,
        content_length=4,
    ),
    Body(b"next"),
    END,
]
NEXT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NEXT_RESPONSE_EVENTS: list[Event] = [
    ResponseHead(
        status=200,
        reason=b"OK",
        version="1.1",
        headers=[(b"Content-Length", b"2")],
        keep_alive=True,
        chunked=False,
        content_length=2,
    ),
    Body(b"ok"),
    END,
]

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CTL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_METHOD = re.compile(r"^[A-Z][A-Z-]*$")
_PIECE_SIZES = (0, 1, 1, 2, 3, 5, 8, 13, 64, 512)
_REQUEST_STATUSES = (400, 414, 431)
_RESPONSE_STATUSES = (502, 431)
# RFC 1928/1929 message sizes: the most a message in progress can hold before it is
# parsed. Greeting 2 + 255, auth 3 + 255 + 255, request 4 + 1 + 255 + 2.
_SOCKS_IN_PROGRESS_BYTES = {State.GREETING: 256, State.AUTH: 512, State.REQUEST: 261}
# One round of answers: method choice (2) + auth status (2) + reply with IPv6 (22).
_SOCKS_MAX_SENT_PER_FEED = 26


def cut(data: bytes, seed: int) -> list[bytes]:
    """`data` in pieces chosen by `seed` (0: one piece); empty pieces included."""
    if seed == 0:
        return [data]
    rng = random.Random(seed)
    pieces = []
    at = 0
    while at < len(data):
        size = rng.choice(_PIECE_SIZES)
        pieces.append(data[at : at + size])
        at += size
    return pieces


def merge_bodies(events: list[Event]) -> list[Event]:
    """Consecutive Body events as one: where a body is cut depends on how bytes arrive."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Body) and merged and isinstance(merged[-1], Body):
            merged[-1] = Body(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def is_event_prefix(prefix: list[Event], events: list[Event]) -> bool:
    """Whether merged `prefix` starts merged `events` (its last body may be cut short)."""
    prefix, events = merge_bodies(prefix), merge_bodies(events)
    if len(prefix) > len(events):
        return False
    if not prefix:
        return True
    *whole, last = prefix
    if whole != events[: len(whole)]:
        return False
    other = events[len(whole)]
    if isinstance(last, Body) and isinstance(other, Body):
        return other.data.startswith(last.data)
    return last == other


# HTTP ---------------------------------------------------------------------------------


def check_fields(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """Assert header fields are clean and framing is unambiguous; (chunked, length)."""
    assert len(headers) <= MAX_HEADERS, f"{len(headers)} headers"
    for name, value in headers:
        assert _TOKEN.match(name), f"header name {name!r} is not a token"
        assert not _CTL_IN_VALUE.search(value), f"control byte in {name!r}: {value!r}"
        assert value[:1] not in (b" ", b"\t"), f"leading whitespace kept in {value!r}"
    lower = [(name.lower(), value) for name, value in headers]
    encodings = [value for name, value in lower if name == b"transfer-encoding"]
    lengths = [value for name, value in lower if name == b"content-length"]
    assert len(encodings) <= 1, f"Transfer-Encoding {encodings!r}"
    assert len(lengths) <= 1, f"Content-Length {lengths!r}"
    assert not (encodings and lengths), "Content-Length with Transfer-Encoding"
    if encodings:
        assert encodings[0].lower() == b"chunked", f"Transfer-Encoding {encodings[0]!r}"
    if lengths:
        assert lengths[0].isdigit(), f"Content-Length {lengths[0]!r}"
    return bool(encodings), int(lengths[0]) if lengths else None


def check_request_head(head: RequestHead, max_head_bytes: int) -> None:
    assert head.version in ("1.0", "1.1"), f"version {head.version!r}"
    assert _METHOD.match(head.method), f"method {head.method!r}"
    assert head.target, "empty request target"
    assert all(0x20 < byte < 0x7F for byte in head.target), f"target {head.target!r}"
    chunked, length = check_fields(head.headers)
    assert (head.chunked, head.content_length) == (chunked, length), "framing differs"
    hosts = [name for name, _ in head.headers if name.lower() == b"host"]
    assert len(hosts) <= 1, "more than one Host"
    size = len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
    assert size <= max_head_bytes, f"head of {size} bytes passed the {max_head_bytes} limit"


class RequestStream:
    """The shape a sequence of request events must have, checked event by event."""

    def __init__(self, max_head_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.head: RequestHead | None = None  # the message in progress
        self.last: RequestHead | None = None  # the last complete message
        self.body_bytes = 0
        self.upgraded = False
        self.events: list[Event] = []

    @property
    def between_messages(self) -> bool:
        return self.head is None and not self.upgraded

    def accept(self, events: list[Event]) -> None:
        for event in events:
            assert not self.upgraded, f"{event!r} after Upgrade"
            self.events.append(event)
            if isinstance(event, RequestHead):
                assert self.head is None, "a RequestHead inside another message"
                assert self.last is None or self.last.keep_alive, "a request after close"
                assert self.last is None or self.last.method != "CONNECT", "after CONNECT"
                check_request_head(event, self.max_head_bytes)
                self.head, self.body_bytes = event, 0
            elif isinstance(event, Body):
                assert self.head is not None, "Body before any RequestHead"
                assert event.data, "an empty Body (chunk(b'') would end the body)"
                assert self.head.has_body, f"Body for a head without one: {self.head!r}"
                assert self.head.method != "CONNECT", "Body after a CONNECT head"
                self.body_bytes += len(event.data)
                length = self.head.content_length
                assert length is None or self.body_bytes <= length, "Body past Content-Length"
            elif isinstance(event, EndOfMessage):
                assert self.head is not None, "EndOfMessage before any RequestHead"
                length = self.head.content_length
                if length is not None and self.head.method != "CONNECT":
                    assert self.body_bytes == length, f"{self.body_bytes} of {length} bytes"
                self.last, self.head = self.head, None
            elif isinstance(event, Upgrade):
                assert self.events[-2:-1] == [END], "Upgrade not right after EndOfMessage"
                assert self.last is not None and self.last.method == "CONNECT", "not CONNECT"
                self.upgraded = True
            else:
                raise AssertionError(f"unexpected event {event!r}")
        if self.last is not None and self.last.method == "CONNECT":
            assert self.upgraded, "a CONNECT request did not hand the connection over"


@dataclass
class RequestRun:
    events: list[Event]  # merged, with Upgrade carrying every byte after the CONNECT head
    error: ProtocolError | None
    stream: RequestStream
    parser: RequestParser


def run_requests(pieces: list[bytes], max_head_bytes: int) -> RequestRun:
    """Feed `pieces` to a fresh RequestParser, checking each batch; stop at refusal/Upgrade."""
    parser = RequestParser(max_head_bytes)
    stream = RequestStream(max_head_bytes)
    error = None
    for index, piece in enumerate(pieces):
        try:
            events = parser.feed(piece)
        except ProtocolError as refusal:
            error = refusal
            break
        stream.accept(events)
        if stream.upgraded:
            upgrade = stream.events[-1]
            assert isinstance(upgrade, Upgrade)
            stream.events[-1] = Upgrade(upgrade.leftover + b"".join(pieces[index + 1 :]))
            break
    return RequestRun(merge_bodies(stream.events), error, stream, parser)


def refusal_of(parser: RequestParser | ResponseParser, data: bytes) -> ProtocolError | None:
    """The ProtocolError feeding `data` raises, or None if it is accepted."""
    try:
        parser.feed(data)
    except ProtocolError as error:
        return error
    return None


def http_request_head(data: bytes) -> None:
    if not data:
        return
    control, raw = data[0], data[1:]
    max_head = SMALL_HEAD_BYTES if control & 0x80 else DEFAULT_MAX_HEAD_BYTES
    run = run_requests(cut(raw, control & 0x7F), max_head)

    if run.error is not None:
        assert run.error.status in _REQUEST_STATUSES, f"status {run.error.status}"
        again = refusal_of(run.parser, NEXT_REQUEST)
        assert again is not None, "a feed after a refusal was accepted"
        assert (again.status, again.message) == (run.error.status, run.error.message)
    elif run.stream.upgraded:
        try:
            run.parser.feed(b"tunnel bytes")
        except RuntimeError:
            pass
        else:
            raise AssertionError("feed() after Upgrade did not raise RuntimeError")
    elif run.stream.between_messages and not run.parser.head_in_progress:
        # Nothing of a message is pending: the next request is parsed exactly, or refused
        # (leftover junk such as a partial method), but never read as another request.
        # No method llhttp knows ends in "POST", so a partial method cannot join it.
        try:
            events = run.parser.feed(NEXT_REQUEST)
        except ProtocolError:
            pass
        else:
            run.stream.accept(events)
            assert merge_bodies(events) == NEXT_REQUEST_EVENTS, f"next request read as {events}"

    assert RequestParser(max_head).feed(NEXT_REQUEST) == NEXT_REQUEST_EVENTS

    if control & 0x7F:
        _check_same_as_one_feed(run, run_requests([raw], max_head))


def _check_same_as_one_feed(split: RequestRun, whole: RequestRun) -> None:
    """Cutting the bytes differently changes nothing but which refusal comes first.

    `_bound_quiet_bytes` counts bytes across feeds that yield no event, so many small
    feeds may reach 431 where one large feed yields an event first; and llhttp hands a
    target or field over at the end of each feed, so a split may reach a size limit
    (414, 431) before llhttp reaches a bad byte further on (400), or the other way round.
    """
    if whole.error is None and split.error is None:
        assert split.events == whole.events, f"split {split.events} != whole {whole.events}"
    elif whole.error is None:
        assert split.error is not None and split.error.status == 431, f"split: {split.error}"
        assert is_event_prefix(split.events, whole.events), "split events differ"
    else:
        assert split.error is not None, f"one feed refused ({whole.error}), split accepted"


class ResponseStream:
    """The shape a sequence of response events must have, for the methods expected."""

    def __init__(self, max_head_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.method = "GET"
        self.head: ResponseHead | None = None
        self.body_bytes = 0
        self.done = 0

    def bodiless(self, head: ResponseHead) -> bool:
        return self.method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200

    def accept(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ResponseHead):
                assert self.head is None, "a ResponseHead inside another response"
                assert event.version in ("1.0", "1.1"), f"version {event.version!r}"
                assert 0 <= event.status <= 999, f"status {event.status}"
                chunked, length = check_fields(event.headers)
                assert event.content_length == length, "Content-Length differs"
                assert event.chunked == (chunked and not self.bodiless(event)), "chunked"
                size = len(event.reason) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                assert size <= self.max_head_bytes + len(event.reason), "head over the limit"
                self.head, self.body_bytes = event, 0
            elif isinstance(event, Body):
                assert self.head is not None, "Body before any ResponseHead"
                assert event.data, "an empty Body"
                assert not self.bodiless(self.head), f"Body for {self.method} {self.head}"
                self.body_bytes += len(event.data)
                length = self.head.content_length
                assert length is None or self.body_bytes <= length, "Body past Content-Length"
            elif isinstance(event, EndOfMessage):
                assert self.head is not None, "EndOfMessage before any ResponseHead"
                length = self.head.content_length
                if self.bodiless(self.head):
                    assert self.body_bytes == 0
                elif length is not None:
                    assert self.body_bytes == length, f"{self.body_bytes} of {length} bytes"
                self.head = None
                self.done += 1
            else:
                raise AssertionError(f"unexpected event {event!r}")


_RESPONSE_METHODS = ("GET", "HEAD", "POST", "GET")


def http_response(data: bytes) -> None:
    if not data:
        return
    control, raw = data[0], data[1:]
    max_head = SMALL_HEAD_BYTES if control & 0x80 else DEFAULT_MAX_HEAD_BYTES
    methods = random.Random(control)
    parser = ResponseParser(max_head)
    stream = ResponseStream(max_head)
    stream.method = methods.choice(_RESPONSE_METHODS)
    parser.expect(stream.method)
    error = None
    for piece in cut(raw, control & 0x7F):
        try:
            events = parser.feed(piece)
        except ProtocolError as refusal:
            error = refusal
            break
        stream.accept(events)
        if events and events[-1] == END:
            # As the gateway does: the next response answers the next request.
            stream.method = methods.choice(_RESPONSE_METHODS)
            parser.expect(stream.method)
    if error is not None:
        # 431 is the shared head limit; the gateway answers any upstream refusal with 502.
        assert error.status in _RESPONSE_STATUSES, f"status {error.status}"
        again = refusal_of(parser, NEXT_RESPONSE)
        assert again is not None, "a feed after a refusal was accepted"
        assert again.status in _RESPONSE_STATUSES, f"status {again.status}"
    else:
        stream.accept(parser.feed_eof())

    fresh = ResponseParser(max_head)
    fresh.expect("GET")
    assert fresh.feed(NEXT_RESPONSE) == NEXT_RESPONSE_EVENTS


# SOCKS5 -------------------------------------------------------------------------------

_HOST_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class SocksTranscript:
    events: list[SocksEvent]
    sent: bytes
    tunnel: bytes
    state: State


def check_socks_batch(server: Socks5Server, batch: list[SocksEvent]) -> None:
    requests = [e for e in batch if isinstance(e, AuthRequest | ConnectRequest)]
    closes = [e for e in batch if isinstance(e, Close)]
    assert len(requests) + len(closes) == len(batch), f"undocumented event in {batch}"
    assert len(requests) <= 1 and len(closes) <= 1, f"batch {batch}"
    if closes:
        assert batch[-1] is closes[0], "Close is not the last event"
        assert server.state is State.CLOSED
    elif requests:
        want = State.WAIT_AUTH if isinstance(requests[0], AuthRequest) else State.WAIT_CONNECT
        assert server.state is want, f"{server.state} after {requests[0]}"
    for event in requests:
        if isinstance(event, AuthRequest):
            # Also without require_auth: a client that offers only user/password gets it.
            assert event.username and event.password
        else:
            assert 1 <= event.port <= 65535
            if event.address_type is AddressType.DOMAIN:
                assert _HOST_CHARS.match(event.host), f"host {event.host!r}"


def check_socks_bounds(server: Socks5Server) -> None:
    """After any feed: a message in progress is small, pending bytes are capped."""
    held = len(server._buffer)  # private, but the bound is the point of this check
    bound = _SOCKS_IN_PROGRESS_BYTES.get(server.state, MAX_PENDING_BYTES)
    if server.state is State.CLOSED:
        bound = 0
    assert held <= bound, f"{held} bytes held in {server.state}"


def drive_socks(
    require_auth: bool, pieces: list[bytes], auth_ok: bool, reply_code: int
) -> SocksTranscript:
    """Play the gateway: feed pieces, answer every request at once, collect the outcome."""
    server = Socks5Server(require_auth)
    events: list[SocksEvent] = []
    sent = bytearray()
    tunnel = bytearray()
    authed = False
    for piece in pieces:
        if server.state is State.CLOSED:
            assert server.feed(piece) == [] and not server.data_to_send(), "input after Close"
            break
        if server.state is State.TUNNEL:
            tunnel += piece
            continue
        batch = server.feed(piece)
        check_socks_bounds(server)
        while batch:
            check_socks_batch(server, batch)
            events += batch
            last, batch = batch[-1], []
            if isinstance(last, AuthRequest):
                assert not authed, "a second AuthRequest"
                server.accept_auth(auth_ok)
                authed = auth_ok
                if auth_ok:
                    batch = server.feed(b"")
                    check_socks_bounds(server)
            elif isinstance(last, ConnectRequest):
                assert authed or not require_auth, "ConnectRequest without accepted auth"
                server.reply(reply_code)
                if reply_code == 0:
                    tunnel += server.take_leftover()
        out = server.data_to_send()
        assert len(out) <= _SOCKS_MAX_SENT_PER_FEED, f"{len(out)} bytes owed at once"
        sent += out
    kinds = [type(e) for e in events]
    assert kinds.count(ConnectRequest) <= 1 and kinds.count(Close) <= 1
    return SocksTranscript(events, bytes(sent), bytes(tunnel), server.state)


def socks5(data: bytes) -> None:
    if not data:
        return
    control, raw = data[0], data[1:]
    require_auth, auth_ok = bool(control & 0x01), bool(control & 0x02)
    reply_code = (0, 0, 1, 5)[(control >> 2) & 0x03]
    if control & 0x80:
        # Flood: repeat the input past MAX_PENDING_BYTES, which -max_len never reaches.
        # What gets held before an answer then depends on the cut, so only bounds count.
        flood = raw * (MAX_PENDING_BYTES // max(1, len(raw)) + 2)
        drive_socks(require_auth, cut(flood, control >> 4), auth_ok, reply_code)
        return
    pieces = cut(raw, control >> 4)
    split = drive_socks(require_auth, pieces, auth_ok, reply_code)
    whole = drive_socks(require_auth, [raw], auth_ok, reply_code)
    assert split == whole, f"split {split} != whole {whole}"


# Configuration ------------------------------------------------------------------------


def config_loader(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    try:
        loaded = config.parse(text, CONFIG_SOURCE)
    except config.ConfigError as error:
        assert str(error).startswith(f"{CONFIG_SOURCE}: "), f"message {error}"
        return
    assert isinstance(loaded, config.Config)
    assert loaded.source == CONFIG_SOURCE
    config.redacted(loaded)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "http_request_head": http_request_head,
    "http_response": http_response,
    "socks5": socks5,
    "config_loader": config_loader,
}
