"""The SOCKS5 server state machine, byte for byte against RFC 1928 and RFC 1929."""

from __future__ import annotations

import doctest
import ipaddress
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.proto import socks5
from fixedip.proto.socks5 import (
    MAX_PENDING_BYTES,
    AddressType,
    AuthRequest,
    Close,
    CloseReason,
    ConnectRequest,
    Event,
    Socks5Server,
    State,
)

GREETING_USERPASS = b"\x05\x01\x02"
GREETING_NO_AUTH = b"\x05\x01\x00"
SELECT_USERPASS = b"\x05\x02"
SELECT_NO_AUTH = b"\x05\x00"
NO_ACCEPTABLE_METHOD = b"\x05\xff"
AUTH_OK = b"\x01\x00"
AUTH_FAILED = b"\x01\x01"
SUCCESS_REPLY = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
GENERAL_FAILURE_REPLY = b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00"
COMMAND_NOT_SUPPORTED_REPLY = b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00"
ADDRESS_TYPE_NOT_SUPPORTED_REPLY = b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00"


def auth_message(username: bytes, password: bytes) -> bytes:
    return bytes([0x01, len(username)]) + username + bytes([len(password)]) + password


def request(address: bytes, port: int, command: int = 0x01, reserved: int = 0x00) -> bytes:
    """A request head; `address` is ATYP plus DST.ADDR as on the wire."""
    return bytes([0x05, command, reserved]) + address + port.to_bytes(2, "big")


def domain(name: bytes) -> bytes:
    return bytes([0x03, len(name)]) + name


IPV4_ADDRESS = b"\x01" + ipaddress.IPv4Address("93.184.216.34").packed
IPV6_ADDRESS = b"\x04" + ipaddress.IPv6Address("2001:db8::1").packed
AUTH = auth_message(b"alice", b"s3cret")

TARGETS = [
    pytest.param(IPV4_ADDRESS, "93.184.216.34", AddressType.IPV4, id="ipv4"),
    pytest.param(IPV6_ADDRESS, "2001:db8::1", AddressType.IPV6, id="ipv6"),
    pytest.param(domain(b"example.com"), "example.com", AddressType.DOMAIN, id="domain"),
]


def server_awaiting_request(require_auth: bool = True) -> Socks5Server:
    server = Socks5Server(require_auth=require_auth)
    if require_auth:
        assert server.feed(GREETING_USERPASS + AUTH) == [AuthRequest("alice", "s3cret")]
        server.accept_auth(True)
    else:
        assert server.feed(GREETING_NO_AUTH) == []
    server.data_to_send()
    assert server.state is State.REQUEST
    return server


def server_awaiting_connect() -> Socks5Server:
    server = server_awaiting_request()
    assert server.feed(request(IPV4_ADDRESS, 443)) == [
        ConnectRequest("93.184.216.34", 443, AddressType.IPV4)
    ]
    return server


@dataclass
class Transcript:
    """Everything one run of a handshake produced, for comparing runs."""

    events: list[Event]
    sent: bytes
    tunnel: bytes
    state: State


def check_batch(server: Socks5Server, batch: list[Event]) -> None:
    """The invariants every `feed()` result must satisfy, checked before answering it."""
    requests = [event for event in batch if not isinstance(event, Close)]
    closes = [event for event in batch if isinstance(event, Close)]
    assert len(requests) <= 1
    assert len(closes) <= 1
    if closes:
        assert batch[-1] is closes[0]
        assert server.state is State.CLOSED
    elif requests and isinstance(requests[0], AuthRequest):
        assert server.state is State.WAIT_AUTH
    elif requests:
        assert server.state is State.WAIT_CONNECT


