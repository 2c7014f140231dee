"""The head path in C (fixedip/proto/_heads.c) against its Python twin in http1.py.

Both must give the same answer for any input: the same parts for a head, the same None
for a head left to llhttp, the same bytes forwarded. (test_http1_fast.py checks that
either agrees with llhttp; this checks the two against each other directly, on inputs
built to sit near every edge the patterns draw.)
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.proto import http1

if not http1.HEADS_IN_C:
    if os.environ.get("FIXEDIP_TEST_PURE"):
        pytest.skip("FIXEDIP_TEST_PURE: nothing compiled, on purpose", allow_module_level=True)
    pytest.fail("fixedip.proto._heads was not built: run `make compile`", pytrace=False)

from fixedip.proto import _heads  # only once the module is known to exist

CRLF = b"\r\n"
NAMES = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"host",
            b"HOST",
            b"Content-Length",
            b"content-length",
            b"Connection",
            b"connection",
            b"Transfer-Encoding",
            b"Upgrade",
            b"Transfer_Encoding",
            b"Content_Length",
            b"User-Agent",
            b"Accept",
            b"X-Api-Key",
            b"Proxy-Authorization",
            b"Proxy-Connection",
            b"Proxy",
            b"Date",
            b"Server",
            b"Keep-Alive",
            b"TE",
            b"Trailer",
            b"Cookie",
            b"X" * 70,
            b"",
        ]
    ),
    st.binary(max_size=6),
)
VALUES = st.one_of(
    st.sampled_from(
        [
            b"",
            b"0",
            b"3",
            b"12",
            b" 3",
            b"3 ",
            b"+3",
            b"-1",
            b"1" * 18,
            b"1" * 19,
            b"keep-alive",
            b"close",
            b"Keep-Alive",
            b"Close",
            b"CLOSE",
            b"keep-alive, close",
            b"close,keep-alive",
            b"upgrade",
            b"Upgrade, keep-alive",
            b"x-api-key",
            b"X-Api-Key, Host",
            b"te, content-length",
            b",",
            b"a,,b",
            b"chunked",
            b"v.test",
            b"\t x \t",
            b"\xff\x80",
            b"a\x7fb",
            b"a\x00b",
        ]
    ),
    st.binary(max_size=8),
)
SEPARATORS = st.sampled_from([b":", b": ", b":\t", b":  \t ", b" :", b"", b"::"])
FIELD_LINES = st.lists(st.tuples(NAMES, SEPARATORS, VALUES).map(b"".join), max_size=8)
METHODS = st.sampled_from(
    [
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"OPTIONS",
        b"PATCH",
        b"CONNECT",
        b"get",
        b"GETX",
        b"",
    ]
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/",
            b"/a?b=c#d",
            b"http://v.test/",
            b"http://v.test:8080/a?b=c",
            b"http://[::1]:80/x",
            b"http:///",
            b"http://v.test",
            b"http://v_test/",
            b"http://u@v.test/",
            b"HTTP://v.test/",
            b"https://v.test/",
            b"*",
            b"v.test:443",
            b"/a b",
            b"",
        ]
    ),
    st.binary(max_size=10).map(lambda b: b"/" + b),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1."]
)
STATUS_LINES = st.one_of(
    st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 204 No Content",
            b"HTTP/1.1 304 Not Modified",
            b"HTTP/1.1 304 ",
            b"HTTP/1.1 304",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 199 x",
            b"HTTP/1.1 999 x",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 200  OK",
            b"HTTP/1.1 200 \tOK",
            b"HTTP/1.1 200 OK \t",
            b"HTTP/2 200 OK",
            b"HTTP/1.1 20x OK",
            b"HTTP/1.1 404 \xff\xfe",
            b"HTTP/1.1 200 " + b"x" * 300,
        ]
    ),
    st.binary(max_size=16).map(lambda b: b"HTTP/1.1 200 " + b),
)
TAILS = st.sampled_from([b"", b"abc", b"\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\r\n\r\n"])


def head_of(first_line: bytes, lines: list[bytes]) -> bytes:
    return first_line + CRLF + b"".join(line + CRLF for line in lines) + CRLF


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    first = draw(METHODS) + b" " + draw(TARGETS) + b" " + draw(VERSIONS)
    return head_of(first, draw(FIELD_LINES)) + draw(TAILS)


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    return head_of(draw(STATUS_LINES), draw(FIELD_LINES)) + draw(TAILS)


@st.composite
def windows(draw: st.DrawFn, messages: st.SearchStrategy[bytes]) -> tuple[bytes, int, int]:
    """A message, maybe behind a prefix, and the (pos, limit) a parser would look in."""
    prefix = draw(st.sampled_from([b"", b"x", b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]))
    data = prefix + draw(messages)
    pos = draw(st.sampled_from([0, len(prefix), len(prefix) + 1, len(data), len(data) + 3]))
    limit = pos + draw(st.sampled_from([0, 3, 4, 20, 40, len(data), 65536, 2**70]))
    return data, pos, limit


@settings(max_examples=2000, deadline=None)
@given(windows(requests()))
def test_a_request_head_parses_the_same_in_c_and_in_python(case: tuple[bytes, int, int]) -> None:
    data, pos, limit = case
    assert _heads.parse_request(data, pos, limit) == http1._parse_request_py(data, pos, limit)


@settings(max_examples=2000, deadline=None)
@given(windows(responses()))
def test_a_response_head_parses_the_same_in_c_and_in_python(case: tuple[bytes, int, int]) -> None:
    data, pos, limit = case
    assert _heads.parse_response(data, pos, limit) == http1._parse_response_py(data, pos, limit)


def test_lines_seen_before_come_back_as_the_same_objects() -> None:
    data = b"GET / HTTP/1.1\r\nHost: v.test\r\nProxy-Authorization: Basic k\r\n\r\n"
    first, again = _heads.parse_request(data, 0, 99), _heads.parse_request(data, 0, 99)
    assert first is not None and again is not None and first == again
    assert first[3][0] is again[3][0]  # Host: remembered
    assert first[3][1] is not again[3][1]  # a credential: parsed again, kept nowhere
    assert first[4][1] is again[4][1]  # a known name's lowercase form is shared
    assert not any(b"Basic k" in line for line in _heads.remembered()[0])
    assert b"Host: v.test" in _heads.remembered()[0]


FORWARD_NAMES = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Connection",
        b"Keep-Alive",
        b"Transfer-Encoding",
        b"TE",
        b"Trailer",
        b"Upgrade",
        b"Proxy-Authorization",
        b"Proxy-Foo",
        b"Proxy-A",  # every length of Proxy-* name: a C switch on length once let two through
        b"Proxy-User",
        b"Proxy-Authenticate",
        b"Proxy",
        b"Proxyish",
        b"X-Api-Key",
        b"x-api-key",
        b"User-Agent",
        b"Accept",
        b"X-Forwarded-For",
        b"Cookie",
    ]
)
LISTED = st.sampled_from(
    [
        b"keep-alive",
        b"close",
        b"X-Api-Key",
        b"x-forwarded-for, Accept",
        b" Host ,cookie",
        b"content-length,transfer-encoding",
        b",,",
        b"user-agent\t",
        b"PROXYISH",
        b"a" * 40,
    ]
)
LOWER_NAMES = st.frozensets(
    st.sampled_from(
        [b"x-api-key", b"cookie", b"accept", b"user-agent", b"host", b"x-forwarded-for"]
    ),
    max_size=3,
)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    fields = []
    for name in draw(st.lists(FORWARD_NAMES, max_size=10)):
        value = draw(LISTED) if name.lower() == b"connection" else draw(VALUES)
        fields.append((name, value))
    return fields


@settings(max_examples=2000, deadline=None)
@given(
    header_lists(),
    LOWER_NAMES,
    st.none() | LOWER_NAMES,
    st.lists(st.tuples(FORWARD_NAMES, VALUES), max_size=2),
    st.lists(st.tuples(FORWARD_NAMES, VALUES), max_size=2) | st.just(()),
    st.binary(max_size=8),
)
def test_a_head_is_forwarded_the_same_by_c_and_by_python(
    headers: list[tuple[bytes, bytes]],
    drop: frozenset[bytes],
    keep: frozenset[bytes] | None,
    before: list[tuple[bytes, bytes]],
    after: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    lnames = [name.lower() for name, _ in headers]
    args = (b"GET / HTTP/1.1", headers, lnames, drop, keep, before, after, body)
    forwarded = _heads.forward_head(*args)
    assert forwarded == http1._forward_head_py(*args)
    assert forwarded.startswith(b"GET / HTTP/1.1\r\n") and forwarded.endswith(b"\r\n\r\n" + body)


def test_forward_head_leaves_out_what_never_leaves_the_gateway() -> None:
    headers = [
        (b"Host", b"v.test"),
        (b"Connection", b"X-Secret, keep-alive"),
        (b"X-Secret", b"s"),
        (b"Proxy-Authorization", b"Basic abc"),
        (b"Content-Length", b"3"),
        (b"Accept", b"*/*"),
    ]
    lnames = [name.lower() for name, _ in headers]
    out = _heads.forward_head(
        b"GET / HTTP/1.1", headers, lnames, frozenset({b"host"}), None,
        ((b"Host", b"v.test:80"),), [(b"Content-Length", b"3")], b"abc",
    )  # fmt: skip
    assert out == (
        b"GET / HTTP/1.1\r\nHost: v.test:80\r\nAccept: */*\r\nContent-Length: 3\r\n\r\nabc"
    )


def test_the_c_functions_refuse_what_is_not_theirs_with_errors_not_crashes() -> None:
    with pytest.raises(TypeError):
        _heads.parse_request("GET / HTTP/1.1\r\n\r\n", 0, 99)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _heads.parse_response(b"", 0)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        _heads.parse_request(b"GET / HTTP/1.1\r\n\r\n", -1, 99)
    with pytest.raises(ValueError):
        _heads.parse_response(b"HTTP/1.1 204 -\r\n\r\n", 0, -1)
    assert _heads.parse_request(b"GET / HTTP/1.1\r\n\r\n", 50, 99) is None
    assert _heads.parse_request(b"GET / HTTP/1.1\r\n\r\n", 0, 2**70) is not None
    with pytest.raises(TypeError):  # only exact types: nothing of the caller's runs inside
        _heads.forward_head(b"x", [], [], set(), None, (), (), b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _heads.forward_head(b"x", [(b"a",)], [b"a"], frozenset(), None, (), (), b"")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _heads.forward_head(b"x", [(b"a", "b")], [b"a"], frozenset(), None, (), (), b"")  # type: ignore[list-item]
    with pytest.raises(ValueError):
        _heads.forward_head(b"x", [(b"a", b"b")], [], frozenset(), None, (), (), b"")
    with pytest.raises(TypeError):
        _heads.forward_head(b"x", [], [], frozenset(), None, [(b"a", 1)], (), b"")  # type: ignore[list-item]
