"""SOCKS5 through the real gateway: malformed input gets the right reply and a closed
connection, and authentication cannot be skipped."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.helpers import TOKENS, RunningGateway

USER, PASSWORD = b"billing", TOKENS["billing"].encode()
AUTH = bytes([1, len(USER)]) + USER + bytes([len(PASSWORD)]) + PASSWORD
LOOPBACK_443 = b"\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", 443)


def converse(gw: RunningGateway, *sends: bytes, timeout: float = 3.0) -> bytes:
    """Send each piece, then read everything until the gateway closes."""
    with socket.create_connection(gw.socks, timeout=timeout) as s:
        for piece in sends:
            s.sendall(piece)
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            raise AssertionError(f"the gateway kept the connection open after {out!r}") from None
    return out


@pytest.mark.parametrize(
    ("greeting", "answer"),
    [
        pytest.param(
            b"\x04\x01\x00\x50" + socket.inet_aton("127.0.0.1") + b"\x00", b"", id="socks4"
        ),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", b"", id="http-on-the-socks-port"),
        pytest.param(b"\x05\x00", b"\x05\xff", id="no-methods"),
        pytest.param(b"\x05\x01\x00", b"\x05\xff", id="only-no-auth-offered"),
        pytest.param(b"\x05\x02\x00\x01", b"\x05\xff", id="no-auth-and-gssapi"),
    ],
)
def test_malformed_or_unacceptable_greeting_is_answered_and_closed(
    gateway: RunningGateway, greeting: bytes, answer: bytes
) -> None:
    assert converse(gateway, greeting) == answer


@pytest.mark.parametrize(
    ("request_", "reply_code"),
    [
        pytest.param(b"\x05\x02\x00" + LOOPBACK_443, 0x07, id="bind"),
        pytest.param(b"\x05\x03\x00" + LOOPBACK_443, 0x07, id="udp-associate"),
        pytest.param(b"\x05\x09\x00" + LOOPBACK_443, 0x07, id="unknown-command"),
        pytest.param(b"\x05\x01\x00\x02" + b"\x00" * 6, 0x08, id="address-type-2"),
        pytest.param(b"\x05\x01\x00\x05" + b"\x00" * 6, 0x08, id="address-type-5"),
        pytest.param(b"\x05\x01\x01" + LOOPBACK_443, 0x01, id="reserved-byte-set"),
        pytest.param(b"\x05\x01\x00\x03\x00\x01\xbb", 0x01, id="empty-domain"),
        pytest.param(b"\x05\x01\x00\x03\x05ev\x00l!\x01\xbb", 0x01, id="nul-in-domain"),
    ],
)
def test_bad_request_gets_its_reply_code_and_a_close(
    gateway: RunningGateway, request_: bytes, reply_code: int
) -> None:
    out = converse(gateway, b"\x05\x01\x02", AUTH, request_)
    assert out[:4] == b"\x05\x02\x01\x00"  # method chosen, credentials accepted
    assert out[4:6] == bytes([5, reply_code])


def test_request_sent_instead_of_credentials_is_refused(gateway: RunningGateway) -> None:
    # Offering user/password and then skipping straight to a CONNECT: the request bytes
    # are read as the sub-negotiation (version 5, not 1) and refused.
    out = converse(gateway, b"\x05\x01\x02", b"\x05\x01\x00" + LOOPBACK_443)
    assert out == b"\x05\x02\x01\x01"


def test_wrong_password_cannot_be_followed_by_a_request(gateway: RunningGateway) -> None:
    bad = bytes([1, len(USER)]) + USER + b"\x05wrong"
    out = converse(gateway, b"\x05\x01\x02" + bad + b"\x05\x01\x00" + LOOPBACK_443)
    assert out == b"\x05\x02\x01\x01"


def test_garbage_after_a_failed_handshake_is_never_parsed(gateway: RunningGateway) -> None:
    out = converse(
        gateway, b"\x05\x01\x00" + b"\x05\x01\x02" + AUTH + b"\x05\x01\x00" + LOOPBACK_443
    )
    assert out == b"\x05\xff"
