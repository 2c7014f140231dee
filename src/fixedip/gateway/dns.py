"""Name resolution for upstream connections: resolve once, cache within the TTL.

The gateway vets the addresses it gets here and then connects to a vetted address,
never to the name, so a rebinding answer cannot slip past the guard. With
`dns.servers` set, queries go to those servers over UDP (dnslib builds and parses the
packets); otherwise the system resolver is used, cached for at most
`SYSTEM_TTL_S` since getaddrinfo reports no TTL. Concurrent lookups of one name share
one query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence

from dnslib import QTYPE, RCODE, DNSRecord

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SYSTEM_TTL_S = 30
NEGATIVE_TTL_S = 5
MAX_UDP_ANSWER_BYTES = 4096


class DNSError(Exception):
    """The name has no usable address (NXDOMAIN, no answer, timeout, server failure)."""


class _UDPQuery(asyncio.DatagramProtocol):
    def __init__(self, expected_id: int) -> None:
        self.expected_id = expected_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.answer.done() or len(data) > MAX_UDP_ANSWER_BYTES:
            return
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.expected_id:
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class Resolver:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]] = (),
        *,
        timeout_s: float = 3.0,
        cache_size: int = 10_000,
        max_ttl_s: int = 300,
    ) -> None:
        self._servers = list(servers)
        self._timeout = timeout_s
        self._cache_size = cache_size
        self._max_ttl = max_ttl_s
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[IPAddress] | None]] = (
            OrderedDict()
        )
        self._inflight: dict[tuple[str, int], asyncio.Future[list[IPAddress]]] = {}

    def cached(self, host: str, families: frozenset[int]) -> list[IPAddress] | None:
        """The cached answer if one is fresh, without waiting; the same list object is
        returned for as long as it stays cached (callers may memoise on its identity)."""
        hit = self._cache.get((host, hash(families)))
        if hit is not None and hit[0] > time.monotonic() and hit[1] is not None:
            return hit[1]
        return None

    async def resolve(self, host: str, families: frozenset[int]) -> list[IPAddress]:
        """Addresses of `host` in the given families (AF_INET / AF_INET6), in answer order."""
        key = (host, hash(families))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            expires, addrs = hit
            if expires > now:
                if addrs is None:
                    raise DNSError(f"{host}: no address (cached)")
                return addrs
            del self._cache[key]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[list[IPAddress]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            addrs, ttl = await self._lookup(host, families)
        except DNSError as exc:
            self._store(key, None, NEGATIVE_TTL_S)
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters get it through shield
            raise
        except BaseException as exc:
            fut.set_exception(DNSError(f"{host}: lookup failed"))
            fut.exception()
            raise DNSError(f"{host}: lookup failed") from exc
        else:
            self._store(key, addrs, min(ttl, self._max_ttl))
            fut.set_result(addrs)
            return addrs
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: tuple[str, int], addrs: list[IPAddress] | None, ttl: float) -> None:
        if self._cache_size <= 0 or ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, addrs)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _lookup(self, host: str, families: frozenset[int]) -> tuple[list[IPAddress], float]:
        if self._servers:
            return await self._query_servers(host, families)
        return await self._system(host, families)

    async def _system(self, host: str, families: frozenset[int]) -> tuple[list[IPAddress], float]:
        family = socket.AF_UNSPEC if len(families) != 1 else next(iter(families))
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM),
                self._timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise DNSError(f"{host}: {getattr(exc, 'strerror', None) or 'timed out'}") from None
        addrs: list[IPAddress] = []
        for fam, _, _, _, sockaddr in infos:
            if fam not in families:
                continue
            addr = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if addr not in addrs:
                addrs.append(addr)
        if not addrs:
            raise DNSError(f"{host}: no address of a family the egress pool can use")
        return addrs, SYSTEM_TTL_S

    async def _query_servers(
        self, host: str, families: frozenset[int]
    ) -> tuple[list[IPAddress], float]:
        qtypes = []
        if socket.AF_INET in families:
            qtypes.append("A")
        if socket.AF_INET6 in families:
            qtypes.append("AAAA")
        results = await asyncio.gather(
            *(self._query(host, q) for q in qtypes), return_exceptions=True
        )
        addrs: list[IPAddress] = []
        ttl = float(self._max_ttl)
        errors = []
        for res in results:
            if isinstance(res, BaseException):
                errors.append(res)
                continue
            found, found_ttl = res
            addrs += [a for a in found if a not in addrs]
            if found:
                ttl = min(ttl, found_ttl)
        if not addrs:
            reason = str(errors[0]) if errors else f"{host}: no address"
            raise DNSError(reason)
        return addrs, ttl

    async def _query(self, host: str, qtype: str) -> tuple[list[IPAddress], float]:
        last: Exception | None = None
        for server in self._servers:
            try:
                return await self._query_one(server, host, qtype)
            except DNSError:
                raise
            except (OSError, TimeoutError) as exc:
                last = exc
        raise DNSError(f"{host}: no DNS server answered ({last or 'timeout'})")

    async def _query_one(
        self, server: tuple[str, int], host: str, qtype: str
    ) -> tuple[list[IPAddress], float]:
        request = DNSRecord.question(host, qtype)
        request.header.id = random.randrange(1 << 16)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _UDPQuery(request.header.id), remote_addr=server
        )
        try:
            transport.sendto(request.pack())
            data = await asyncio.wait_for(proto.answer, self._timeout)
        finally:
            transport.close()
        try:
            reply = DNSRecord.parse(data)
        except Exception as exc:  # dnslib raises several kinds on garbage
            raise OSError(f"unparseable DNS answer from {server[0]}") from exc
        rcode = reply.header.rcode
        if rcode == RCODE.NXDOMAIN:
            raise DNSError(f"{host}: no such name")
        if rcode != RCODE.NOERROR:
            raise OSError(f"DNS server {server[0]} answered {RCODE.get(rcode)}")
        want = getattr(QTYPE, qtype)
        addrs: list[IPAddress] = []
        ttl = float(self._max_ttl)
        for rr in reply.rr:
            if rr.rtype == want:
                addr = ipaddress.ip_address(str(rr.rdata))
                if addr not in addrs:
                    addrs.append(addr)
                ttl = min(ttl, rr.ttl)
        return addrs, ttl
