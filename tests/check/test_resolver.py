"""The stub resolver `fixedip check` uses: TCP when the UDP answer is truncated, and
only the answer to its own question (a stray or spoofed datagram is ignored)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from fixedip.check.resolver import DNSError, Resolver, parse_server
from tests.check.conftest import Zone


def test_a_truncated_udp_answer_is_asked_again_over_tcp(zone: Zone) -> None:
    names = [f"host-{i:02d}.a-rather-long-reverse-name.example.test" for i in range(20)]
    zone.records[("10.113.0.203.in-addr.arpa", "PTR")] = names  # ~1 KB: more than UDP's 512
    answer = Resolver(("127.0.0.1", zone.port)).query("10.113.0.203.in-addr.arpa", "PTR")
    assert answer.rcode == "NOERROR"
    assert [r.rstrip(".") for r in answer.records] == names
    assert zone.queries.count(("10.113.0.203.in-addr.arpa", "PTR")) == 2  # UDP, then TCP


class _Spoofer:
    """Answers every query twice: first with a wrong id (a spoofing attempt), then
    correctly."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            request = DNSRecord.parse(data)
            forged = request.reply()
            forged.header.id = (request.header.id + 1) % 65536
            forged.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("198.51.100.66")))
            real = request.reply()
            real.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("203.0.113.10")))
            self.sock.sendto(forged.pack(), peer)
            self.sock.sendto(real.pack(), peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def spoofer() -> Iterator[_Spoofer]:
    server = _Spoofer()
    yield server
    server.close()


def test_an_answer_with_the_wrong_id_is_ignored(spoofer: _Spoofer) -> None:
    answer = Resolver(("127.0.0.1", spoofer.port)).query("gw-a.example.test", "A")
    assert answer.records == ["203.0.113.10"]


def test_a_silent_server_is_an_error_not_an_empty_answer() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(DNSError, match="did not answer"):
            Resolver(("127.0.0.1", silent.getsockname()[1]), timeout_s=0.3).query("x.test", "A")
    finally:
        silent.close()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
     ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53))],
)  # fmt: skip
def test_resolver_addresses(text: str, parsed: tuple[str, int]) -> None:
    assert parse_server(text) == parsed


def test_a_bad_resolver_address_is_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_server("127.0.0.1:dns")
