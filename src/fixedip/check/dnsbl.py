"""DNS blocklists: the standard query (the address's octets reversed, or its nibbles
for IPv6, under the zone) and what the answer means.

An answer in 127.0.0.0/8 is a listing, NXDOMAIN is "not listed". Zones also answer
when they refuse to serve a query (Spamhaus: 127.255.255.252 typo in the zone name,
.254 query through a public resolver, .255 too many queries), and a resolver may
answer REFUSED or SERVFAIL: all of those are "unknown", never "clean".
"""

from __future__ import annotations

import ipaddress

from fixedip.check.report import Row, Status
from fixedip.check.resolver import DNSError, Resolver

# Zones that answer anyone's resolver (Barracuda's needs a registered one, so it is not
# a default; add it with --dnsbl b.barracudacentral.org once registered).
DEFAULT_ZONES = (
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "psbl.surriel.com",
)
LISTING = ipaddress.ip_network("127.0.0.0/8")
# Answers that mean "your query was not served", for every zone.
ERROR_ANSWERS = (ipaddress.ip_network("127.255.255.0/24"), ipaddress.ip_network("127.0.0.255/32"))
# Zones where a usually-listing code means "refused": URIBL and SURBL answer 127.0.0.1
# to resolvers they block.
ZONE_ERROR_ANSWERS = {
    "multi.uribl.com": {"127.0.0.1"},
    "multi.surbl.org": {"127.0.0.1"},
}
# Spamhaus PBL: "end-user or dynamic space, should not send mail directly" is a policy
# listing, not a report of abuse; an HTTPS API will rarely care.
POLICY_ANSWERS = {"zen.spamhaus.org": {"127.0.0.10", "127.0.0.11"}}


def query_name(ip: str, zone: str) -> str:
    """`7.113.0.203.zen.spamhaus.org` for 203.0.113.7; nibbles for IPv6."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        reversed_part = ".".join(reversed(str(address).split(".")))
    else:
        reversed_part = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_part}.{zone.strip('.')}"


def _is_error(zone: str, answer: str) -> bool:
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return True
    if answer in ZONE_ERROR_ANSWERS.get(zone, set()):
        return True
    return any(address in net for net in ERROR_ANSWERS)


def dnsbl_row(resolver: Resolver, ip: str, zone: str) -> Row:
    name = query_name(ip, zone)
    subject = f"{zone} {ip}"
    try:
        answer = resolver.query(name, "A")
    except DNSError as exc:
        return Row("blocklist", subject, Status.UNKNOWN, f"no answer: {exc}")
    if answer.rcode == "NXDOMAIN":
        return Row("blocklist", subject, Status.PASS, "not listed")
    if answer.rcode != "NOERROR":
        return Row(
            "blocklist", subject, Status.UNKNOWN, f"not checked: the query got {answer.rcode}"
        )
    if not answer.records:
        return Row("blocklist", subject, Status.PASS, "not listed (no A record)")
    codes = sorted(set(answer.records))
    data = {"query": name, "answers": codes}
    errors = [c for c in codes if _is_error(zone, c)]
    if errors:
        return Row(
            "blocklist",
            subject,
            Status.UNKNOWN,
            f"not checked: the zone refused the query ({', '.join(errors)}); query it "
            "through your own resolver, not a public one",
            data,
        )
    foreign = [c for c in codes if ipaddress.ip_address(c) not in LISTING]
    if foreign:
        return Row(
            "blocklist",
            subject,
            Status.UNKNOWN,
            f"not checked: {', '.join(foreign)} is not a blocklist answer (a resolver that "
            "rewrites NXDOMAIN?)",
            data,
        )
    reason = _txt(resolver, name)
    suffix = f": {reason}" if reason else ""
    if set(codes) <= POLICY_ANSWERS.get(zone, set()):
        return Row(
            "blocklist",
            subject,
            Status.WARN,
            f"policy listing ({', '.join(codes)}){suffix}; harmless for HTTPS, fatal for mail",
            data,
        )
    return Row("blocklist", subject, Status.FAIL, f"listed ({', '.join(codes)}){suffix}", data)


def _txt(resolver: Resolver, name: str) -> str:
    """The zone's explanation, when it publishes one (best effort)."""
    try:
        records = resolver.query(name, "TXT").records
    except DNSError:
        return ""
    return " ".join(r.strip('"') for r in records)[:200]