def drive(
    server: Socks5Server, chunks: list[bytes], auth_ok: bool = True, reply_code: int = 0
) -> Transcript:
    """Play the gateway: feed chunks, answer every request at once, collect the results."""
    events: list[Event] = []
    sent = bytearray()
    tunnel = bytearray()
    for chunk in chunks:
        if server.state is State.TUNNEL:
            tunnel += chunk
            continue
        batch = server.feed(chunk)
        while batch:
            check_batch(server, batch)
            events += batch
            last, batch = batch[-1], []
            if isinstance(last, AuthRequest):
                server.accept_auth(auth_ok)
                if auth_ok:
                    batch = server.feed(b"")
            elif isinstance(last, ConnectRequest):
                server.reply(reply_code)
                if reply_code == 0:
                    tunnel += server.take_leftover()
        sent += server.data_to_send()
    return Transcript(events, bytes(sent), bytes(tunnel), server.state)


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# Greeting (RFC 1928 section 3)


def test_userpass_is_selected_when_auth_is_required_and_offered() -> None:
    server = Socks5Server()
    assert server.feed(b"\x05\x02\x00\x02") == []
    assert server.data_to_send() == SELECT_USERPASS
    assert server.state is State.AUTH


def test_greeting_without_userpass_is_refused_with_ff_when_auth_is_required() -> None:
    server = Socks5Server()
    assert server.feed(GREETING_NO_AUTH) == [Close(CloseReason.NO_ACCEPTABLE_METHOD)]
    assert server.data_to_send() == NO_ACCEPTABLE_METHOD
    assert server.state is State.CLOSED


def test_no_auth_is_preferred_when_auth_is_not_required() -> None:
    server = Socks5Server(require_auth=False)
    assert server.feed(b"\x05\x02\x02\x00") == []
    assert server.data_to_send() == SELECT_NO_AUTH
    assert server.state is State.REQUEST


def test_userpass_is_selected_when_auth_is_not_required_but_no_auth_is_not_offered() -> None:
    server = Socks5Server(require_auth=False)
    assert server.feed(GREETING_USERPASS + AUTH) == [AuthRequest("alice", "s3cret")]
    assert server.data_to_send() == SELECT_USERPASS


def test_greeting_without_usable_method_is_refused_when_auth_is_not_required() -> None:
    server = Socks5Server(require_auth=False)
    assert server.feed(b"\x05\x02\x01\x80") == [Close(CloseReason.NO_ACCEPTABLE_METHOD)]
    assert server.data_to_send() == NO_ACCEPTABLE_METHOD


def test_greeting_with_zero_methods_is_refused_with_ff() -> None:
    server = Socks5Server(require_auth=False)
    assert server.feed(b"\x05\x00") == [Close(CloseReason.NO_ACCEPTABLE_METHOD)]
    assert server.data_to_send() == NO_ACCEPTABLE_METHOD


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x04\x01\x01\xbb\x5d\xb8\xd8\x22\x00", id="socks4"),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\n", id="http"),
        pytest.param(b"\x00", id="zero"),
    ],
)
def test_greeting_with_wrong_version_closes_without_reply(data: bytes) -> None:
    server = Socks5Server()
    assert server.feed(data) == [Close(CloseReason.BAD_VERSION)]
    assert server.data_to_send() == b""
    assert server.state is State.CLOSED


# Username/password sub-negotiation (RFC 1929)


def test_auth_request_carries_username_and_password_and_waits_for_the_caller() -> None:
    server = Socks5Server()
    assert server.feed(GREETING_USERPASS + AUTH) == [AuthRequest("alice", "s3cret")]
    assert server.state is State.WAIT_AUTH
    assert server.data_to_send() == SELECT_USERPASS


def test_utf8_credentials_are_decoded() -> None:
    server = Socks5Server()
    message = auth_message("zoë".encode(), "pässwörd".encode())
    assert server.feed(GREETING_USERPASS + message) == [AuthRequest("zoë", "pässwörd")]


def test_credentials_of_255_bytes_each_are_accepted() -> None:
    server = Socks5Server()
    events = server.feed(GREETING_USERPASS + auth_message(b"u" * 255, b"p" * 255))
    assert events == [AuthRequest("u" * 255, "p" * 255)]


