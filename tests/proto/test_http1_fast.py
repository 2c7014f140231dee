"""The one-pass head parser against llhttp: for any input, the same events and errors.

The fast path only ever *accepts* heads; whatever it declines goes to llhttp. So the
property is simple and strong: a parser with the fast path and one without it, fed the
same bytes in the same pieces, produce the same events and raise the same errors. Every
test runs twice: with the one-pass parser in C and with its Python twin (`heads`).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixedip.proto import http1
from fixedip.proto.http1 import (
    DEFAULT_MAX_HEAD_BYTES,
    END,
    Body,
    Event,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    whole_request,
    whole_response,
)

pytestmark = pytest.mark.usefixtures("heads")

Outcome = tuple[list[object], tuple[int, str] | None]


def _normalise(events: list[Event]) -> list[object]:
    """Bodies may arrive in different pieces: compare their bytes, joined."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], bytes):
            out[-1] += event.data
        elif isinstance(event, Body):
            out.append(bytes(event.data))
        elif isinstance(event, RequestHead | ResponseHead):
            out.append((event, list(event.lnames)))
        else:
            out.append(event)
    return out


def request_outcome(pieces: list[bytes], fast: bool) -> Outcome:
    parser = RequestParser(fast=fast)
    events: list[Event] = []
    try:
        for piece in pieces:
            if parser.upgraded:
                break
            events += parser.feed(piece)
    except ProtocolError as exc:
        return _normalise(events), (exc.status, exc.message)
    return _normalise(events), None


def response_outcome(pieces: list[bytes], method: str, fast: bool) -> Outcome:
    parser = ResponseParser(fast=fast)
    parser.expect(method)
    events: list[Event] = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.feed_eof()
    except ProtocolError as exc:
        return _normalise(events), (exc.status, exc.message)
    return _normalise(events), None


def assert_same_requests(data: bytes, cuts: list[int] | None = None) -> Outcome:
    pieces = _split(data, cuts or [])
    fast = request_outcome(pieces, fast=True)
    assert fast == request_outcome(pieces, fast=False), data
    return fast


def assert_same_responses(data: bytes, method: str = "GET", cuts: list[int] | None = None) -> None:
    pieces = _split(data, cuts or [])
    assert response_outcome(pieces, method, True) == response_outcome(pieces, method, False), data


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a] or [data]


# Every byte in every place the fast path reads --------------------------------------

PLACES = {
    "target": lambda b: b"GET http://a.test/x" + b + b"y HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "authority": lambda b: b"GET http://a" + b + b"b.test/ HTTP/1.1\r\n\r\n",
    "name": lambda b: b"GET / HTTP/1.1\r\nX" + b + b"y: v\r\n\r\n",
    "value": lambda b: b"GET / HTTP/1.1\r\nX: a" + b + b"b\r\n\r\n",
    "value edge": lambda b: b"GET / HTTP/1.1\r\nX:" + b + b"\r\n\r\n",
    "after colon": lambda b: b"GET / HTTP/1.1\r\nX:" + b + b"v\r\n\r\n",
    "method": lambda b: b"GE" + b + b" / HTTP/1.1\r\n\r\n",
    "version": lambda b: b"GET / HTTP/1." + b + b"\r\n\r\n",
    "connection": lambda b: (
        b"GET / HTTP/1.1\r\nConnection: clos" + b + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    ),
    "length": lambda b: b"POST / HTTP/1.1\r\nContent-Length: 1" + b + b"\r\n\r\n" + b"x" * 20,
}


def test_every_byte_anywhere_in_a_request_head_gives_what_llhttp_gives() -> None:
    for place, build in PLACES.items():
        for byte in range(256):
            data = build(bytes([byte]))
            assert_same_requests(data), (place, byte)


