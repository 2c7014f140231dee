"""SOCKS5 server side as a sans-IO state machine (RFC 1928 CONNECT, RFC 1929 auth).

The gateway feeds it whatever the client sent and gets back events; the machine never
touches a socket, so every framing rule and limit is tested and fuzzed in memory.

The flow, with the calls the gateway makes::

    GREETING -> [AUTH -> WAIT_AUTH --accept_auth()-->] REQUEST -> WAIT_CONNECT
             --reply(0)--> TUNNEL          (any failure: CLOSED)

What a caller may rely on:

- `feed()` never raises on any byte input. Malformed input ends in a single `Close`
  event, always the last event of its batch; the bytes in `data_to_send()` (if any)
  are the RFC reply to flush before disconnecting.
- At most one `AuthRequest` or `ConnectRequest` comes out of one `feed()`; parsing then
  pauses until `accept_auth()` or `reply()`. Bytes that arrive meanwhile are held, up to
  `MAX_PENDING_BYTES`. After `accept_auth(True)` call `feed(b"")` at once: a client that
  pipelined its request is waiting for an answer, not sending more.
- Retained memory is bounded: a message in progress is at most 513 bytes (the largest
  RFC 1929 request) and pending bytes at most `MAX_PENDING_BYTES`.
- Hosts are only checked for syntax. An IPv4 literal can arrive as a domain name and
  an IPv6 host can be IPv4-mapped, so the SSRF guard must vet the resolved address.

Example (no auth, IPv4)::

    >>> server = Socks5Server(require_auth=False)
    >>> server.feed(b"\\x05\\x01\\x00")
    []
    >>> server.data_to_send()
    b'\\x05\\x00'
    >>> server.feed(b"\\x05\\x01\\x00\\x01\\x5d\\xb8\\xd8\\x22\\x01\\xbb")
    [ConnectRequest(host='93.184.216.34', port=443, address_type=<AddressType.IPV4: 1>)]
    >>> server.reply(0)
    >>> server.data_to_send()
    b'\\x05\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'
    >>> server.state
    <State.TUNNEL: 'tunnel'>
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

# Bytes held while the caller decides (auth check, upstream connect). A well-behaved
# client sends nothing before the reply; optimistic clients send a first flight such
# as a TLS ClientHello, which fits easily.
MAX_PENDING_BYTES = 64 * 1024

_SOCKS_VERSION = 0x05
_AUTH_VERSION = 0x01  # RFC 1929 sub-negotiation version
_METHOD_NO_AUTH = 0x00
_METHOD_USERPASS = 0x02
_METHOD_NONE_ACCEPTABLE = 0xFF
_CMD_CONNECT = 0x01
_AUTH_OK = b"\x01\x00"
_AUTH_FAILED = b"\x01\x01"

# RFC 1928 section 6 reply codes used by the parser itself; the gateway's own codes
# come from `fixedip.policy.decision`.
_REPLY_SUCCEEDED = 0x00
_REPLY_GENERAL_FAILURE = 0x01
_REPLY_COMMAND_NOT_SUPPORTED = 0x07
_REPLY_ADDRESS_TYPE_NOT_SUPPORTED = 0x08

_HOST_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"


class State(StrEnum):
    """Where the handshake stands; WAIT_* states wait for the caller, not the client."""

    GREETING = "greeting"
    AUTH = "auth"
    REQUEST = "request"
    WAIT_AUTH = "wait_auth"
    WAIT_CONNECT = "wait_connect"
    TUNNEL = "tunnel"
    CLOSED = "closed"


class AddressType(IntEnum):
    """RFC 1928 ATYP values; an int, so it compares equal to the wire value."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class CloseReason(StrEnum):
    """Why the parser ended the connection; a str, so it logs as the bare word."""

    BAD_VERSION = "bad_version"
    NO_ACCEPTABLE_METHOD = "no_acceptable_method"
    BAD_REQUEST = "bad_request"
    COMMAND_NOT_SUPPORTED = "command_not_supported"
    ADDRESS_TYPE_NOT_SUPPORTED = "address_type_not_supported"
    PENDING_DATA_TOO_LARGE = "pending_data_too_large"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """RFC 1929 credentials, strictly UTF-8 (other bytes are refused, so logs stay safe).

    Answer with `Socks5Server.accept_auth()`.
    """

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A CONNECT to `host:port`; answer with `Socks5Server.reply()`.

    `host` is dotted IPv4, compressed IPv6 without brackets, or the domain name exactly
    as sent (letters, digits, '-', '.', '_'; case kept).
    """

    host: str
    port: int
    address_type: AddressType


@dataclass(frozen=True, slots=True)
class Close:
    """Disconnect the client after flushing `data_to_send()`."""

    reason: CloseReason


Event = AuthRequest | ConnectRequest | Close


class Socks5Server:
    """One client connection's SOCKS5 handshake, from greeting to open tunnel."""

    def __init__(self, require_auth: bool = True) -> None:
        self._require_auth = require_auth
        self._state = State.GREETING
        self._buffer = bytearray()
        self._outgoing = bytearray()

    @property
    def state(self) -> State:
        return self._state

    def feed(self, data: bytes) -> list[Event]:
        """Consume client bytes and return the events they complete, in order.

        Raises RuntimeError in TUNNEL: from then on bytes go straight upstream.
        """
        if self._state is State.TUNNEL:
            raise RuntimeError("feed() called after the tunnel opened; relay bytes directly")
        if self._state is State.CLOSED:
            return []
        self._buffer += data
        events: list[Event] = []
        while self._state in _PARSERS:
            before = self._state
            _PARSERS[before](self, events)
            if self._state is before:
                break  # the message in progress needs more bytes
        if len(self._buffer) > MAX_PENDING_BYTES:
            # Only WAIT_* states can get here: a message in progress is far smaller.
            answer = _AUTH_FAILED if self._state is State.WAIT_AUTH else _failure_reply()
            self._close(events, CloseReason.PENDING_DATA_TOO_LARGE, answer)
        return events

    def data_to_send(self) -> bytes:
        """Bytes owed to the client (method choice, auth status, reply); empties the queue."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def accept_auth(self, ok: bool) -> None:
        """Answer the `AuthRequest`: status 0x00 and go on, or 0x01 and close (RFC 1929).

        Ignored once CLOSED, since the client may be dropped while the check runs.
        """
        if self._state is State.CLOSED:
            return
        if self._state is not State.WAIT_AUTH:
            raise RuntimeError(f"accept_auth() called in state {self._state}, not wait_auth")
        if ok:
            self._outgoing += _AUTH_OK
            self._state = State.REQUEST
        else:
            self._outgoing += _AUTH_FAILED
            self._shut()

    def reply(
        self,
        code: int,
        bind_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
        bind_port: int = 0,
    ) -> None:
        """Answer the `ConnectRequest` (RFC 1928 section 6): 0 opens the tunnel, else close.

        The bind address defaults to 0.0.0.0:0. Ignored once CLOSED, since the client may
        be dropped while the upstream connect runs.
        """
        if not 0 <= code <= 0xFF:
            raise ValueError(f"reply code must fit in one byte, got {code}")
        if not 0 <= bind_port <= 0xFFFF:
            raise ValueError(f"bind_port must be 0..65535, got {bind_port}")
        if self._state is State.CLOSED:
            return
        if self._state is not State.WAIT_CONNECT:
            raise RuntimeError(f"reply() called in state {self._state}, not wait_connect")
        self._outgoing += _reply_bytes(code, bind_address, bind_port)
        if code == _REPLY_SUCCEEDED:
            self._state = State.TUNNEL
        else:
            self._shut()

    def take_leftover(self) -> bytes:
        """Bytes the client sent after its CONNECT request, to forward first; empties them.

        Only valid in TUNNEL, so no early byte is lost or sent before the tunnel opens.
        """
        if self._state is not State.TUNNEL:
            raise RuntimeError(f"take_leftover() called in state {self._state}, not tunnel")
        leftover = bytes(self._buffer)
        self._buffer.clear()
        return leftover

    # RFC 1928 section 3: VER NMETHODS METHODS
    def _parse_greeting(self, events: list[Event]) -> None:
        buf = self._buffer
        if not buf:
            return
        if buf[0] != _SOCKS_VERSION:
            # Not SOCKS5 (SOCKS4, HTTP, noise): there is no reply the client would read.
            self._close(events, CloseReason.BAD_VERSION)
            return
        if len(buf) < 2:
            return
        count = buf[1]
        if len(buf) < 2 + count:
            return
        methods = bytes(buf[2 : 2 + count])
        del buf[: 2 + count]
        method = self._choose_method(methods)
        self._outgoing += bytes([_SOCKS_VERSION, method])
        if method == _METHOD_NONE_ACCEPTABLE:
            self._close(events, CloseReason.NO_ACCEPTABLE_METHOD)
        elif method == _METHOD_USERPASS:
            self._state = State.AUTH
        else:
            self._state = State.REQUEST

    def _choose_method(self, methods: bytes) -> int:
        # An empty list (NMETHODS 0) offers nothing, so it gets the same 05 FF refusal.
        if not self._require_auth and _METHOD_NO_AUTH in methods:
            return _METHOD_NO_AUTH
        if _METHOD_USERPASS in methods:
            return _METHOD_USERPASS
        return _METHOD_NONE_ACCEPTABLE

    # RFC 1929 section 2: VER ULEN UNAME PLEN PASSWD
    def _parse_auth(self, events: list[Event]) -> None:
        buf = self._buffer
        if not buf:
            return
        if buf[0] != _AUTH_VERSION:
            self._close(events, CloseReason.BAD_VERSION, _AUTH_FAILED)
            return
        if len(buf) < 2:
            return
        ulen = buf[1]
        if ulen == 0:
            self._close(events, CloseReason.BAD_REQUEST, _AUTH_FAILED)
            return
        if len(buf) < 3 + ulen:
            return
        plen = buf[2 + ulen]
        if plen == 0:
            self._close(events, CloseReason.BAD_REQUEST, _AUTH_FAILED)
            return
        end = 3 + ulen + plen
        if len(buf) < end:
            return
        try:
            username = bytes(buf[2 : 2 + ulen]).decode("utf-8")
            password = bytes(buf[3 + ulen : end]).decode("utf-8")
        except UnicodeDecodeError:
            self._close(events, CloseReason.BAD_REQUEST, _AUTH_FAILED)
            return
        del buf[:end]
        self._state = State.WAIT_AUTH
        events.append(AuthRequest(username=username, password=password))

    # RFC 1928 section 4: VER CMD RSV ATYP DST.ADDR DST.PORT. Fields are checked in wire
    # order as soon as they arrive, so the outcome never depends on how bytes are split.
    def _parse_request(self, events: list[Event]) -> None:
        buf = self._buffer
        if not buf:
            return
        if buf[0] != _SOCKS_VERSION:
            self._close(events, CloseReason.BAD_VERSION, _failure_reply())
            return
        if len(buf) < 2:
            return
        if buf[1] != _CMD_CONNECT:
            # BIND, UDP ASSOCIATE and unassigned commands alike.
            reply = _failure_reply(_REPLY_COMMAND_NOT_SUPPORTED)
            self._close(events, CloseReason.COMMAND_NOT_SUPPORTED, reply)
            return
        if len(buf) < 3:
            return
        if buf[2] != 0x00:
            self._close(events, CloseReason.BAD_REQUEST, _failure_reply())
            return
        if len(buf) < 4:
            return
        atyp = buf[3]
        if atyp == AddressType.IPV4:
            start, size = 4, 4
        elif atyp == AddressType.IPV6:
            start, size = 4, 16
        elif atyp == AddressType.DOMAIN:
            if len(buf) < 5:
                return
            start, size = 5, buf[4]
        else:
            reply = _failure_reply(_REPLY_ADDRESS_TYPE_NOT_SUPPORTED)
            self._close(events, CloseReason.ADDRESS_TYPE_NOT_SUPPORTED, reply)
            return
        end = start + size
        if len(buf) < end:
            return
        address_type = AddressType(atyp)
        host = _host_text(address_type, bytes(buf[start:end]))
        if host is None:
            self._close(events, CloseReason.BAD_REQUEST, _failure_reply())
            return
        if len(buf) < end + 2:
            return
        port = int.from_bytes(buf[end : end + 2], "big")
        if port == 0:
            self._close(events, CloseReason.BAD_REQUEST, _failure_reply())
            return
        del buf[: end + 2]
        self._state = State.WAIT_CONNECT
        events.append(ConnectRequest(host=host, port=port, address_type=address_type))

    def _close(self, events: list[Event], reason: CloseReason, answer: bytes = b"") -> None:
        self._outgoing += answer
        events.append(Close(reason))
        self._shut()

    def _shut(self) -> None:
        self._state = State.CLOSED
        self._buffer.clear()


# What reads the message each state waits for. Unbound: a table of bound methods on each
# server would be a reference cycle per connection, freed only by the garbage collector.
_PARSERS: dict[State, Callable[[Socks5Server, list[Event]], None]] = {
    State.GREETING: Socks5Server._parse_greeting,
    State.AUTH: Socks5Server._parse_auth,
    State.REQUEST: Socks5Server._parse_request,
}


def _host_text(address_type: AddressType, raw: bytes) -> str | None:
    """The host as text, or None when a domain name is empty or has a forbidden byte."""
    if address_type is AddressType.IPV4:
        return str(ipaddress.IPv4Address(raw))
    if address_type is AddressType.IPV6:
        return str(ipaddress.IPv6Address(raw))
    # translate() with a delete table leaves only the bytes outside the allowed set.
    if not raw or raw.translate(None, _HOST_BYTES):
        return None
    return raw.decode("ascii")


def _failure_reply(code: int = _REPLY_GENERAL_FAILURE) -> bytes:
    return _reply_bytes(code, None, 0)


def _reply_bytes(
    code: int,
    bind_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
    bind_port: int,
) -> bytes:
    # RFC 1928 section 6: VER REP RSV ATYP BND.ADDR BND.PORT
    address = ipaddress.IPv4Address(0) if bind_address is None else bind_address
    atyp = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    head = bytes([_SOCKS_VERSION, code, 0x00, atyp])
    return head + address.packed + bind_port.to_bytes(2, "big")