def test_accepted_auth_sends_success_status_and_moves_on_to_the_request() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH)
    server.data_to_send()
    server.accept_auth(True)
    assert server.data_to_send() == AUTH_OK
    assert server.state is State.REQUEST


def test_rejected_auth_sends_failure_status_and_closes() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH)
    server.data_to_send()
    server.accept_auth(False)
    assert server.data_to_send() == AUTH_FAILED
    assert server.state is State.CLOSED


def test_request_pipelined_behind_auth_is_parsed_once_auth_is_accepted() -> None:
    server = Socks5Server()
    assert server.feed(GREETING_USERPASS + AUTH + request(IPV4_ADDRESS, 443)) == [
        AuthRequest("alice", "s3cret")
    ]
    server.accept_auth(True)
    assert server.feed(b"") == [ConnectRequest("93.184.216.34", 443, AddressType.IPV4)]


def test_bytes_arriving_while_auth_is_pending_are_held_not_parsed() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH)
    assert server.feed(b"\xff\xff\xff") == []
    assert server.state is State.WAIT_AUTH
    server.accept_auth(True)
    assert server.feed(b"") == [Close(CloseReason.BAD_VERSION)]


def test_request_pipelined_behind_rejected_auth_is_discarded() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH + request(IPV4_ADDRESS, 443))
    server.accept_auth(False)
    assert server.feed(b"") == []
    assert server.state is State.CLOSED


def test_auth_with_wrong_subnegotiation_version_sends_failure_and_closes() -> None:
    server = Socks5Server()
    assert server.feed(GREETING_USERPASS + b"\x05\x01\x00") == [Close(CloseReason.BAD_VERSION)]
    assert server.data_to_send() == SELECT_USERPASS + AUTH_FAILED


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"\x01\x00\x06s3cret", id="empty-username"),
        pytest.param(b"\x01\x05alice\x00", id="empty-password"),
    ],
)
def test_auth_with_empty_credentials_sends_failure_and_closes(message: bytes) -> None:
    server = Socks5Server()
    assert server.feed(GREETING_USERPASS + message) == [Close(CloseReason.BAD_REQUEST)]
    assert server.data_to_send() == SELECT_USERPASS + AUTH_FAILED


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(auth_message(b"\xff\xfe", b"s3cret"), id="username"),
        pytest.param(auth_message(b"alice", b"caf\xe9"), id="password-latin1"),
    ],
)
def test_auth_with_non_utf8_credentials_sends_failure_and_closes(message: bytes) -> None:
    server = Socks5Server()
    assert server.feed(GREETING_USERPASS + message) == [Close(CloseReason.BAD_REQUEST)]
    assert server.data_to_send() == SELECT_USERPASS + AUTH_FAILED


# CONNECT request and reply (RFC 1928 sections 4 to 6)


@pytest.mark.parametrize("require_auth", [True, False], ids=["auth", "no-auth"])
@pytest.mark.parametrize(("address", "host", "address_type"), TARGETS)
def test_full_handshake_opens_tunnel(
    require_auth: bool, address: bytes, host: str, address_type: AddressType
) -> None:
    server = Socks5Server(require_auth=require_auth)
    greeting = GREETING_USERPASS + AUTH if require_auth else GREETING_NO_AUTH
    events = server.feed(greeting)
    if require_auth:
        assert events == [AuthRequest("alice", "s3cret")]
        server.accept_auth(True)
        expected_so_far = SELECT_USERPASS + AUTH_OK
    else:
        assert events == []
        expected_so_far = SELECT_NO_AUTH
    assert server.feed(request(address, 8443)) == [ConnectRequest(host, 8443, address_type)]
    server.reply(0)
    assert server.data_to_send() == expected_so_far + SUCCESS_REPLY
    assert server.state is State.TUNNEL
    assert server.take_leftover() == b""