def test_every_byte_in_a_status_line_or_response_field_gives_what_llhttp_gives() -> None:
    for byte in range(256):
        b = bytes([byte])
        assert_same_responses(b"HTTP/1.1 200 O" + b + b"K\r\nContent-Length: 2\r\n\r\nok")
        assert_same_responses(b"HTTP/1.1 2" + b + b"0 OK\r\nContent-Length: 2\r\n\r\nok")
        assert_same_responses(b"HTTP/1.1 200 OK\r\nX-" + b + b": v\r\nContent-Length: 0\r\n\r\n")
        assert_same_responses(b"HTTP/1.1 200 OK\r\nX: " + b + b"\r\nContent-Length: 0\r\n\r\n")


def test_a_plain_keep_alive_get_is_parsed_without_llhttp() -> None:
    """The point of the fast path: the common head never reaches llhttp's callbacks."""
    data = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n" * 3
    parser = RequestParser(fast=True)
    assert parser._fast_messages(data) == len(data)
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"
    rparser = ResponseParser(fast=True)
    rparser.expect("GET")
    assert rparser._fast_messages(response) == len(response)


def test_fast_and_llhttp_messages_interleave_on_one_connection() -> None:
    plain = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
    chunked = (
        b"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    sized = b"PUT http://a.test/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    stream = plain + chunked + sized + plain + chunked + plain
    events, error = assert_same_requests(stream)
    assert error is None
    heads = [e[0].method for e in events if isinstance(e, tuple)]
    assert heads == ["GET", "POST", "PUT", "GET", "POST", "GET"]
    for cut in range(1, len(stream)):
        assert_same_requests(stream, [cut])


def test_data_after_a_closing_request_is_refused_as_llhttp_refuses_it() -> None:
    data = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    _, error = assert_same_requests(data)
    assert error is not None and error[0] == 400
    for cut in range(1, len(data)):
        assert_same_requests(data, [cut])


def test_responses_of_every_framing_agree_with_llhttp() -> None:
    cases = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", "POST"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "GET"),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcEXTRA", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\r\n", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut short", "GET"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "GET"),
    ]
    for data, method in cases:
        for cut in range(0, len(data) + 1):
            assert_same_responses(data, method, [cut])


# Generated heads --------------------------------------------------------------------

NAMES = [
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"X-A",
    b"Transfer_Encoding",
    b"host",
    b"Proxy-Authorization",
    b"X B",
    b"",
]
VALUES = [
    b"a.test",
    b"0",
    b"3",
    b"-1",
    b"chunked",
    b"close",
    b"keep-alive",
    b"Keep-Alive, close",
    b"upgrade",
    b" x ",
    b"",
    b"\x01",
    b"\x7f",
    b"\x80",
    b"a\tb",
    b"close,",
    b"keep-alive , x",
]
SEPARATORS = [b": ", b":", b":\t", b" : ", b":  "]
TARGETS = [
    b"http://a.test/",
    b"http://a.test:8080/x?y#z",
    b"/whoami",
    b"http://[::1]:80/",
    b"http://a.test",
    b"http://u@a.test/",
    b"*",
    b"HTTP://A.TEST/",
    b"a.test:443",
]
METHODS = [
    b"GET",
    b"POST",
    b"HEAD",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"FOO",
    b"get",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"RTSP/1.0", b"HTTP/1.1 "]
odd = st.binary(min_size=0, max_size=4)


