"""What no peer can do to the parsers and the config loader, as Hypothesis properties.

These are the `make fuzz` invariants (the checkers come from fuzz/targets.py) run on
every `make test`: garbage never makes the next request read wrongly, connections never
share state, a valid handshake comes out the same however it is cut, buffers stay
bounded, and a configuration file fails only with `ConfigError`. The single-parser
properties of tests/proto/ (any split of one stream, refusal tables) are not repeated.
"""

from __future__ import annotations

import ipaddress
import string
import typing
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from fuzz.targets import (
    SMALL_HEAD_BYTES,
    RequestStream,
    check_socks_batch,
    check_socks_bounds,
    merge_bodies,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from pydantic import BaseModel

from fixedip import config
from fixedip.proto.http1 import (
    END,
    Body,
    Event,
    ProtocolError,
    RequestHead,
    RequestParser,
    Upgrade,
)
from fixedip.proto.socks5 import (
    AddressType,
    AuthRequest,
    Close,
    ConnectRequest,
    Socks5Server,
    State,
)
from fixedip.proto.socks5 import Event as SocksEvent

PROPERTY = settings(max_examples=100, deadline=None)
STATEFUL = settings(
    max_examples=40,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
REFUSAL_STATUSES = (400, 414, 431)


# Strategies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """Bytes a client sends and the events a parser must yield for them."""

    wire: bytes
    events: list[Event] = field(hash=False)


def pieces_of(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at any set of points, empty pieces included."""
    return st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in pairwise([0, *sorted(cuts), len(data)])]
    )


_header_names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=10)
_header_values = st.text(
    string.ascii_letters + string.digits + " !#$%&'*+-.^_`|~/=;,:", max_size=20
)
_paths = st.text(string.ascii_letters + string.digits + "/-._~?=&%", max_size=20)
# No PATCH: after junk such as "PROP" it would legitimately read as PROPPATCH.
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS"])


@st.composite
def requests(draw: st.DrawFn) -> Exchange:
    """One well-formed, keep-alive request in absolute-form, and its exact events."""
    method = draw(_methods)
    version = draw(st.sampled_from(["1.1", "1.0"]))
    target = f"http://example.com/{draw(_paths)}".encode()
    headers = [(b"Host", b"example.com")]
    if version == "1.0":
        headers.append((b"Connection", b"keep-alive"))
    for name, value in draw(st.lists(st.tuples(_header_names, _header_values), max_size=4)):
        headers.append((b"X-" + name.encode(), value.strip(" ").encode()))
    # HTTP/1.0 with Transfer-Encoding must close after the message (RFC 9112 section 6.1).
    framings = ["none", "length"] if version == "1.0" else ["none", "length", "chunked"]
    framing = draw(st.sampled_from(framings))
    body = b"" if framing == "none" else draw(st.binary(max_size=48))
    payload = b""
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=3))
        for a, b in pairwise([0, *sorted(cuts), len(body)]):
            if a < b:
                payload += b"%x\r\n%s\r\n" % (b - a, body[a:b])
        payload += b"0\r\n\r\n"
    wire = b"%s %s HTTP/%s\r\n" % (method.encode(), target, version.encode())
    wire += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    head = RequestHead(
        method=method,
        target=target,
        version=version,
        headers=headers,
        keep_alive=True,
        chunked=framing == "chunked",
        content_length=len(body) if framing == "length" else None,
    )
    return Exchange(wire + payload, [head, *([Body(body)] if body else []), END])


_HTTP_FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"http://example.com/",
    b"example.com:443",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: example.com\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Connection: close\r\n",
    b"Connection: upgrade\r\nUpgrade: h2c\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"X-A: 1\r\n  folded\r\n",
    b"\x00",
    b"\xff",
    b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"POST http://example.com/ HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nok",
    b"PUT http://example.com/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
]
# Mostly request-shaped noise and whole requests, so examples get past the request line.
junk = st.lists(
    st.one_of(st.sampled_from(_HTTP_FRAGMENTS), st.binary(max_size=8)), max_size=10
).map(b"".join)


def feed_until_refused(
    parser: RequestParser, stream: RequestStream, pieces: list[bytes]
) -> ProtocolError | None:
    """Feed pieces, checking each batch's shape; stop at a refusal or an Upgrade."""
    for piece in pieces:
        if stream.upgraded:
            break
        try:
            events = parser.feed(piece)
        except ProtocolError as error:
            return error
        stream.accept(events)
    return None


# (a) After anything, the next request is read right ------------------------------------


@PROPERTY
@given(garbage=junk, data=st.data(), request=requests())
def test_after_any_bytes_on_one_connection_a_new_connection_reads_its_request_exactly(
    garbage: bytes, data: st.DataObject, request: Exchange
) -> None:
    old = RequestParser(SMALL_HEAD_BYTES)
    feed_until_refused(old, RequestStream(SMALL_HEAD_BYTES), data.draw(pieces_of(garbage)))

    fresh = RequestParser(SMALL_HEAD_BYTES)
    events = [e for piece in data.draw(pieces_of(request.wire)) for e in fresh.feed(piece)]

    assert merge_bodies(events) == request.events


# Whole requests with stray line ends and partial methods between them: inputs that
# often leave the parser between messages, unlike `junk`, which is mostly refused.
between_messages = st.lists(
    st.one_of(
        requests().map(lambda request: request.wire),
        st.sampled_from([b"\r\n", b"\n", b"\r", b"G", b"PO", b"CONNEC", b" "]),
    ),
    max_size=5,
).map(b"".join)


@PROPERTY
@given(garbage=st.one_of(junk, between_messages), data=st.data(), request=requests())
def test_after_garbage_that_left_no_message_open_the_next_request_is_exact_or_refused(
    garbage: bytes, data: st.DataObject, request: Exchange
) -> None:
    parser = RequestParser(SMALL_HEAD_BYTES)
    stream = RequestStream(SMALL_HEAD_BYTES)
    if feed_until_refused(parser, stream, data.draw(pieces_of(garbage))) is not None:
        return
    if not stream.between_messages or parser.head_in_progress:
        return
    seen = len(stream.events)

    if feed_until_refused(parser, stream, data.draw(pieces_of(request.wire))) is None:
        assert merge_bodies(stream.events[seen:]) == request.events


# (b) A request, then garbage: the request comes out exactly --------------------------------


@PROPERTY
@given(sent=st.lists(requests(), min_size=1, max_size=3), garbage=junk, data=st.data())
def test_requests_then_garbage_yield_exactly_those_requests_before_any_refusal(
    sent: list[Exchange], garbage: bytes, data: st.DataObject
) -> None:
    parser = RequestParser(SMALL_HEAD_BYTES)
    stream = RequestStream(SMALL_HEAD_BYTES)
    expected = [event for request in sent for event in request.events]
    wire = b"".join(request.wire for request in sent)

    assert feed_until_refused(parser, stream, data.draw(pieces_of(wire))) is None
    error = feed_until_refused(parser, stream, data.draw(pieces_of(garbage)))

    assert merge_bodies(stream.events)[: len(expected)] == expected
    if error is not None:
        assert error.status in REFUSAL_STATUSES
        with pytest.raises(ProtocolError) as again:
            parser.feed(sent[0].wire)
        assert (again.value.status, again.value.message) == (error.status, error.message)


# (c) Interleaved connections never share state -------------------------------------------


@st.composite
def connections(draw: st.DrawFn) -> tuple[bytes, list[Event]]:
    """A pipelined stream for one connection, maybe ending in CONNECT and tunnel bytes."""
    sent = draw(st.lists(requests(), max_size=3))
    wire = b"".join(request.wire for request in sent)
    events = [event for request in sent for event in request.events]
    if draw(st.booleans()):
        connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        tunnel = draw(st.one_of(st.binary(max_size=16), st.sampled_from(_HTTP_FRAGMENTS)))
        head = RequestHead(
            method="CONNECT",
            target=b"example.com:443",
            version="1.1",
            headers=[(b"Host", b"example.com:443")],
            keep_alive=True,
            chunked=False,
            content_length=None,
        )
        wire += connect + tunnel
        events += [head, END, Upgrade(tunnel)]
    return wire, events


@PROPERTY
@given(streams=st.lists(connections(), min_size=2, max_size=3), hostile=junk, data=st.data())
def test_interleaved_connections_each_yield_only_their_own_requests(
    streams: list[tuple[bytes, list[Event]]], hostile: bytes, data: st.DataObject
) -> None:
    queues = [data.draw(pieces_of(wire)) for wire, _ in streams]
    queues.append(data.draw(pieces_of(hostile)))  # a last connection that sends garbage
    parsers = [RequestParser(SMALL_HEAD_BYTES) for _ in queues]
    received: list[list[Event]] = [[] for _ in queues]
    tunnels = [b"" for _ in queues]
    refused = [False for _ in queues]
    order = data.draw(st.permutations([i for i, queue in enumerate(queues) for _ in queue]))

    for i in order:
        piece = queues[i].pop(0)
        if refused[i]:
            continue
        if parsers[i].upgraded:
            tunnels[i] += piece
            continue
        try:
            received[i] += parsers[i].feed(piece)
        except ProtocolError:
            assert i == len(queues) - 1, "a valid stream was refused"
            refused[i] = True

    for (_, expected), events, tunnel in zip(streams, received, tunnels, strict=False):
        merged = merge_bodies(events)
        if merged and isinstance(merged[-1], Upgrade):
            merged[-1] = Upgrade(merged[-1].leftover + tunnel)
        assert merged == expected


# A connection as a state machine -------------------------------------------------------


class ClientConnection(RuleBasedStateMachine):
    """One client connection sent valid requests, garbage and empty reads in any order.

    A request sent when nothing else is pending comes out exactly; a refusal is final
    and repeats itself; every batch of events has the shape of RequestStream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parser = RequestParser(SMALL_HEAD_BYTES)
        self.stream = RequestStream(SMALL_HEAD_BYTES)
        self.refusal: ProtocolError | None = None
        self.clean = True  # only complete, valid requests were sent so far

    def send(self, pieces: list[bytes]) -> list[Event] | None:
        events: list[Event] = []
        for piece in pieces:
            try:
                batch = self.parser.feed(piece)
            except ProtocolError as error:
                if self.refusal is None:
                    assert error.status in REFUSAL_STATUSES
                    self.refusal = error
                assert (error.status, error.message) == (self.refusal.status, self.refusal.message)
                return None
            assert self.refusal is None, "a feed was accepted after a refusal"
            self.stream.accept(batch)
            events += batch
        return events

    @precondition(lambda self: not self.stream.upgraded)
    @rule(request=requests(), data=st.data())
    def send_request(self, request: Exchange, data: st.DataObject) -> None:
        events = self.send(data.draw(pieces_of(request.wire)))
        if self.clean:
            assert events is not None, "a valid request after valid requests was refused"
            assert merge_bodies(events) == request.events

    @precondition(lambda self: not self.stream.upgraded)
    @rule(garbage=junk, data=st.data())
    def send_garbage(self, garbage: bytes, data: st.DataObject) -> None:
        self.send(data.draw(pieces_of(garbage)))
        self.clean = self.clean and not garbage

    @precondition(lambda self: not self.stream.upgraded)
    @rule()
    def read_nothing(self) -> None:
        events = self.send([b""])
        assert events in (None, [])

    @invariant()
    def no_message_is_open_while_clean(self) -> None:
        if self.clean:
            assert self.stream.between_messages and not self.parser.head_in_progress


ClientConnection.TestCase.settings = STATEFUL
TestClientConnectionInAnyOrderOfRequestsGarbageAndEmptyReads = ClientConnection.TestCase


# (d) SOCKS5: any bytes, any answer timing; a model handshake in any cut --------------------


_SOCKS_FRAGMENTS = [
    b"\x05\x01\x00",
    b"\x05\x01\x02",
    b"\x05\x02\x00\x02",
    b"\x01\x05alice\x06s3cret",
    b"\x05\x01\x00\x01\x7f\x00\x00\x01\x01\xbb",
    b"\x05\x01\x00\x03\x0bexample.com\x00\x50",
    b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x50",
    b"\x05\x02\x00\x01\x7f\x00\x00\x01\x01\xbb",
]
socks_bytes = st.lists(
    st.one_of(st.sampled_from(_SOCKS_FRAGMENTS), st.binary(max_size=10)), max_size=8
).map(b"".join)


@PROPERTY
@given(
    payload=socks_bytes,
    data=st.data(),
    require_auth=st.booleans(),
    auth_ok=st.booleans(),
    reply_code=st.sampled_from([0, 1, 2, 5]),
)
def test_socks5_any_bytes_with_answers_at_any_time_never_raise_and_stay_bounded(
    payload: bytes, data: st.DataObject, require_auth: bool, auth_ok: bool, reply_code: int
) -> None:
    # The gateway may answer an AuthRequest or ConnectRequest only after more reads.
    server = Socks5Server(require_auth)
    pending: SocksEvent | None = None
    reads_before_answer = 0
    events: list[SocksEvent] = []
    for piece in data.draw(pieces_of(payload)):
        if server.state is State.TUNNEL:
            break
        batch = server.feed(piece)
        check_socks_bounds(server)
        check_socks_batch(server, batch)
        events += batch
        if batch and not isinstance(batch[-1], Close):
            assert pending is None, "a second request before the first was answered"
            pending = batch[-1]
            reads_before_answer = data.draw(st.integers(0, 3))
        if pending is not None and reads_before_answer == 0:
            if isinstance(pending, AuthRequest):
                server.accept_auth(auth_ok)
            else:
                server.reply(reply_code)
            pending = None
        reads_before_answer -= 1
        assert len(server.data_to_send()) <= 26  # method choice, auth status, IPv6 reply
    kinds = [type(event) for event in events]
    assert kinds.count(AuthRequest) <= 1 and kinds.count(ConnectRequest) <= 1
    assert kinds.count(Close) <= 1 and (Close not in kinds or kinds[-1] is Close)


@dataclass(frozen=True)
class Handshake:
    require_auth: bool
    wire: bytes
    events: list[SocksEvent] = field(hash=False)
    sent: bytes = b""
    early: bytes = b""


_ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_domains = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=255)
_credentials = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)


@st.composite
def handshakes(draw: st.DrawFn) -> Handshake:
    """A valid greeting, maybe user/password auth, a CONNECT, early data; what must follow."""
    require_auth = draw(st.booleans())
    method = 0x02 if require_auth else 0x00
    others = draw(st.lists(st.integers(3, 0xFE), max_size=4))
    methods = bytes(draw(st.permutations([method, *others])))
    wire = bytes([0x05, len(methods)]) + methods
    sent = bytes([0x05, method])
    events: list[SocksEvent] = []
    if require_auth:
        user, password = draw(_credentials), draw(_credentials)
        raw_user, raw_password = user.encode(), password.encode()
        wire += bytes([0x01, len(raw_user)]) + raw_user + bytes([len(raw_password)])
        wire += raw_password
        sent += b"\x01\x00"
        events.append(AuthRequest(user, password))
    kind = draw(st.sampled_from(AddressType))
    if kind is AddressType.IPV4:
        address = draw(_ipv4)
        host, raw_address = str(address), address.packed
    elif kind is AddressType.IPV6:
        address6 = draw(_ipv6)
        host, raw_address = str(address6), address6.packed
    else:
        host = draw(_domains)
        raw_address = bytes([len(host)]) + host.encode()
    port = draw(st.integers(1, 65535))
    wire += bytes([0x05, 0x01, 0x00, kind]) + raw_address + port.to_bytes(2, "big")
    sent += b"\x05\x00\x00\x01" + bytes(6)
    events.append(ConnectRequest(host, port, kind))
    early = draw(st.binary(max_size=32))
    return Handshake(require_auth, wire + early, events, sent, early)


@PROPERTY
@given(handshake=handshakes(), data=st.data())
def test_socks5_valid_handshake_cut_anywhere_yields_exactly_its_events_and_replies(
    handshake: Handshake, data: st.DataObject
) -> None:
    server = Socks5Server(handshake.require_auth)
    events: list[SocksEvent] = []
    sent = b""
    tunnel = b""
    for piece in data.draw(pieces_of(handshake.wire)):
        if server.state is State.TUNNEL:
            tunnel += piece
            continue
        batch = server.feed(piece)
        while batch:
            events += batch
            if isinstance(batch[-1], AuthRequest):
                server.accept_auth(True)
                batch = server.feed(b"")
            else:
                server.reply(0)
                tunnel += server.take_leftover()
                batch = []
        sent += server.data_to_send()

    assert events == handshake.events
    assert sent == handshake.sent
    assert tunnel == handshake.early
    assert server.state is State.TUNNEL


# (e) Configuration: TOML from the real sections and keys -----------------------------------


def _sections() -> dict[str, tuple[bool, list[str]]]:
    """Section name -> (is an array of tables, its keys), read from the Config model."""
    found: dict[str, tuple[bool, list[str]]] = {}
    for name, info in config.Config.model_fields.items():
        annotation: Any = info.annotation
        many = typing.get_origin(annotation) is list
        model = typing.get_args(annotation)[0] if many else annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            found[name] = (many, list(model.model_fields))
    return found


SECTIONS = _sections()
PLAUSIBLE = [
    "127.0.0.1:3128",
    "[::1]:1080",
    "127.0.0.1:0",
    "",
    "127.0.0.10",
    "::1",
    "203.0.113.7",
    "10.0.0.0/8",
    "10.0.0.1/8",
    "round-robin",
    "failover",
    "debug",
    "-",
    "billing",
    "api.example.com:443",
    "*.example.com:443",
    "[2001:db8::]/32:*",
    "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
]


def toml_string(text: str) -> str:
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c for c in text
    )
    return f'"{escaped}"'


scalars = st.one_of(
    st.sampled_from(PLAUSIBLE).map(toml_string),
    st.text(max_size=12).map(toml_string),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "3", "65535", "65536", "-1", "1e3", "0.5", "inf", "-inf", "nan"]),
    st.sampled_from(
        [
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "07:32:00",
            "0x10",
            "'literal'",
            "[" * 600 + "]" * 600,  # deeper than tomllib can recurse
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(st.sampled_from(["bind", "public", "x"]), inner), max_size=2).map(
            lambda pairs: "{ " + ", ".join(f"{k} = {v}" for k, v in dict(pairs).items()) + " }"
        ),
    ),
    max_leaves=6,
)


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """TOML built from the real sections and keys, with plausible and hostile values."""
    lines: list[str] = []
    if draw(st.booleans()):  # the one required key, so many examples get to validation
        lines += ["[egress]", 'ips = ["127.0.0.10"]']
    names = [*SECTIONS, "nonsense"]
    for section in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        many, keys = SECTIONS.get(section, (False, ["key"]))
        lines.append(f"[[{section}]]" if many else f"[{section}]")
        for key in draw(st.lists(st.sampled_from([*keys, "typo"]), max_size=4, unique=True)):
            lines.append(f"{key} = {draw(values)}")
    text = "\n".join(lines) + "\n"
    if draw(st.booleans()):  # a slip of the keyboard somewhere
        at = draw(st.integers(0, len(text)))
        slip = draw(st.sampled_from(["[", "]", '"', "=", "\n", "{", ",", "\x00", "[" * 600]))
        text = text[:at] + slip + text[at:]
    return text


@settings(max_examples=150, deadline=None)
@given(text=config_texts())
def test_any_config_text_gives_a_config_or_a_config_error_naming_the_file(text: str) -> None:
    try:
        loaded = config.parse(text, "fixedip.toml")
    except config.ConfigError as error:
        assert str(error).startswith("fixedip.toml: ")
        return
    assert loaded.source == "fixedip.toml"
    config.redacted(loaded)