def test_ipv6_host_is_compressed_text_without_brackets() -> None:
    server = server_awaiting_request()
    address = b"\x04" + ipaddress.IPv6Address("fe80:0:0:0:0:0:0:1").packed
    assert server.feed(request(address, 80)) == [ConnectRequest("fe80::1", 80, AddressType.IPV6)]


def test_domain_name_is_kept_exactly_as_sent() -> None:
    server = server_awaiting_request()
    name = b"Api-1.Ex_ample.COM."
    assert server.feed(request(domain(name), 443)) == [
        ConnectRequest("Api-1.Ex_ample.COM.", 443, AddressType.DOMAIN)
    ]


def test_domain_name_of_255_bytes_is_accepted() -> None:
    server = server_awaiting_request()
    name = b"a" * 255
    assert server.feed(request(domain(name), 443)) == [
        ConnectRequest("a" * 255, 443, AddressType.DOMAIN)
    ]


def test_highest_port_is_accepted() -> None:
    server = server_awaiting_request()
    assert server.feed(request(IPV4_ADDRESS, 65535)) == [
        ConnectRequest("93.184.216.34", 65535, AddressType.IPV4)
    ]


def test_connect_request_waits_for_the_callers_reply() -> None:
    server = server_awaiting_request()
    server.feed(request(IPV4_ADDRESS, 443))
    assert server.state is State.WAIT_CONNECT
    assert server.data_to_send() == b""


def test_address_types_compare_equal_to_their_wire_values() -> None:
    assert list(AddressType) == [1, 3, 4]


def test_success_reply_carries_ipv4_bind_address_and_port() -> None:
    server = server_awaiting_connect()
    server.data_to_send()
    server.reply(0, ipaddress.IPv4Address("203.0.113.7"), 50000)
    assert server.data_to_send() == b"\x05\x00\x00\x01\xcb\x00\x71\x07\xc3\x50"


def test_reply_with_ipv6_bind_address_uses_address_type_4() -> None:
    server = server_awaiting_connect()
    server.data_to_send()
    server.reply(0, ipaddress.IPv6Address("2001:db8::2"), 443)
    expected = b"\x05\x00\x00\x04" + ipaddress.IPv6Address("2001:db8::2").packed + b"\x01\xbb"
    assert server.data_to_send() == expected


@pytest.mark.parametrize("code", [0x01, 0x02, 0x04, 0x05])
def test_failure_reply_sends_its_code_and_closes(code: int) -> None:
    server = server_awaiting_connect()
    server.data_to_send()
    server.reply(code)
    assert server.data_to_send() == bytes([0x05, code]) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    assert server.state is State.CLOSED


@pytest.mark.parametrize("command", [0x02, 0x03, 0x00, 0x04, 0xFF], ids=hex)
def test_commands_other_than_connect_are_refused_with_07(command: int) -> None:
    server = server_awaiting_request()
    events = server.feed(request(IPV4_ADDRESS, 443, command=command))
    assert events == [Close(CloseReason.COMMAND_NOT_SUPPORTED)]
    assert server.data_to_send() == COMMAND_NOT_SUPPORTED_REPLY


@pytest.mark.parametrize("atyp", [0x00, 0x02, 0x05, 0xFF], ids=hex)
def test_unknown_address_type_is_refused_with_08(atyp: int) -> None:
    server = server_awaiting_request()
    events = server.feed(bytes([0x05, 0x01, 0x00, atyp]) + b"\x7f\x00\x00\x01\x00\x50")
    assert events == [Close(CloseReason.ADDRESS_TYPE_NOT_SUPPORTED)]
    assert server.data_to_send() == ADDRESS_TYPE_NOT_SUPPORTED_REPLY


def test_nonzero_reserved_byte_is_refused_with_general_failure() -> None:
    server = server_awaiting_request()
    events = server.feed(request(IPV4_ADDRESS, 443, reserved=0x01))
    assert events == [Close(CloseReason.BAD_REQUEST)]
    assert server.data_to_send() == GENERAL_FAILURE_REPLY


