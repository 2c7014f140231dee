"""HTTP/1.1 framing for the forward proxy: heads, bodies, refusals, targets and output bytes."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixedip.proto.http1 import (
    DEFAULT_MAX_HEAD_BYTES,
    END,
    LAST_CHUNK,
    MAX_HEADERS,
    Body,
    EndOfMessage,
    Event,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    Target,
    Upgrade,
    canonical_host,
    chunk,
    connection_tokens,
    end_to_end,
    parse_absolute_target,
    parse_connect_target,
    serialize_head,
    simple_response,
    status_line,
)

SMALL_HEAD_BYTES = 1024

GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
CHUNKED_POST_HEAD = (
    b"POST http://example.com/upload HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
TLS_CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def get(version: str = "1.1", *extra: bytes) -> bytes:
    """A GET in absolute-form with Host and the given extra header lines."""
    lines = [b"GET http://example.com/ HTTP/" + version.encode(), b"Host: example.com", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(*header_lines: bytes, body: bytes = b"") -> bytes:
    lines = [b"POST http://example.com/ HTTP/1.1", b"Host: example.com", *header_lines]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def response(status_line: bytes, *header_lines: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join([status_line, *header_lines]) + b"\r\n\r\n" + body


def feed_in_pieces(parser: RequestParser | ResponseParser, pieces: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    return events


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def merge_bodies(events: list[Event]) -> list[Event]:
    """Consecutive Body events as one: how the body is cut depends on how bytes arrive."""
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Body) and merged and isinstance(merged[-1], Body):
            merged[-1] = Body(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def body_of(events: list[Event]) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Body))


def request_head(events: list[Event]) -> RequestHead:
    head = events[0]
    assert isinstance(head, RequestHead)
    return head


def response_head(events: list[Event]) -> ResponseHead:
    head = events[0]
    assert isinstance(head, ResponseHead)
    return head


def refusal(data: bytes | list[bytes], parser: RequestParser | None = None) -> ProtocolError:
    """The ProtocolError a request parser raises for `data` (one feed, or pieces)."""
    parser = parser or RequestParser()
    with pytest.raises(ProtocolError) as caught:
        feed_in_pieces(parser, [data] if isinstance(data, bytes) else data)
    return caught.value


def upstream(method: str = "GET") -> ResponseParser:
    parser = ResponseParser()
    parser.expect(method)
    return parser


def upstream_refusal(data: bytes, method: str = "GET") -> ProtocolError:
    parser = upstream(method)
    with pytest.raises(ProtocolError) as caught:
        parser.feed(data)
    return caught.value


# Request heads ------------------------------------------------------------------------


def test_absolute_form_get_yields_its_head_then_end_of_message() -> None:
    events = RequestParser().feed(
        b"GET http://example.com/a/b?c=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
    )

    assert events == [
        RequestHead(
            method="GET",
            target=b"http://example.com/a/b?c=1",
            version="1.1",
            headers=[(b"Host", b"example.com"), (b"Accept", b"*/*")],
            keep_alive=True,
            chunked=False,
            content_length=None,
        ),
        END,
    ]


def test_headers_keep_their_order_case_and_repeats() -> None:
    events = RequestParser().feed(
        get("1.1", b"x-Zeta: 1", b"X-ALPHA: 2", b"x-zeta: 3", b"Cookie: a=1", b"Cookie: b=2")
    )

    assert request_head(events).headers == [
        (b"Host", b"example.com"),
        (b"x-Zeta", b"1"),
        (b"X-ALPHA", b"2"),
        (b"x-zeta", b"3"),
        (b"Cookie", b"a=1"),
        (b"Cookie", b"b=2"),
    ]


def test_head_get_returns_the_first_value_of_a_header_by_lowercase_name() -> None:
    head = request_head(RequestParser().feed(get("1.1", b"X-Tag: first", b"x-tag: second")))

    assert head.get(b"x-tag") == b"first"
    assert head.get(b"x-missing") is None


def test_leading_whitespace_of_a_header_value_is_dropped_and_trailing_is_kept() -> None:
    # llhttp strips OWS before a value but hands trailing OWS over as part of it.
    head = request_head(RequestParser().feed(get("1.1", b"X-Padded:   value  ")))

    assert head.headers[-1] == (b"X-Padded", b"value  ")


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        pytest.param("1.1", None, True, id="1.1-default"),
        pytest.param("1.1", b"close", False, id="1.1-close"),
        pytest.param("1.1", b"Close", False, id="1.1-close-any-case"),
        pytest.param("1.1", b"keep-alive", True, id="1.1-keep-alive"),
        pytest.param("1.1", b"x-custom, close", False, id="1.1-close-in-a-list"),
        pytest.param("1.0", None, False, id="1.0-default"),
        pytest.param("1.0", b"keep-alive", True, id="1.0-keep-alive"),
        pytest.param("1.0", b"Keep-Alive", True, id="1.0-keep-alive-any-case"),
        pytest.param("1.0", b"close", False, id="1.0-close"),
    ],
)
def test_keep_alive_follows_version_and_connection_header(
    version: str, connection: bytes | None, keep_alive: bool
) -> None:
    extra = [b"Connection: " + connection] if connection is not None else []

    head = request_head(RequestParser().feed(get(version, *extra)))

    assert head.version == version
    assert head.keep_alive is keep_alive


def test_origin_form_target_is_passed_through_for_the_caller_to_judge() -> None:
    head = request_head(RequestParser().feed(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n"))

    assert head.target == b"/metrics"


def test_head_in_progress_is_true_only_between_first_byte_and_end_of_head() -> None:
    parser = RequestParser()
    assert not parser.head_in_progress

    parser.feed(b"GET http://example.com/ HT")
    assert parser.head_in_progress

    parser.feed(b"TP/1.1\r\nHost: example.com\r\n")
    assert parser.head_in_progress

    parser.feed(b"\r\n")
    assert not parser.head_in_progress


# Request bodies -----------------------------------------------------------------------


def test_content_length_body_arrives_as_body_events_that_concatenate_to_it() -> None:
    parser = RequestParser()

    events = feed_in_pieces(parser, [post(b"Content-Length: 11", body=b"hel"), b"lo w", b"orld"])

    head = request_head(events)
    assert (head.content_length, head.chunked, head.has_body) == (11, False, True)
    assert body_of(events) == b"hello world"
    assert events[-1] == END
    assert all(isinstance(event, Body) for event in events[1:-1])


def test_content_length_zero_means_no_body() -> None:
    events = RequestParser().feed(post(b"Content-Length: 0"))

    head = request_head(events)
    assert head.content_length == 0
    assert not head.has_body
    assert events == [head, END]


def test_request_without_length_or_chunking_has_no_body() -> None:
    events = RequestParser().feed(GET)

    assert not request_head(events).has_body
    assert events[1:] == [END]


def test_message_ends_exactly_at_content_length_and_the_rest_is_the_next_request() -> None:
    events = RequestParser().feed(post(b"Content-Length: 3", body=b"abc") + GET)

    assert merge_bodies(events)[1:3] == [Body(b"abc"), END]
    assert request_head(events[3:]).method == "GET"


def test_chunked_body_is_decoded_and_chunk_extensions_are_ignored() -> None:
    events = RequestParser().feed(
        CHUNKED_POST_HEAD
        + b"5;name=value\r\nhello\r\n6;flag\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n"
    )

    head = request_head(events)
    assert (head.chunked, head.content_length, head.has_body) == (True, None, True)
    assert body_of(events) == b"hello world0123456789"
    assert events[-1] == END


def test_transfer_encoding_value_is_compared_without_regard_to_case() -> None:
    events = RequestParser().feed(post(b"Transfer-Encoding: Chunked") + b"2\r\nok\r\n0\r\n\r\n")

    assert request_head(events).chunked
    assert body_of(events) == b"ok"


def test_chunked_trailer_fields_are_dropped_and_never_become_headers() -> None:
    events = RequestParser().feed(
        CHUNKED_POST_HEAD + b"2\r\nok\r\n0\r\nX-Checksum: abc\r\nHost: evil.example\r\n\r\n"
    )

    head = request_head(events)
    assert head.headers == [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")]
    assert events == [head, Body(b"ok"), END]


def test_trailer_fields_do_not_leak_into_the_next_request_head() -> None:
    parser = RequestParser()
    parser.feed(CHUNKED_POST_HEAD + b"0\r\nX-Smuggled: 1\r\n\r\n")

    events = parser.feed(GET)

    assert request_head(events).headers == [(b"Host", b"example.com")]


def test_pipelined_requests_in_one_feed_come_out_in_order() -> None:
    stream = (
        b"GET http://example.com/1 HTTP/1.1\r\nHost: example.com\r\n\r\n"
        + post(b"Content-Length: 5", body=b"hello")
        + CHUNKED_POST_HEAD
        + b"3\r\nabc\r\n0\r\n\r\n"
        + b"DELETE http://example.com/3 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )

    events = merge_bodies(RequestParser().feed(stream))

    assert [type(event) for event in events] == [
        RequestHead, EndOfMessage,
        RequestHead, Body, EndOfMessage,
        RequestHead, Body, EndOfMessage,
        RequestHead, EndOfMessage,
    ]  # fmt: skip
    heads = [event for event in events if isinstance(event, RequestHead)]
    assert [(h.method, h.target) for h in heads] == [
        ("GET", b"http://example.com/1"),
        ("POST", b"http://example.com/"),
        ("POST", b"http://example.com/upload"),
        ("DELETE", b"http://example.com/3"),
    ]
    assert [event for event in events if isinstance(event, Body)] == [Body(b"hello"), Body(b"abc")]


@pytest.mark.parametrize(
    "closing",
    [get("1.1", b"Connection: close"), get("1.0")],
    ids=["1.1-connection-close", "1.0-default"],
)
def test_bytes_after_a_request_that_closes_the_connection_are_refused_with_400(
    closing: bytes,
) -> None:
    parser = RequestParser()
    assert parser.feed(closing)[-1] == END

    assert refusal(GET, parser).status == 400


def test_byte_by_byte_feeding_gives_the_same_events_as_one_feed() -> None:
    stream = (
        get("1.1", b"X-A: 1")
        + post(b"Content-Length: 4", body=b"data")
        + CHUNKED_POST_HEAD
        + b"4;e=1\r\nabcd\r\n0\r\nX-T: 1\r\n\r\n"
    )

    whole = RequestParser().feed(stream)
    pieces = feed_in_pieces(RequestParser(), byte_by_byte(stream))

    assert merge_bodies(pieces) == merge_bodies(whole)


@pytest.mark.parametrize(
    "head",
    [post(b"Content-Length: 5"), CHUNKED_POST_HEAD + b"5\r\n"],
    ids=["content-length", "chunked"],
)
def test_an_empty_feed_mid_body_yields_no_empty_body_event(head: bytes) -> None:
    # The gateway frames each Body as a chunk, and chunk(b"") is the last-chunk marker.
    parser = RequestParser()
    parser.feed(head + b"ab")

    assert parser.feed(b"") == []


def test_an_empty_feed_mid_response_body_yields_no_empty_body_event() -> None:
    parser = upstream()
    parser.feed(response(b"HTTP/1.1 200 OK", body=b"close-delimited"))

    assert parser.feed(b"") == []


def test_a_large_chunked_body_in_tiny_pieces_is_not_mistaken_for_a_large_head() -> None:
    body = b"".join(chunk(b"x" * 7) for _ in range(400)) + LAST_CHUNK
    parser = RequestParser(max_head_bytes=SMALL_HEAD_BYTES)

    events = feed_in_pieces(parser, [CHUNKED_POST_HEAD, *byte_by_byte(body)])

    assert body_of(events) == b"x" * 2800
    assert events[-1] == END


def test_a_head_under_the_limit_fed_byte_by_byte_is_accepted() -> None:
    head = get("1.1", b"X-Filler: " + b"f" * 800)
    assert len(head) < SMALL_HEAD_BYTES

    events = feed_in_pieces(RequestParser(max_head_bytes=SMALL_HEAD_BYTES), byte_by_byte(head))

    assert events[-1] == END


# Property: how the bytes are cut never changes what comes out --------------------------

header_names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12).map(
    lambda name: b"X-" + name.encode()
)
header_values = st.text(
    string.ascii_letters + string.digits + " \t!#$%&'*+-.^_`|~/=;,:\"()", max_size=24
).map(lambda value: value.strip(" \t").encode())
paths = st.text(string.ascii_letters + string.digits + "/-._~?=&%", max_size=24)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One well-formed request (bytes) and the body it carries."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]))
    version = draw(st.sampled_from(["1.1", "1.0"]))
    lines = [f"{method} http://example.com/{draw(paths)} HTTP/{version}".encode()]
    lines += [b"Host: example.com"]
    if version == "1.0":
        lines += [b"Connection: keep-alive"]  # else nothing may follow it on the connection
    lines += [n + b": " + v for n, v in draw(st.lists(st.tuples(header_names, header_values)))]
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b"" if framing == "none" else draw(st.binary(max_size=80))
    if framing == "length":
        return b"\r\n".join([*lines, b"Content-Length: %d" % len(body)]) + b"\r\n\r\n" + body, body
    if framing == "none":
        return b"\r\n".join(lines) + b"\r\n\r\n", body
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    encoded = b""
    for piece in filter(None, pieces):
        extension = draw(st.sampled_from([b"", b";ext", b";name=value", b';q="a b"']))
        encoded += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    trailers = b"".join(
        n + b": " + v + b"\r\n"
        for n, v in draw(st.lists(st.tuples(header_names, header_values), max_size=2))
    )
    head = b"\r\n".join([*lines, b"Transfer-Encoding: chunked"]) + b"\r\n\r\n"
    return head + encoded + b"0\r\n" + trailers + b"\r\n", body


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """`data` cut at any set of points (empty pieces included)."""
    return st.lists(st.integers(0, len(data)), max_size=16).map(
        lambda cuts: [
            data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)
        ]
    )


@given(requests=st.lists(valid_requests(), min_size=1, max_size=4), data=st.data())
def test_any_split_of_a_pipelined_stream_gives_the_same_events(
    requests: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(wire for wire, _ in requests)

    whole = merge_bodies(RequestParser().feed(stream))
    split = merge_bodies(feed_in_pieces(RequestParser(), data.draw(splits(stream))))

    assert split == whole
    heads = [event for event in whole if isinstance(event, RequestHead)]
    assert len(heads) == len(requests) == whole.count(END)
    assert [e.data for e in whole if isinstance(e, Body)] == [b for _, b in requests if b]


# CONNECT and protocol switches ----------------------------------------------------------


def test_connect_yields_head_end_and_upgrade_carrying_the_exact_leftover_bytes() -> None:
    events = RequestParser().feed(CONNECT + TLS_CLIENT_HELLO_START)

    assert events == [
        RequestHead(
            method="CONNECT",
            target=b"example.com:443",
            version="1.1",
            headers=[(b"Host", b"example.com:443")],
            keep_alive=True,
            chunked=False,
            content_length=None,
        ),
        END,
        Upgrade(TLS_CLIENT_HELLO_START),
    ]


def test_connect_without_early_bytes_upgrades_with_empty_leftover() -> None:
    assert RequestParser().feed(CONNECT)[-1] == Upgrade(b"")


def test_connect_head_split_across_feeds_upgrades_with_only_the_bytes_after_it() -> None:
    parser = RequestParser()

    first = parser.feed(CONNECT[:20])
    rest = parser.feed(CONNECT[20:] + b"tunnel")

    assert first == []
    assert rest[-1] == Upgrade(b"tunnel")


def test_connect_leftover_that_looks_like_http_stays_raw_tunnel_bytes() -> None:
    events = RequestParser().feed(CONNECT + GET)

    assert events[1:] == [END, Upgrade(GET)]


def test_bytes_after_connect_go_to_the_tunnel_even_with_a_content_length() -> None:
    events = RequestParser().feed(
        b"CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcdef"
    )

    assert [e for e in events if isinstance(e, Body)] == []
    assert events[-1] == Upgrade(b"abcdef")


def test_feeding_after_upgrade_raises_runtime_error() -> None:
    parser = RequestParser()
    parser.feed(CONNECT)

    with pytest.raises(RuntimeError, match="tunnel"):
        parser.feed(b"more")


UPGRADE_H2C = get(
    "1.1", b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABk"
)


def test_request_asking_to_switch_protocols_is_an_ordinary_request() -> None:
    # Upgrade is hop-by-hop and never forwarded: only CONNECT hands the connection over.
    events = RequestParser().feed(UPGRADE_H2C)

    assert [type(event) for event in events] == [RequestHead, EndOfMessage]


def test_request_after_one_asking_to_switch_protocols_is_parsed_as_http() -> None:
    parser = RequestParser()

    same_feed = parser.feed(UPGRADE_H2C + GET)
    later_feed = parser.feed(GET)

    assert [type(event) for event in same_feed] == [RequestHead, EndOfMessage] * 2
    assert [type(event) for event in later_feed] == [RequestHead, EndOfMessage]


def test_many_pipelined_protocol_switch_requests_in_one_feed_are_all_parsed() -> None:
    events = RequestParser().feed(UPGRADE_H2C * 3000)

    assert events.count(END) == 3000


@pytest.mark.parametrize(
    "framing",
    [b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
    ids=["content-length", "chunked"],
)
def test_request_asking_to_switch_protocols_with_a_body_is_refused_with_400(
    framing: bytes,
) -> None:
    # llhttp skips such a body: accepting it would forward a length the upstream never gets.
    data = b"POST http://example.com/ HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n" + framing

    assert refusal(data).status == 400


def test_request_asking_to_switch_protocols_with_content_length_zero_is_accepted() -> None:
    events = RequestParser().feed(
        post(b"Connection: upgrade", b"Upgrade: websocket", b"Content-Length: 0") + GET
    )

    assert events.count(END) == 2


# Request refusals ----------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param(post(b"Content-Length: 3", b"Transfer-Encoding: chunked"), id="cl-and-te"),
    pytest.param(post(b"Transfer-Encoding: chunked", b"Content-Length: 3"), id="te-and-cl"),
    pytest.param(post(b"Content-Length: 3", b"Content-Length: 3", body=b"abc"), id="cl-twice"),
    pytest.param(post(b"Content-Length: 3", b"Content-Length: 4", body=b"abcd"), id="cl-differ"),
    pytest.param(post(b"Content-Length: 3, 3", body=b"abc"), id="cl-list"),
    pytest.param(post(b"Content-Length: -3"), id="cl-negative"),
    pytest.param(post(b"Content-Length: +3", body=b"abc"), id="cl-plus-sign"),
    pytest.param(post(b"Content-Length: abc"), id="cl-word"),
    pytest.param(post(b"Content-Length: 0x3", body=b"abc"), id="cl-hex"),
    pytest.param(post(b"Content-Length: 3 ", body=b"abc"), id="cl-trailing-space"),
    pytest.param(post(b"Content-Length: "), id="cl-empty"),
    pytest.param(post(b"Content-Length: 9999999999999999999"), id="cl-19-digits"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET http://a/ HTTP/1.1\nHost: a\n\n", id="bare-lf"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", id="bare-lf-in-head"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\n", id="bare-lf-ending-head"),
    pytest.param(b"GET http://a/ HTTP/1.1\rHost: a\r\r", id="bare-cr"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nHost\t: a\r\n\r\n", id="tab-before-colon"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\n: a\r\n\r\n", id="empty-name"),
    pytest.param(b"GET http://a/ HTTP/1.1\r\nX(y: a\r\n\r\n", id="name-not-a-token"),
    pytest.param(get("1.1", b"X-A: a\x00b"), id="nul-in-value"),
    pytest.param(get("1.1", b"X-A: a\x01b"), id="ctl-in-value"),
    pytest.param(get("1.1", b"X-A: a\x1bb"), id="esc-in-value"),
    pytest.param(get("1.1", b"X-A: a\x7fb"), id="del-in-value"),
    pytest.param(get("1.1", b"X-A: a\rb"), id="cr-in-value"),
    pytest.param(get("1.1", b"Host: other.example"), id="host-twice"),
    pytest.param(get("1.1", b"hOST: example.com"), id="host-twice-any-case"),
    pytest.param(b"GET /\r\n\r\n", id="http-0.9-request-line"),
    pytest.param(b"GET http://a/ HTTP/0.9\r\nHost: a\r\n\r\n", id="http-0.9-version"),
    pytest.param(b"GET http://a/ HTTP/2.0\r\nHost: a\r\n\r\n", id="http-2.0-version"),
    pytest.param(b"GET http://a/ HTTP/1.2\r\nHost: a\r\n\r\n", id="http-1.2-version"),
    pytest.param(b"GET http://a/ http/1.1\r\nHost: a\r\n\r\n", id="lowercase-protocol"),
    pytest.param(b"get http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="lowercase-method"),
    pytest.param(b"GET http://a/ b HTTP/1.1\r\nHost: a\r\n\r\n", id="space-in-target"),
    pytest.param(b"GET http://a/\xff HTTP/1.1\r\nHost: a\r\n\r\n", id="high-byte-in-target"),
    pytest.param(CHUNKED_POST_HEAD + b"FFFFFFFFFFFFFFFFF\r\n", id="chunk-size-overflow"),
    pytest.param(CHUNKED_POST_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", id="chunk-size-0x"),
    pytest.param(CHUNKED_POST_HEAD + b"-1\r\n", id="chunk-size-negative"),
    pytest.param(CHUNKED_POST_HEAD + b" 5\r\nhello\r\n0\r\n\r\n", id="chunk-size-leading-space"),
    pytest.param(CHUNKED_POST_HEAD + b"5 ;a=b\r\nhello\r\n0\r\n\r\n", id="chunk-size-then-space"),
    pytest.param(CHUNKED_POST_HEAD + b"5\nhello\r\n0\r\n\r\n", id="chunk-size-bare-lf"),
    pytest.param(CHUNKED_POST_HEAD + b"5\r\nhelloX0\r\n\r\n", id="chunk-data-overruns"),
]


@pytest.mark.parametrize("data", BAD_REQUESTS)
def test_malformed_or_ambiguous_request_is_refused_with_400(data: bytes) -> None:
    assert refusal(data).status == 400


@pytest.mark.parametrize("data", BAD_REQUESTS)
def test_malformed_request_is_refused_the_same_when_fed_byte_by_byte(data: bytes) -> None:
    assert refusal(byte_by_byte(data)).status == 400


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"chunked, identity", id="chunked-identity"),
        pytest.param(b"identity", id="identity"),
        pytest.param(b"gzip, chunked", id="gzip-chunked"),
        pytest.param(b"chunked,chunked", id="chunked-listed-twice"),
        pytest.param(b"xchunked", id="xchunked"),
        pytest.param(b"chunkedx", id="chunkedx"),
        pytest.param(b"chunked ", id="trailing-space"),
        pytest.param(b"chunked\t", id="trailing-tab"),
        pytest.param(b"", id="empty"),
    ],
)
def test_transfer_encoding_other_than_exactly_chunked_is_refused_with_400(value: bytes) -> None:
    error = refusal(post(b"Transfer-Encoding: " + value) + b"0\r\n\r\n")

    assert error.status == 400
    assert "Transfer-Encoding" in error.message


def test_transfer_encoding_with_trailing_space_is_refused_not_trimmed_to_chunked() -> None:
    # llhttp keeps trailing OWS in the value (and would itself frame "chunked " as chunked):
    # the refusal comes from our strict comparison, with a message saying what is wrong.
    error = refusal(post(b"Transfer-Encoding: chunked ") + b"0\r\n\r\n")

    assert (error.status, error.message) == (400, "Transfer-Encoding must be exactly one 'chunked'")


def test_transfer_encoding_twice_is_refused_with_400() -> None:
    data = post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"

    assert refusal(data).status == 400


def test_transfer_encoding_with_leading_space_is_plain_chunked() -> None:
    # Leading OWS is not part of a field value (RFC 9110 section 5.5).
    head = request_head(RequestParser().feed(post(b"Transfer-Encoding:   chunked") + LAST_CHUNK))

    assert head.chunked


def test_head_over_max_head_bytes_is_refused_with_431() -> None:
    data = get("1.1", b"X-Big: " + b"b" * SMALL_HEAD_BYTES)

    assert refusal(data, RequestParser(max_head_bytes=SMALL_HEAD_BYTES)).status == 431


def test_many_headers_that_together_pass_max_head_bytes_are_refused_with_431() -> None:
    data = get("1.1", *[b"X-H%d: %s" % (i, b"v" * 40) for i in range(30)])

    assert refusal(data, RequestParser(max_head_bytes=SMALL_HEAD_BYTES)).status == 431


def test_header_value_that_never_ends_is_refused_with_431_once_past_max_head_bytes() -> None:
    # httptools buffers a field until its line ends; the parser must not buffer forever.
    parser = RequestParser(max_head_bytes=SMALL_HEAD_BYTES)
    parser.feed(b"GET http://example.com/ HTTP/1.1\r\nX-Endless: ")

    with pytest.raises(ProtocolError) as caught:
        for _ in range(10):
            parser.feed(b"e" * 300)

    assert caught.value.status == 431


def test_header_name_that_never_ends_is_refused_with_431_once_past_max_head_bytes() -> None:
    parser = RequestParser(max_head_bytes=SMALL_HEAD_BYTES)
    parser.feed(b"GET http://example.com/ HTTP/1.1\r\nX-")

    with pytest.raises(ProtocolError) as caught:
        for _ in range(10):
            parser.feed(b"n" * 300)

    assert caught.value.status == 431


def test_trailer_that_never_ends_is_refused_with_431_once_past_max_head_bytes() -> None:
    parser = RequestParser(max_head_bytes=SMALL_HEAD_BYTES)
    parser.feed(CHUNKED_POST_HEAD + b"2\r\nok\r\n0\r\nX-Trailer: ")

    with pytest.raises(ProtocolError) as caught:
        for _ in range(10):
            parser.feed(b"t" * 300)

    assert caught.value.status == 431


def test_exactly_max_headers_headers_are_accepted() -> None:
    data = get("1.1", *[b"X-H%d: 1" % i for i in range(MAX_HEADERS - 1)])

    assert len(request_head(RequestParser().feed(data)).headers) == MAX_HEADERS


def test_more_than_max_headers_headers_are_refused_with_431() -> None:
    data = get("1.1", *[b"X-H%d: 1" % i for i in range(MAX_HEADERS)])

    assert refusal(data).status == 431


def test_huge_target_is_refused_with_414() -> None:
    data = b"GET http://example.com/" + b"p" * DEFAULT_MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n"

    assert refusal(data).status == 414


def test_huge_target_is_refused_with_414_before_the_request_line_ends() -> None:
    parser = RequestParser(max_head_bytes=SMALL_HEAD_BYTES)

    assert refusal([b"GET http://example.com/", b"p" * SMALL_HEAD_BYTES], parser).status == 414


@pytest.mark.parametrize(
    ("data", "max_head_bytes"),
    [
        pytest.param(post(b"Transfer-Encoding: xchunked"), DEFAULT_MAX_HEAD_BYTES, id="framing"),
        pytest.param(post(b"Content-Length: 1", b"Content-Length: 1"), DEFAULT_MAX_HEAD_BYTES,
                     id="llhttp"),
        pytest.param(get("1.1", b"Host: b"), DEFAULT_MAX_HEAD_BYTES, id="host-twice"),
        pytest.param(b"GET http://a/ HTTP/2.0\r\n\r\n", DEFAULT_MAX_HEAD_BYTES, id="version"),
        pytest.param(get("1.1", b"X: " + b"x" * 2048), SMALL_HEAD_BYTES, id="431"),
        pytest.param(b"GET http://a/" + b"p" * 2048, SMALL_HEAD_BYTES, id="414"),
    ],
)  # fmt: skip
def test_after_a_refusal_feed_keeps_raising_the_same_error(
    data: bytes, max_head_bytes: int
) -> None:
    parser = RequestParser(max_head_bytes)
    first = refusal(data, parser)

    again = refusal(GET, parser)

    assert (again.status, again.message) == (first.status, first.message)


def test_refusal_message_names_the_framing_problem() -> None:
    error = refusal(post(b"Transfer-Encoding: xchunked") + LAST_CHUNK)

    assert error.message == "Transfer-Encoding must be exactly one 'chunked'"


# Responses ---------------------------------------------------------------------------


def test_response_with_content_length_yields_head_body_and_end() -> None:
    events = upstream().feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 5", body=b"hello"))

    assert events == [
        ResponseHead(
            status=200,
            reason=b"OK",
            version="1.1",
            headers=[(b"Content-Length", b"5")],
            keep_alive=True,
            chunked=False,
            content_length=5,
        ),
        Body(b"hello"),
        END,
    ]


def test_chunked_response_body_is_decoded_and_its_trailers_dropped() -> None:
    events = upstream().feed(
        response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
        + b"5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )

    head = response_head(events)
    assert head.chunked
    assert head.headers == [(b"Transfer-Encoding", b"chunked")]
    assert merge_bodies(events[1:]) == [Body(b"hello!"), END]


def test_close_delimited_body_ends_when_the_upstream_closes() -> None:
    parser = upstream()

    events = parser.feed(response(b"HTTP/1.1 200 OK", body=b"part one, "))
    events += parser.feed(b"part two")
    assert END not in events

    assert parser.feed_eof() == [END]
    assert body_of(events) == b"part one, part two"


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_close_delimited_response_is_never_keep_alive(version: str) -> None:
    parser = upstream()

    head = response_head(
        parser.feed(b"HTTP/%s 200 OK\r\nConnection: keep-alive\r\n\r\n" % version.encode())
    )

    assert parser.close_delimited
    assert not head.keep_alive


def test_response_cut_short_gets_no_end_of_message_at_eof() -> None:
    parser = upstream()
    parser.feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 10", body=b"short"))

    assert parser.feed_eof() == []


@pytest.mark.parametrize(
    ("status_line", "headers", "keep_alive"),
    [
        pytest.param(b"HTTP/1.1 200 OK", [], True, id="1.1"),
        pytest.param(b"HTTP/1.1 200 OK", [b"Connection: close"], False, id="1.1-close"),
        pytest.param(b"HTTP/1.0 200 OK", [], False, id="1.0"),
        pytest.param(b"HTTP/1.0 200 OK", [b"Connection: keep-alive"], True, id="1.0-keep-alive"),
    ],
)
def test_response_keep_alive_follows_version_and_connection_header(
    status_line: bytes, headers: list[bytes], keep_alive: bool
) -> None:
    events = upstream().feed(response(status_line, b"Content-Length: 0", *headers))

    assert response_head(events).keep_alive is keep_alive


def test_response_to_head_with_content_length_ends_without_a_body() -> None:
    events = upstream("HEAD").feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 5"))

    head = response_head(events)
    assert head.content_length == 5
    assert events == [head, END]


def test_response_to_head_announcing_chunked_is_not_chunked() -> None:
    events = upstream("HEAD").feed(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"))

    assert not response_head(events).chunked
    assert events[1:] == [END]


def test_response_after_a_head_response_parses_on_the_same_parser() -> None:
    parser = upstream("HEAD")
    parser.feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 5"))
    parser.expect("GET")

    events = parser.feed(response(b"HTTP/1.1 201 Created", b"Content-Length: 2", body=b"hi"))

    assert response_head(events).status == 201
    assert events[1:] == [Body(b"hi"), END]


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_ends_at_its_head_even_with_a_content_length(status: int) -> None:
    events = upstream().feed(response(b"HTTP/1.1 %d X" % status, b"Content-Length: 3"))

    assert events == [response_head(events), END]
    assert not upstream().close_delimited


@pytest.mark.parametrize("status", [204, 304])
def test_response_after_a_bodiless_status_is_the_next_response(status: int) -> None:
    stream = response(b"HTTP/1.1 %d X" % status) + response(
        b"HTTP/1.1 200 OK", b"Content-Length: 1", body=b"x"
    )

    events = upstream().feed(stream)

    assert [type(e) for e in events] == [
        ResponseHead,
        EndOfMessage,
        ResponseHead,
        Body,
        EndOfMessage,
    ]


def test_interim_100_continue_comes_before_the_final_response() -> None:
    events = upstream().feed(
        response(b"HTTP/1.1 100 Continue")
        + response(b"HTTP/1.1 200 OK", b"Content-Length: 2", body=b"ok")
    )

    assert [e.status for e in events if isinstance(e, ResponseHead)] == [100, 200]
    assert events[1] == END
    assert events[3:] == [Body(b"ok"), END]


def test_interim_response_arriving_alone_then_final_response() -> None:
    parser = upstream()

    interim = parser.feed(response(b"HTTP/1.1 100 Continue"))
    final = parser.feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 0"))

    assert response_head(interim).status == 100
    assert response_head(final).status == 200
    assert final[1:] == [END]


def test_interim_response_to_head_does_not_end_the_exchange() -> None:
    events = upstream("HEAD").feed(
        response(b"HTTP/1.1 100 Continue") + response(b"HTTP/1.1 200 OK", b"Content-Length: 2")
    )

    assert [type(e) for e in events] == [ResponseHead, EndOfMessage, ResponseHead, EndOfMessage]


def test_missing_reason_phrase_is_empty() -> None:
    assert (
        response_head(upstream().feed(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n")).reason == b""
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="word-status"),
        pytest.param(b"HTTP/1.1 20 OK\r\n\r\n", id="two-digit-status"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="four-digit-status"),
        pytest.param(b"HTTX/1.1 200 OK\r\n\r\n", id="wrong-protocol"),
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/2.0 200 OK\r\n\r\n", id="http-2.0"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        pytest.param(
            response(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Transfer-Encoding: chunked"),
            id="cl-and-te",
        ),
        pytest.param(
            response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: xchunked"), id="te-xchunked"
        ),
        pytest.param(
            response(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Content-Length: 2"), id="cl-twice"
        ),
        pytest.param(
            response(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade", b"Upgrade: x"),
            id="switching-protocols",
        ),
    ],
)
def test_malformed_upstream_response_is_refused_with_502(data: bytes) -> None:
    assert upstream_refusal(data).status == 502


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 abc OK\r\n\r\n", id="status-line"),
        pytest.param(response(b"HTTP/1.1 200 OK", b"Transfer-Encoding: xchunked"), id="framing"),
        pytest.param(
            response(b"HTTP/1.1 101 Switching Protocols", b"Connection: upgrade", b"Upgrade: x"),
            id="switching-protocols",
        ),
    ],
)
def test_after_a_bad_upstream_response_feed_keeps_raising(data: bytes) -> None:
    parser = upstream()
    with pytest.raises(ProtocolError):
        parser.feed(data)

    with pytest.raises(ProtocolError) as caught:
        parser.feed(response(b"HTTP/1.1 200 OK", b"Content-Length: 0"))

    assert caught.value.status == 502


def test_upstream_header_that_never_ends_is_refused() -> None:
    parser = ResponseParser(max_head_bytes=SMALL_HEAD_BYTES)
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nX-Endless: ")

    with pytest.raises(ProtocolError):
        for _ in range(10):
            parser.feed(b"e" * 300)


def test_upstream_reason_phrase_that_never_ends_is_refused() -> None:
    parser = ResponseParser(max_head_bytes=SMALL_HEAD_BYTES)
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 ")

    with pytest.raises(ProtocolError):
        for _ in range(10):
            parser.feed(b"r" * 300)


# Request targets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("API.Example.com.", "api.example.com"),
        ("localhost", "localhost"),
        ("under_score.example", "under_score.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("12.example", "12.example"),
        ("0x7f.example", "0x7f.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_canonical_host_of_a_name_is_lowercase_without_trailing_dot(raw: str, host: str) -> None:
    assert canonical_host(raw) == (host, False)


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("93.184.216.34", "93.184.216.34"),
        ("127.0.0.1.", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ],
)
def test_canonical_host_turns_every_ipv4_spelling_into_a_dotted_quad(
    raw: str, address: str
) -> None:
    assert canonical_host(raw) == (address, True)


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("[::1]", "::1"),
        ("[2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ],
)
def test_canonical_host_of_bracketed_ipv6_is_compressed_lowercase_text(
    raw: str, address: str
) -> None:
    assert canonical_host(raw) == (address, True)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[fe80::1%eth0]", id="zone"),
        pytest.param("[fe80::1%25eth0]", id="zone-percent-encoded"),
        pytest.param("::1", id="ipv6-without-brackets"),
        pytest.param("[::1", id="unclosed-bracket"),
        pytest.param("[example.com]", id="name-in-brackets"),
        pytest.param("[1.2.3.4]", id="ipv4-in-brackets"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("-a.com", id="leading-hyphen"),
        pytest.param("a-.com", id="trailing-hyphen"),
        pytest.param("exa mple.com", id="space"),
        pytest.param("exa\tmple.com", id="tab"),
        pytest.param("exämple.com", id="non-ascii"),
        pytest.param("%31", id="percent-encoded"),
        pytest.param("example.com:80", id="port"),
        pytest.param("user@example.com", id="userinfo"),
        pytest.param("", id="empty"),
        pytest.param(".", id="dot"),
        pytest.param("example.com..", id="two-trailing-dots"),
        pytest.param("a" * 64 + ".com", id="label-over-63"),
        pytest.param(".".join(["a" * 60] * 5), id="name-over-253"),
        pytest.param("256.0.0.1", id="octet-over-255"),
        pytest.param("1.2.3.4.5", id="five-parts"),
        pytest.param("4294967296", id="integer-over-32-bits"),
        pytest.param("0x100000000", id="hex-over-32-bits"),
        pytest.param("08.1.1.1", id="bad-octal"),
    ],
)
def test_canonical_host_refuses_what_is_not_a_name_or_address(raw: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        canonical_host(raw)

    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        (b"http://example.com", Target("example.com", 80, b"/", False)),
        (b"http://example.com/", Target("example.com", 80, b"/", False)),
        (b"http://Example.COM:8080/a/b", Target("example.com", 8080, b"/a/b", False)),
        (b"http://example.com/p?q=1&r=2", Target("example.com", 80, b"/p?q=1&r=2", False)),
        (b"http://example.com?q", Target("example.com", 80, b"/?q", False)),
        (b"http://example.com/p?q#frag", Target("example.com", 80, b"/p?q", False)),
        (b"http://example.com#frag", Target("example.com", 80, b"/", False)),
        (b"http://example.com/p#a?b", Target("example.com", 80, b"/p", False)),
        (b"http://example.com/a@b", Target("example.com", 80, b"/a@b", False)),
        (b"http://example.com:/", Target("example.com", 80, b"/", False)),
        (b"HTTP://example.com/", Target("example.com", 80, b"/", False)),
        (b"http://[2001:db8::1]:81/p", Target("2001:db8::1", 81, b"/p", True)),
        (b"http://2130706433/", Target("127.0.0.1", 80, b"/", True)),
    ],
)
def test_parse_absolute_target(raw: bytes, target: Target) -> None:
    assert parse_absolute_target(raw) == target


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"http://user:secret@example.com/", id="user-and-password"),
        pytest.param(b"http://user@example.com/", id="user"),
        pytest.param(b"http://@example.com/", id="empty-userinfo"),
    ],
)
def test_absolute_target_with_userinfo_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_absolute_target(raw)

    assert caught.value.status == 400


@pytest.mark.parametrize("raw", [b"https://example.com/", b"HTTPS://example.com:8443/p"])
def test_https_absolute_target_is_refused_with_a_pointer_to_connect(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_absolute_target(raw)

    assert caught.value.status == 400
    assert "CONNECT" in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"ftp://example.com/",
        b"ws://example.com/",
        b"file:///etc/passwd",
        b"/relative/path",
        b"example.com:80",
        b"http:/example.com/",
        b"*",
    ],
)
def test_absolute_target_with_another_scheme_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_absolute_target(raw)

    assert caught.value.status == 400
    assert "http://" in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"http://", id="empty"),
        pytest.param(b"http:///path", id="no-host"),
        pytest.param(b"http://ex%61mple.com/", id="percent-encoded-host"),
        pytest.param(b"http://example.com:0/", id="port-0"),
        pytest.param(b"http://example.com:65536/", id="port-65536"),
        pytest.param(b"http://example.com:http/", id="port-name"),
        pytest.param(b"http://::1/", id="ipv6-without-brackets"),
        pytest.param(b"http://[fe80::1%25eth0]/", id="ipv6-zone"),
        pytest.param(b"http://\xc3\xa9.example/", id="non-ascii"),
    ],
)
def test_absolute_target_with_a_bad_authority_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_absolute_target(raw)

    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("raw", "target"),
    [
        (b"example.com:443", Target("example.com", 443, b"", False)),
        (b"EXAMPLE.com.:8443", Target("example.com", 8443, b"", False)),
        (b"example.com:1", Target("example.com", 1, b"", False)),
        (b"example.com:65535", Target("example.com", 65535, b"", False)),
        (b"93.184.216.34:443", Target("93.184.216.34", 443, b"", True)),
        (b"0x7f.1:22", Target("127.0.0.1", 22, b"", True)),
        (b"[::1]:443", Target("::1", 443, b"", True)),
        (b"[2001:DB8::1]:8443", Target("2001:db8::1", 8443, b"", True)),
    ],
)
def test_parse_connect_target(raw: bytes, target: Target) -> None:
    assert parse_connect_target(raw) == target


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"example.com", id="name"),
        pytest.param(b"example.com:", id="empty-port"),
        pytest.param(b"[::1]", id="ipv6"),
        pytest.param(b"93.184.216.34", id="ipv4"),
    ],
)
def test_connect_target_without_a_port_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError, match="port missing") as caught:
        parse_connect_target(raw)

    assert caught.value.status == 400


@pytest.mark.parametrize(
    "port", [b"0", b"65536", b"99999", b"abc", b"+443", b"-1", b" 443", b"000443", b"4 43"]
)
def test_connect_target_with_a_bad_port_is_refused(port: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_connect_target(b"example.com:" + port)

    assert caught.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"::1:443", id="ipv6-without-brackets"),
        pytest.param(b"[::1]x443", id="junk-after-bracket"),
        pytest.param(b"[fe80::1%25eth0]:443", id="ipv6-zone"),
        pytest.param(b"user@example.com:443", id="userinfo"),
        pytest.param(b"example.com:443/", id="path"),
        pytest.param(b"\xc3\xa9.example:443", id="non-ascii"),
        pytest.param(b":443", id="no-host"),
        pytest.param(b"", id="empty"),
    ],
)
def test_connect_target_with_a_bad_authority_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_connect_target(raw)

    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        (Target("example.com", 443, b"", False), "example.com:443"),
        (Target("2001:db8::1", 8443, b"", True), "[2001:db8::1]:8443"),
    ],
)
def test_target_authority_brackets_ipv6(target: Target, authority: str) -> None:
    assert target.authority == authority


# Hop-by-hop headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Authorization",
        b"Proxy-Authenticate",
        b"Proxy-Connection",
        b"TE",
        b"Trailer",
        b"Upgrade",
        b"Transfer-Encoding",
        b"Content-Length",
        b"PROXY-AUTHORIZATION",
        b"content-length",
    ],
)
def test_end_to_end_removes_hop_by_hop_and_framing_headers(name: bytes) -> None:
    assert end_to_end([(b"Host", b"a"), (name, b"value"), (b"Accept", b"*/*")]) == [
        (b"Host", b"a"),
        (b"Accept", b"*/*"),
    ]


def test_end_to_end_removes_headers_named_in_connection() -> None:
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"X-Trace , x-session"),
        (b"connection", b"X-Other"),
        (b"X-Trace", b"1"),
        (b"X-Session", b"2"),
        (b"x-other", b"3"),
        (b"X-Kept", b"4"),
    ]

    assert end_to_end(headers) == [(b"Host", b"a"), (b"X-Kept", b"4")]


@pytest.mark.parametrize(
    "value",
    [b"X-Trace, x-session", b"x-trace,X-SESSION , Host", b"x-trace, x-session, " + b"x" * 80],
)
def test_one_connection_field_gives_the_same_names_each_time_short_or_long(value: bytes) -> None:
    """One short Connection value is remembered, a long one worked out each time: the
    same names either way, and the next request's answer is not the last one's."""
    expected = {b"x-trace", b"x-session"} | ({b"x" * 80} if len(value) > 64 else set())
    headers = [(b"Host", b"a"), (b"Connection", value), (b"X-Trace", b"1")]
    for _ in range(2):
        assert connection_tokens(headers) == expected
    assert connection_tokens([(b"Connection", b"keep-alive")]) == {b"keep-alive"}
    assert connection_tokens([(b"Host", b"a")]) == frozenset()


def test_connection_header_cannot_remove_host() -> None:
    # Content-Length is dropped anyway: the caller re-frames every forwarded body.
    headers = [
        (b"Host", b"example.com"),
        (b"Connection", b"close, Host, Content-Length"),
        (b"Content-Length", b"3"),
    ]

    assert end_to_end(headers) == [(b"Host", b"example.com")]


def test_end_to_end_keeps_the_order_and_case_of_what_remains() -> None:
    headers = [(b"x-b", b"1"), (b"Connection", b"close"), (b"X-A", b"2"), (b"x-b", b"3")]

    assert end_to_end(headers) == [(b"x-b", b"1"), (b"X-A", b"2"), (b"x-b", b"3")]


# Output bytes --------------------------------------------------------------------------


def test_serialize_head_writes_crlf_lines_and_a_blank_line() -> None:
    head = serialize_head(b"GET /p?q HTTP/1.1", [(b"Host", b"example.com"), (b"X-Empty", b"")])

    assert head == b"GET /p?q HTTP/1.1\r\nHost: example.com\r\nX-Empty: \r\n\r\n"


def test_serialize_head_without_headers_is_the_first_line_and_a_blank_line() -> None:
    assert serialize_head(b"HTTP/1.1 204 No Content", []) == b"HTTP/1.1 204 No Content\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 10, b"a\r\n" + b"x" * 10 + b"\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"x" * 4096, b"1000\r\n" + b"x" * 4096 + b"\r\n"),
        (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),
    ],
)
def test_chunk_frames_data_with_its_hex_length(data: bytes, wire: bytes) -> None:
    assert chunk(data) == wire


def test_last_chunk_ends_a_chunked_body() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_chunk_output_parses_back_to_the_same_body() -> None:
    pieces = [b"a", b"b" * 300, b"\r\n0\r\n\r\n"]

    events = RequestParser().feed(CHUNKED_POST_HEAD + b"".join(map(chunk, pieces)) + LAST_CHUNK)

    assert body_of(events) == b"".join(pieces)


def test_simple_response_is_a_complete_response_with_length_and_no_store() -> None:
    assert simple_response(403, b"denied\n") == (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 7\r\n"
        b"Cache-Control: no-store\r\n"
        b"\r\n"
        b"denied\n"
    )


def test_simple_response_adds_extra_headers_then_connection_close() -> None:
    wire = simple_response(
        407,
        b"{}",
        extra=[(b"Proxy-Authenticate", b'Basic realm="fixedip"')],
        close=True,
        content_type=b"application/json",
    )

    assert wire == (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\n"
        b"Cache-Control: no-store\r\n"
        b'Proxy-Authenticate: Basic realm="fixedip"\r\n'
        b"Connection: close\r\n"
        b"\r\n"
        b"{}"
    )


def test_simple_response_with_an_unlisted_status_uses_a_generic_reason() -> None:
    assert simple_response(299, b"").startswith(b"HTTP/1.1 299 Status\r\n")


def test_simple_response_parses_back_as_what_it_says() -> None:
    events = upstream().feed(simple_response(502, b"bad gateway\n", close=True))

    head = response_head(events)
    assert (head.status, head.reason, head.keep_alive) == (502, b"Bad Gateway", False)
    assert events[1:] == [Body(b"bad gateway\n"), END]


# Property: any input either parses or is refused ---------------------------------------

REQUEST_PREFIXES = [
    b"",
    b"GET http://example.com/ HTTP/1.1\r\n",
    b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
    CHUNKED_POST_HEAD,
    post(b"Content-Length: 10"),
    CONNECT,
    UPGRADE_H2C,
]
RESPONSE_PREFIXES = [
    b"",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n",
]
HTTPISH_BYTES = st.lists(
    st.sampled_from(
        [b"\r\n", b"\n", b"\r", b": ", b" ", b"0\r\n", b"5\r\nhello\r\n", b";x=y", b"chunked",
         b"Content-Length: 3", b"Transfer-Encoding: ", b"Connection: upgrade", b"\x00", b"\xff"]
    )
    | st.binary(max_size=8),
    max_size=24,
).map(b"".join)  # fmt: skip


def any_input(prefixes: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda p, t: p + t, st.sampled_from(prefixes), HTTPISH_BYTES | st.binary())


@given(data=st.data(), max_head_bytes=st.sampled_from([64, SMALL_HEAD_BYTES]))
def test_any_bytes_make_the_request_parser_yield_events_or_raise_protocol_error(
    data: st.DataObject, max_head_bytes: int
) -> None:
    parser = RequestParser(max_head_bytes)
    refused: ProtocolError | None = None
    for piece in data.draw(splits(data.draw(any_input(REQUEST_PREFIXES)))):
        try:
            events = parser.feed(piece)
        except ProtocolError as error:
            assert 400 <= error.status < 500
            assert refused is None or error.status == refused.status
            refused = error
            continue
        assert refused is None, "a refused parser must keep refusing"
        assert all(not isinstance(e, Body) or e.data for e in events), "empty Body = last chunk"
        if any(isinstance(e, Upgrade) for e in events):
            break  # the rest belongs to the tunnel; feed() would raise RuntimeError


@given(data=st.data(), method=st.sampled_from(["GET", "HEAD", "POST"]))
def test_any_bytes_make_the_response_parser_yield_events_or_raise_protocol_error(
    data: st.DataObject, method: str
) -> None:
    parser = ResponseParser(SMALL_HEAD_BYTES)
    parser.expect(method)
    refused = False
    for piece in data.draw(splits(data.draw(any_input(RESPONSE_PREFIXES)))):
        try:
            events = parser.feed(piece)
        except ProtocolError as error:
            assert 400 <= error.status < 600
            refused = True
            continue
        assert not refused, "a refused parser must keep refusing"
        assert all(not isinstance(e, Body) or e.data for e in events), "empty Body = last chunk"
    if not refused:
        parser.feed_eof()


def test_status_lines_are_remembered_only_when_short_and_within_a_bound() -> None:
    from fixedip.proto import http1

    assert status_line(200, b"OK") == b"HTTP/1.1 200 OK"
    assert status_line(404, b"") == b"HTTP/1.1 404 -"
    assert status_line(200, b"OK") is status_line(200, b"OK")  # remembered
    long_reason = b"x" * 200
    before = len(http1._STATUS_LINES)
    assert status_line(299, long_reason) == b"HTTP/1.1 299 " + long_reason
    assert len(http1._STATUS_LINES) == before
    for n in range(1000):  # a vendor inventing reasons cannot grow the table
        status_line(200, b"reason %d" % n)
    assert len(http1._STATUS_LINES) <= http1._STATUS_LINES_MAX


def test_a_released_parser_refuses_what_would_need_llhttp() -> None:
    """release() ends the connection's parser (it drops llhttp's, which held its
    callbacks): a chunked head fed afterwards is an error, never a fresh llhttp parser."""
    parser = RequestParser()
    assert [type(e) for e in parser.feed(GET)] == [RequestHead, EndOfMessage]
    parser.release()
    with pytest.raises(RuntimeError, match="after release"):
        parser.feed(CHUNKED_POST_HEAD)
    response = ResponseParser()
    response.release()
    with pytest.raises(RuntimeError, match="after release"):
        response.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_status_lines_seen_are_matched_once_within_a_bound(heads: str) -> None:
    from fixedip.proto import http1

    def head(status_line: bytes) -> ResponseHead:
        parser = ResponseParser()
        parser.expect("GET")
        [resp, *_] = parser.feed(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        assert isinstance(resp, ResponseHead)
        return resp

    first, again = head(b"HTTP/1.1 404 Not Found"), head(b"HTTP/1.1 404 Not Found")
    assert (again.status, again.reason, again.version) == (404, b"Not Found", "1.1")
    assert (first.status, first.reason) == (again.status, again.reason)
    assert head(b"HTTP/1.0 200 OK").version == "1.0"
    long_line = b"HTTP/1.1 200 " + b"x" * 300
    assert head(long_line).reason == b"x" * 300
    _, seen = http1.remembered_lines()
    assert b"HTTP/1.1 404 Not Found" in seen and long_line not in seen
    for n in range(1000):  # a vendor inventing reasons cannot grow the table
        head(b"HTTP/1.1 200 reason %d" % n)
    assert 0 < len(http1.remembered_lines()[1]) <= http1._STATUS_LINES_MAX