@st.composite
def fields(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES) | odd)
    value = draw(st.sampled_from(VALUES) | odd)
    end = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r\n "]))
    return name + draw(st.sampled_from(SEPARATORS)) + value + end


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = b" ".join(
        [
            draw(st.sampled_from(METHODS)),
            draw(st.sampled_from(TARGETS) | odd),
            draw(st.sampled_from(VERSIONS)),
        ]
    )
    head = line + b"\r\n" + b"".join(draw(st.lists(fields(), max_size=5))) + b"\r\n"
    return head + draw(st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n"]) | odd)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([b"200", b"204", b"304", b"100", b"101", b"404", b"099"]))
    reason = draw(st.sampled_from([b"OK", b"", b" x", b"a b ", b"\x80"]) | odd)
    version = draw(st.sampled_from(VERSIONS))
    head = version + b" " + status + b" " + reason + b"\r\n"
    head += b"".join(draw(st.lists(fields(), max_size=5))) + b"\r\n"
    return head + draw(st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n"]) | odd)


cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(requests(), min_size=1, max_size=3), cuts=cuts)
def test_any_requests_in_any_pieces_give_what_llhttp_gives(
    stream: list[bytes], cuts: list[int]
) -> None:
    assert_same_requests(b"".join(stream), cuts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(responses(), min_size=1, max_size=3),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    cuts=cuts,
)
def test_any_responses_in_any_pieces_give_what_llhttp_gives(
    stream: list[bytes], method: str, cuts: list[int]
) -> None:
    assert_same_responses(b"".join(stream), method, cuts)


# Whole messages in one buffer (the gateway's keep-alive lane) -------------------------


def whole_outcome(head: RequestHead | ResponseHead, data: bytes, start: int) -> Outcome:
    """What a parser at a message boundary must give for a message whole_* took."""
    body = [bytes(data[start:])] if start < len(data) else []
    return [(head, list(head.lnames)), *body, END], None


def assert_whole_request_agrees(data: bytes) -> bool:
    whole = whole_request(data, DEFAULT_MAX_HEAD_BYTES)
    if whole is None:
        return False
    assert request_outcome([data], fast=False) == whole_outcome(*whole[:1], data, whole[1]), data
    parser = RequestParser()
    parser.feed(data)
    # The lane leaves a keep-alive connection's parser as it found it: at a boundary.
    assert parser.at_boundary == whole[0].keep_alive, data
    return True


def assert_whole_response_agrees(data: bytes) -> bool:
    whole = whole_response(data, DEFAULT_MAX_HEAD_BYTES)
    if whole is None:
        return False
    expected = whole_outcome(*whole[:1], data, whole[1])
    assert response_outcome([data], "GET", fast=False) == expected, data
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(requests(), min_size=1, max_size=2))
def test_a_request_whole_request_takes_is_what_llhttp_parses(stream: list[bytes]) -> None:
    assert_whole_request_agrees(b"".join(stream))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.lists(responses(), min_size=1, max_size=2))
def test_a_response_whole_response_takes_is_what_llhttp_parses(stream: list[bytes]) -> None:
    assert_whole_response_agrees(b"".join(stream))


GET = b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n"
POST = b"POST http://a.test/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"


def test_whole_request_takes_one_plain_request_and_its_whole_body() -> None:
    for data in (GET, POST, GET.replace(b"1.1", b"1.0"), POST.replace(b"POST", b"PUT")):
        assert assert_whole_request_agrees(data), data
    assert whole_request(POST, DEFAULT_MAX_HEAD_BYTES)[1] == len(POST) - 3  # type: ignore[index]


def test_whole_request_leaves_everything_else_to_the_parser() -> None:
    others = {
        "part of a head": GET[:-2],
        "part of a body": POST[:-1],
        "more than its body": POST + b"d",
        "two requests": GET + GET,
        "chunked": GET[:-2] + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "CONNECT": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        "Upgrade": GET[:-2] + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "two Hosts": GET[:-2] + b"Host: b.test\r\n\r\n",
        "over max_head_bytes": GET[:-2] + b"X: " + b"v" * 100 + b"\r\n\r\n",
    }
    for name, data in others.items():
        assert whole_request(data, 120) is None, name


def test_whole_response_takes_one_final_response_framed_by_its_length() -> None:
    no_content = b"HTTP/1.1 204 No Content\r\nX: 1\r\n\r\n"
    for data in (OK, OK.replace(b"1.1", b"1.0"), no_content, no_content.replace(b"204", b"304")):
        assert assert_whole_response_agrees(data), data