def test_request_with_wrong_version_is_refused_with_general_failure() -> None:
    server = server_awaiting_request()
    assert server.feed(b"\x04\x01\x00" + IPV4_ADDRESS + b"\x01\xbb") == [
        Close(CloseReason.BAD_VERSION)
    ]
    assert server.data_to_send() == GENERAL_FAILURE_REPLY


@pytest.mark.parametrize(
    "name",
    [b"", b"exa mple.com", b"example.com/x", b"[::1]", b"::1", b"a@b", b"a\x00b", b"caf\xc3\xa9"],
)
def test_domain_name_outside_host_characters_is_refused_with_general_failure(
    name: bytes,
) -> None:
    server = server_awaiting_request()
    assert server.feed(request(domain(name), 443)) == [Close(CloseReason.BAD_REQUEST)]
    assert server.data_to_send() == GENERAL_FAILURE_REPLY


def test_port_zero_is_refused_with_general_failure() -> None:
    server = server_awaiting_request()
    assert server.feed(request(IPV4_ADDRESS, 0)) == [Close(CloseReason.BAD_REQUEST)]
    assert server.data_to_send() == GENERAL_FAILURE_REPLY


def test_close_reason_reads_as_a_bare_word() -> None:
    assert f"{CloseReason.ADDRESS_TYPE_NOT_SUPPORTED}" == "address_type_not_supported"
    assert Close(CloseReason.BAD_VERSION).reason == "bad_version"


# Fragmentation and pipelining


@pytest.mark.parametrize("require_auth", [True, False], ids=["auth", "no-auth"])
@pytest.mark.parametrize(("address", "host", "address_type"), TARGETS)
def test_handshake_fed_byte_by_byte_matches_handshake_fed_in_one_chunk(
    require_auth: bool, address: bytes, host: str, address_type: AddressType
) -> None:
    greeting = GREETING_USERPASS + AUTH if require_auth else GREETING_NO_AUTH
    data = greeting + request(address, 443) + b"early"
    whole = drive(Socks5Server(require_auth), [data])
    split = drive(Socks5Server(require_auth), byte_by_byte(data))
    assert split == whole
    assert ConnectRequest(host, 443, address_type) in whole.events
    assert whole.tunnel == b"early"
    assert whole.state is State.TUNNEL


def test_greeting_auth_and_request_in_one_chunk_produce_every_answer_in_order() -> None:
    data = GREETING_USERPASS + AUTH + request(domain(b"example.com"), 443)
    transcript = drive(Socks5Server(), [data])
    assert transcript.events == [
        AuthRequest("alice", "s3cret"),
        ConnectRequest("example.com", 443, AddressType.DOMAIN),
    ]
    assert transcript.sent == SELECT_USERPASS + AUTH_OK + SUCCESS_REPLY


def test_error_is_reported_the_same_however_the_bytes_are_split() -> None:
    data = GREETING_NO_AUTH + request(domain(b"bad host"), 443)
    whole = drive(Socks5Server(require_auth=False), [data])
    split = drive(Socks5Server(require_auth=False), byte_by_byte(data))
    assert split == whole
    assert whole.events == [Close(CloseReason.BAD_REQUEST)]


# Early data and the tunnel


def test_bytes_after_the_request_are_returned_once_the_tunnel_opens() -> None:
    server = server_awaiting_request()
    server.feed(request(IPV4_ADDRESS, 443) + b"\x16\x03\x01hello")
    server.reply(0)
    assert server.take_leftover() == b"\x16\x03\x01hello"


def test_bytes_arriving_while_connect_is_pending_join_the_leftover() -> None:
    server = server_awaiting_connect()
    assert server.feed(b"GET / HTTP/1.1\r\n") == []
    assert server.feed(b"Host: x\r\n\r\n") == []
    server.reply(0)
    assert server.take_leftover() == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_take_leftover_empties_the_leftover() -> None:
    server = server_awaiting_connect()
    server.feed(b"early")
    server.reply(0)
    server.take_leftover()
    assert server.take_leftover() == b""


