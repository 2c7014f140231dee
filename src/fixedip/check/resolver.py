"""A small stub resolver (dnslib for the wire format) that asks one configurable server.

`fixedip check` needs the raw answer, not the system resolver's view: a blocklist tells
"listed", "clean" (NXDOMAIN) and "I refuse to answer you" apart only in the return code
and the answer records, and the tests point it at a dnslib server on loopback.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from dnslib import QTYPE, RCODE, DNSRecord

QUERY_TIMEOUT_S = 3.0
MAX_TCP_ANSWER_BYTES = 65535
RESOLV_CONF = Path("/etc/resolv.conf")


class DNSError(Exception):
    """No usable answer (timeout, unreachable server, garbage)."""


@dataclass(frozen=True)
class Answer:
    rcode: str  # "NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", …
    records: list[str] = field(default_factory=list)  # rdata of answers of the asked type


def system_resolver() -> tuple[str, int] | None:
    """The first nameserver in /etc/resolv.conf."""
    try:
        lines = RESOLV_CONF.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1], 53
    return None


def parse_server(text: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]:PORT` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"resolver {text!r}: expected HOST or HOST:PORT, e.g. 127.0.0.1:53")
    return host, int(port)


class Resolver:
    def __init__(self, server: tuple[str, int], timeout_s: float = QUERY_TIMEOUT_S) -> None:
        self.server = server
        self.timeout_s = timeout_s

    def query(self, name: str, qtype: str) -> Answer:
        request = DNSRecord.question(name, qtype)
        request.header.id = secrets.randbelow(65536)
        reply = self._udp(request)
        if reply.header.tc:
            reply = self._tcp(request)
        wanted = getattr(QTYPE, qtype)
        records = [str(rr.rdata) for rr in reply.rr if rr.rtype == wanted]
        return Answer(RCODE.get(reply.header.rcode, str(reply.header.rcode)), records)

    def _family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.server[0] else socket.AF_INET

    def _check(self, request: DNSRecord, data: bytes) -> DNSRecord | None:
        try:
            reply = DNSRecord.parse(data)
        except Exception:  # dnslib raises its own DNSError and struct errors
            return None
        if reply.questions:
            ours = reply.questions[0].qname == request.q.qname
        else:  # some servers drop the question from a truncated answer
            ours = bool(reply.header.tc)
        if reply.header.id != request.header.id or not ours:
            return None
        return reply

    def _udp(self, request: DNSRecord) -> DNSRecord:
        deadline = time.monotonic() + self.timeout_s
        with socket.socket(self._family(), socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self.server)
                sock.send(request.pack())
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    reply = self._check(request, sock.recv(4096))
                    if reply is not None:  # anything else is a stray or spoofed datagram
                        return reply
            except TimeoutError:
                pass
            except OSError as exc:
                raise DNSError(f"{self._shown()}: {exc.strerror or exc}") from None
        raise DNSError(f"{self._shown()} did not answer within {self.timeout_s:g} s")

    def _tcp(self, request: DNSRecord) -> DNSRecord:
        payload = request.pack()
        try:
            with socket.create_connection(self.server, timeout=self.timeout_s) as sock:
                sock.sendall(struct.pack("!H", len(payload)) + payload)
                data = b""
                while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                    chunk = sock.recv(MAX_TCP_ANSWER_BYTES)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise DNSError(f"{self._shown()} over TCP: {exc.strerror or exc}") from None
        reply = self._check(request, data[2:])
        if reply is None:
            raise DNSError(f"{self._shown()} sent a malformed answer over TCP")
        return reply

    def _shown(self) -> str:
        host, port = self.server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