def test_whole_response_leaves_everything_else_to_the_parser() -> None:
    others = {
        "part of a body": OK[:-1],
        "more than its body": OK + b"d",
        "two responses": OK + OK,
        "a 204 and more": b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        "interim": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "close-delimited": b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
    }
    for name, data in others.items():
        assert whole_response(data, DEFAULT_MAX_HEAD_BYTES) is None, name


def test_a_whole_message_taken_outside_the_parser_ends_a_quiet_run() -> None:
    """Feeds that yield no event (a lone CRLF between requests) add up to the head
    bound; a request the lane takes whole counts as an event, as a parsed one would."""
    parser = RequestParser(max_head_bytes=8)
    for _ in range(3):
        for _ in range(4):
            assert parser.feed(b"\r\n") == []
        parser.whole_taken()
    parser.feed(b"\r\n" * 4)
    try:
        parser.feed(b"\r\n")
    except ProtocolError as exc:
        assert exc.status == 431
    else:
        raise AssertionError("a quiet run past max_head_bytes was accepted")


def test_a_lone_crlf_after_every_request_never_adds_up_to_a_long_head() -> None:
    """Old clients send CRLF after a request body; llhttp skips it between messages, and
    a long keep-alive connection of such requests must not reach the head bound."""
    parser = RequestParser(max_head_bytes=64)
    request = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
    for _ in range(200):
        assert len(parser.feed(request)) == 2  # the head and its end
        assert parser.feed(b"\r\n") == []


def test_field_lines_are_memoised_by_name_and_never_a_credential() -> None:
    """Repeated lines (Host, User-Agent) are looked up, not parsed again; a line whose
    name may carry a secret is parsed every time and kept nowhere."""
    secrets = [b"c2VjcmV0LXRva2Vu", b"Bearer sk-vendor-key", b"session=abc123", b"k-4242"]
    head = (
        b"GET http://vendor.test/ HTTP/1.1\r\nHost: vendor.test\r\nUser-Agent: fn/1.0\r\n"
        b"Proxy-Authorization: Basic " + secrets[0] + b"\r\n"
        b"Authorization: " + secrets[1] + b"\r\nCookie: " + secrets[2] + b"\r\n"
        b"X-Api-Key: " + secrets[3] + b"\r\n\r\n"
    )
    first = whole_request(head, DEFAULT_MAX_HEAD_BYTES)
    again = whole_request(head, DEFAULT_MAX_HEAD_BYTES)
    assert first is not None and again is not None
    assert first[0].headers == again[0].headers
    assert first[0].get(b"x-api-key") == secrets[3]
    lines, _ = http1.remembered_lines()
    kept = b"\n".join(lines)
    assert b"Host: vendor.test" in lines and b"User-Agent: fn/1.0" in lines
    assert not any(secret in kept for secret in secrets)
    # the memoised parse is the parse: the same field objects come back
    assert first[0].headers[0] is again[0].headers[0]


def test_the_field_line_memo_is_bounded_in_lines_and_in_line_length() -> None:
    for i in range(http1._LINES_MAX + 50):
        request = b"GET http://v.test/ HTTP/1.1\r\nHost: v.test\r\nUser-Agent: fn/%d\r\n\r\n" % i
        taken = whole_request(request, DEFAULT_MAX_HEAD_BYTES)
        assert taken is not None and taken[0].get(b"user-agent") == b"fn/%d" % i
        assert len(http1.remembered_lines()[0]) <= http1._LINES_MAX
    long_agent = b"fn/" + b"x" * 4000
    request = b"GET http://v.test/ HTTP/1.1\r\nUser-Agent: " + long_agent + b"\r\n\r\n"
    taken = whole_request(request, DEFAULT_MAX_HEAD_BYTES)
    assert taken is not None and taken[0].get(b"user-agent") == long_agent
    lines, _ = http1.remembered_lines()
    assert lines and max(len(line) for line in lines) <= http1._LINE_MAX_BYTES
