"""Reverse DNS: the PTR name of an egress IP, and whether that name resolves back to it.

Vendors' fraud and abuse systems, and every mail server, trust a forward-confirmed
PTR more than none; a generic cloud name (ec2-…compute.amazonaws.com) still tells them
whose network the address is in.
"""

from __future__ import annotations

import ipaddress

from fixedip.check.report import Row, Status
from fixedip.check.resolver import DNSError, Resolver

MAX_PTR_NAMES = 4  # forward-check at most this many names of one PTR answer


def rdns_row(resolver: Resolver, ip: str) -> Row:
    address = ipaddress.ip_address(ip)
    try:
        answer = resolver.query(address.reverse_pointer, "PTR")
    except DNSError as exc:
        return Row("reverse dns", ip, Status.UNKNOWN, f"no answer: {exc}")
    if answer.rcode not in ("NOERROR", "NXDOMAIN"):
        return Row("reverse dns", ip, Status.UNKNOWN, f"the resolver answered {answer.rcode}")
    names = [r.rstrip(".") for r in answer.records][:MAX_PTR_NAMES]
    if not names:
        return Row(
            "reverse dns",
            ip,
            Status.WARN,
            "no PTR record: ask the address's owner (your cloud) for one that resolves back",
        )
    qtype = "A" if address.version == 4 else "AAAA"
    forward: dict[str, list[str]] = {}
    for name in names:
        try:
            forward[name] = resolver.query(name, qtype).records
        except DNSError as exc:
            return Row("reverse dns", ip, Status.UNKNOWN, f"PTR {name}; {qtype} lookup: {exc}")
    data = {"ptr": names, "forward": forward}
    confirmed = [n for n, addrs in forward.items() if any(_same(a, address) for a in addrs)]
    if confirmed:
        return Row("reverse dns", ip, Status.PASS, f"{confirmed[0]}, forward-confirmed", data)
    shown = ", ".join(f"{n} → {', '.join(a) or 'nothing'}" for n, a in forward.items())
    return Row("reverse dns", ip, Status.WARN, f"PTR does not resolve back to {ip}: {shown}", data)


def _same(text: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False