def test_feed_after_the_tunnel_opened_is_a_programming_error() -> None:
    server = server_awaiting_connect()
    server.reply(0)
    with pytest.raises(RuntimeError):
        server.feed(b"data")


def test_take_leftover_before_the_tunnel_opened_is_a_programming_error() -> None:
    server = server_awaiting_connect()
    with pytest.raises(RuntimeError):
        server.take_leftover()


def test_leftover_is_dropped_when_the_connect_fails() -> None:
    server = server_awaiting_connect()
    server.feed(b"early")
    server.reply(0x05)
    with pytest.raises(RuntimeError):
        server.take_leftover()


# After Close


def test_input_after_close_is_ignored() -> None:
    server = Socks5Server()
    server.feed(b"\x04")
    assert server.feed(GREETING_USERPASS + AUTH) == []
    assert server.data_to_send() == b""
    assert server.state is State.CLOSED


def test_data_to_send_empties_the_queue() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS)
    assert server.data_to_send() == SELECT_USERPASS
    assert server.data_to_send() == b""


# Bounds


def test_10kb_of_garbage_instead_of_a_greeting_closes_at_the_first_byte() -> None:
    server = Socks5Server()
    assert server.feed(b"\x16" * 10_240) == [Close(CloseReason.BAD_VERSION)]
    assert server.feed(b"\x16" * 10_240) == []


def test_10kb_of_garbage_fed_byte_by_byte_after_the_greeting_closes() -> None:
    transcript = drive(Socks5Server(require_auth=False), [GREETING_NO_AUTH, *[b"\xff"] * 10_240])
    assert transcript.events == [Close(CloseReason.BAD_VERSION)]
    assert transcript.sent == SELECT_NO_AUTH + GENERAL_FAILURE_REPLY


def test_10kb_of_repeated_greetings_closes_at_the_second_message() -> None:
    # The second greeting reads as a request: VER 5, CONNECT, RSV 0, then ATYP 5.
    chunks = byte_by_byte(GREETING_NO_AUTH * 3_414)
    transcript = drive(Socks5Server(require_auth=False), chunks)
    assert transcript.events == [Close(CloseReason.ADDRESS_TYPE_NOT_SUPPORTED)]
    assert transcript.sent == SELECT_NO_AUTH + ADDRESS_TYPE_NOT_SUPPORTED_REPLY


def test_pending_bytes_up_to_the_bound_are_kept_while_connect_is_pending() -> None:
    server = server_awaiting_connect()
    assert server.feed(b"x" * MAX_PENDING_BYTES) == []
    server.reply(0)
    assert server.take_leftover() == b"x" * MAX_PENDING_BYTES


def test_pending_bytes_beyond_the_bound_close_with_general_failure() -> None:
    server = server_awaiting_connect()
    server.data_to_send()
    server.feed(b"x" * MAX_PENDING_BYTES)
    assert server.feed(b"x") == [Close(CloseReason.PENDING_DATA_TOO_LARGE)]
    assert server.data_to_send() == GENERAL_FAILURE_REPLY


def test_pending_bytes_beyond_the_bound_close_with_auth_failure_while_auth_is_pending() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH)
    server.data_to_send()
    assert server.feed(b"x" * (MAX_PENDING_BYTES + 1)) == [
        Close(CloseReason.PENDING_DATA_TOO_LARGE)
    ]
    assert server.data_to_send() == AUTH_FAILED


def test_connect_request_and_overflow_in_one_chunk_end_in_close() -> None:
    server = server_awaiting_request()
    events = server.feed(request(IPV4_ADDRESS, 443) + b"x" * (MAX_PENDING_BYTES + 1))
    assert events == [
        ConnectRequest("93.184.216.34", 443, AddressType.IPV4),
        Close(CloseReason.PENDING_DATA_TOO_LARGE),
    ]


# Caller mistakes and races


def test_accept_auth_without_an_auth_request_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        Socks5Server().accept_auth(True)


def test_reply_without_a_connect_request_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        server_awaiting_request().reply(0)


def test_reply_after_the_parser_closed_is_ignored() -> None:
    server = server_awaiting_connect()
    server.feed(b"x" * (MAX_PENDING_BYTES + 1))
    server.data_to_send()
    server.reply(0)
    assert server.data_to_send() == b""
    assert server.state is State.CLOSED


def test_accept_auth_after_the_parser_closed_is_ignored() -> None:
    server = Socks5Server()
    server.feed(GREETING_USERPASS + AUTH + b"x" * (MAX_PENDING_BYTES + 1))
    server.data_to_send()
    server.accept_auth(True)
    assert server.data_to_send() == b""
    assert server.state is State.CLOSED


@pytest.mark.parametrize(
    ("code", "port"),
    [(-1, 0), (256, 0), (0, -1), (0, 65536)],
    ids=["code<0", "code>255", "port<0", "port>65535"],
)
def test_reply_with_values_that_do_not_fit_the_wire_is_rejected(code: int, port: int) -> None:
    server = server_awaiting_connect()
    with pytest.raises(ValueError):
        server.reply(code, bind_port=port)
    assert server.state is State.WAIT_CONNECT


def test_module_docstring_example_runs() -> None:
    result = doctest.testmod(socks5)
    assert result.attempted > 0
    assert result.failed == 0


# Properties: any bytes, any split


_PIECES = [
    GREETING_USERPASS,
    GREETING_NO_AUTH,
    b"\x05\x02\x00\x02",
    AUTH,
    auth_message(b"u", b"p"),
    request(IPV4_ADDRESS, 443),
    request(IPV6_ADDRESS, 80),
    request(domain(b"example.com"), 8080),
    request(domain(b"a b"), 443),
    request(IPV4_ADDRESS, 0),
    request(IPV4_ADDRESS, 443, command=0x02),
]
# Mostly well-formed pieces with noise in between, so examples get past the greeting.
handshake_bytes = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.binary(max_size=12)), max_size=8
).map(b"".join)
any_input = st.one_of(st.binary(max_size=600), handshake_bytes)


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


@settings(deadline=None)
@given(
    data=st.data(),
    payload=any_input,
    require_auth=st.booleans(),
    auth_ok=st.booleans(),
    reply_code=st.sampled_from([0, 1, 5]),
)
def test_any_input_in_any_split_never_raises_and_keeps_events_consistent(
    data: st.DataObject, payload: bytes, require_auth: bool, auth_ok: bool, reply_code: int
) -> None:
    chunks = data.draw(split(payload))
    transcript = drive(Socks5Server(require_auth), chunks, auth_ok, reply_code)
    kinds = [type(event) for event in transcript.events]
    assert kinds.count(AuthRequest) <= 1
    assert kinds.count(ConnectRequest) <= 1
    assert kinds.count(Close) <= 1
    if Close in kinds:
        assert kinds[-1] is Close
        assert transcript.state is State.CLOSED
    if AuthRequest in kinds and ConnectRequest in kinds:
        assert kinds.index(AuthRequest) < kinds.index(ConnectRequest)
    if transcript.state is State.TUNNEL:
        assert kinds[-1] is ConnectRequest
        assert payload.endswith(transcript.tunnel)
    else:
        assert transcript.tunnel == b""
    if transcript.sent:
        assert transcript.sent[0] == 0x05


@settings(deadline=None)
@given(
    data=st.data(),
    payload=any_input,
    require_auth=st.booleans(),
    auth_ok=st.booleans(),
    reply_code=st.sampled_from([0, 1]),
)
def test_outcome_does_not_depend_on_how_input_is_split(
    data: st.DataObject, payload: bytes, require_auth: bool, auth_ok: bool, reply_code: int
) -> None:
    whole = drive(Socks5Server(require_auth), [payload], auth_ok, reply_code)
    chunks = data.draw(split(payload))
    assert drive(Socks5Server(require_auth), chunks, auth_ok, reply_code) == whole
