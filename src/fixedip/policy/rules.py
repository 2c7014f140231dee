"""Per-client destination rules: which `host:port` a client may reach.

A rule is `host:port`. The host is an exact DNS name, `*.example.com` (any depth of
subdomain, never the apex), `*` (anything), or an address or CIDR matched against the
resolved address (IPv6 in brackets: `[2001:db8::]/32:443`). The port is a number, a range
`8000-8100` or `*`. Deny rules win over allow rules.

`RuleSet.prefilter` runs before DNS, so a name no rule can allow is refused without a
lookup; `RuleSet.decide` runs on the address the guard vetted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fixedip.policy.decision import Decision, Reason
from fixedip.policy.guard import IPAddress, IPNetwork

MAX_PORT = 65535
MAX_NAME_CHARS = 253  # RFC 1035 section 2.3.4, without the trailing dot
MAX_LABEL_CHARS = 63

_LABEL = re.compile(r"[a-z0-9_-]+")
_PORT_NUMBER = re.compile(r"[0-9]{1,5}")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")
_PORT_HINT = "write a number 1-65535, a range such as 8000-8100, or *"

_NOT_ALLOWED = Decision(Reason.DESTINATION_NOT_ALLOWED)


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed `host:port` rule; build it with `parse_rule`.

    `host` is a lowercase exact name, `*.suffix` or `*`, and None for address rules,
    which carry `network` instead.
    """

    text: str
    host: str | None
    network: IPNetwork | None
    port_lo: int
    port_hi: int

    def matches_name(self, host: str, port: int) -> bool:
        """Whether the rule covers a normalised host name (see `normalise_host`).

        Address rules never match by name, and name rules never match an IP literal:
        only `*` does.
        """
        if not self.port_lo <= port <= self.port_hi or self.host is None:
            return False
        if self.host == "*":
            return True
        if _is_ip_literal(host):
            return False
        if self.host.startswith("*."):
            suffix = self.host[1:]
            return len(host) > len(suffix) and host.endswith(suffix)
        return host == self.host

    def matches_address(self, address: IPAddress, port: int) -> bool:
        """Whether an address rule (or `*`) covers a resolved address.

        An IPv4-mapped IPv6 address is judged as the IPv4 address it reaches, so
        `10.0.0.0/8:*` also denies `::ffff:10.0.0.1`.
        """
        if not self.port_lo <= port <= self.port_hi:
            return False
        if self.network is None:
            return self.host == "*"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in self.network


def normalise_host(host: str) -> str:
    """The form rules compare against: lowercase, one trailing dot and IPv6 brackets gone."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host[:-1] if host.endswith(".") else host


def parse_rule(text: str) -> Rule:
    """Parse one `host:port` rule; a ValueError says what is wrong and how to write it."""
    rule = text.strip()
    if not rule:
        raise ValueError("a rule is empty: write host:port, e.g. api.example.com:443")
    split = _split_bracketed if rule.startswith("[") else _split_plain
    host, network, port_text = split(rule)
    port_lo, port_hi = _parse_port(rule, port_text)
    return Rule(text=rule, host=host, network=network, port_lo=port_lo, port_hi=port_hi)


class RuleSet:
    """One client's allow and deny rules; deny rules win.

    Hosts may be passed as the client sent them: they are normalised here, so a deny
    rule cannot be dodged by case or a trailing dot.
    """

    __slots__ = ("_allow", "_allow_address_rules", "_deny")

    def __init__(self, allow: Sequence[Rule], deny: Sequence[Rule] = ()) -> None:
        self._allow = tuple(allow)
        self._deny = tuple(deny)
        self._allow_address_rules = tuple(rule for rule in self._allow if rule.network is not None)

    def prefilter(self, host: str, port: int) -> Decision | None:
        """A refusal that needs no DNS lookup, or None when the address must decide."""
        host = normalise_host(host)
        for rule in self._deny:
            if rule.matches_name(host, port):
                return Decision(Reason.DESTINATION_DENIED, rule=rule.text)
        if any(rule.matches_name(host, port) for rule in self._allow):
            return None
        if any(rule.port_lo <= port <= rule.port_hi for rule in self._allow_address_rules):
            return None
        return _NOT_ALLOWED

    def decide(self, host: str, port: int, address: IPAddress) -> Decision:
        """The verdict on `host:port` once it resolved to the vetted `address`."""
        host = normalise_host(host)
        for rule in self._deny:
            if rule.matches_name(host, port) or rule.matches_address(address, port):
                return Decision(Reason.DESTINATION_DENIED, rule=rule.text)
        for rule in self._allow:
            if rule.matches_name(host, port) or rule.matches_address(address, port):
                return Decision(Reason.ALLOWED, rule=rule.text)
        return _NOT_ALLOWED


def _is_ip_literal(host: str) -> bool:
    # Names never contain ':', and a name's last label is never all digits (rules with
    # one are refused), so this is cheap and cannot mistake a name rule's target.
    return ":" in host or host.rpartition(".")[2].isdigit()


def _split_bracketed(rule: str) -> tuple[str | None, IPNetwork | None, str]:
    close = rule.find("]")
    if close < 0:
        raise ValueError(f"'{rule}' opens '[' but never closes it: write e.g. [2001:db8::1]:443")
    inside, rest = rule[1:close], rule[close + 1 :]
    prefix, colon, port_text = rest.rpartition(":")
    if not colon:
        raise ValueError(f"'{rule}' has no port: write e.g. [2001:db8::1]:443 or [2001:db8::1]:*")
    if prefix and not prefix.startswith("/"):
        raise ValueError(
            f"'{rule}' has '{prefix}' after the address: write [address]:port "
            "or [network]/length:port, e.g. [2001:db8::]/32:443"
        )
    if "%" in inside:
        raise ValueError(f"'{rule}' has a zone id: rules name addresses without '%interface'")
    try:
        ipaddress.IPv6Address(inside.partition("/")[0])
    except ValueError:
        if _DOTTED_DIGITS.fullmatch(inside.partition("/")[0]):
            raise ValueError(
                f"'{rule}' puts an IPv4 address in brackets: brackets are for IPv6, "
                f"write {inside}{rest}"
            ) from None
        raise ValueError(f"'{rule}': '{inside}' is not a valid IPv6 address") from None
    return None, _parse_network(rule, inside + prefix, ipaddress.IPv6Network), port_text


def _split_plain(rule: str) -> tuple[str | None, IPNetwork | None, str]:
    host, colon, port_text = rule.rpartition(":")
    if not colon:
        raise ValueError(f"'{rule}' has no port: write host:port, e.g. {rule}:443 or {rule}:*")
    if ":" in host:
        raise ValueError(
            f"'{rule}' looks like an IPv6 address without brackets: "
            "write [2001:db8::1]:443 or [2001:db8::]/32:443"
        )
    if not host:
        raise ValueError(f"'{rule}' has no host: write host:port, e.g. api.example.com{rule}")
    if host == "*":
        return "*", None, port_text
    if "/" in host or _DOTTED_DIGITS.fullmatch(host):
        return None, _parse_network(rule, host, ipaddress.IPv4Network), port_text
    return _parse_name(rule, host), None, port_text


def _parse_network(
    rule: str,
    spelled: str,
    kind: type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network],
) -> IPNetwork:
    family = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    try:
        return kind(spelled)
    except ValueError:
        pass
    try:
        loose = kind(spelled, strict=False)
    except ValueError as error:
        raise ValueError(
            f"'{rule}': '{spelled}' is not a valid {family} address or network ({error})"
        ) from None
    raise ValueError(
        f"'{rule}': {spelled} has host bits set: write the network address, e.g. {loose}"
    )


def _parse_name(rule: str, host: str) -> str:
    if not host.isascii():
        raise ValueError(
            f"'{rule}' has a non-ASCII name: write it in its ASCII (punycode) form"
            f"{_punycode_hint(host)}"
        )
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"'{rule}' has a name longer than {MAX_NAME_CHARS} characters")
    if name == "*":
        raise ValueError(f"'{rule}' has nothing after '*.': write *.example.com:443, or *:443")
    labels = name.split(".")
    for index, label in enumerate(labels):
        if label == "*" and index == 0 and len(labels) > 1:
            continue
        if "*" in label:
            raise ValueError(
                f"'{rule}': '*' may only stand alone as the first label, "
                "e.g. *.example.com:443 (or * for any host)"
            )
        if not label:
            raise ValueError(
                f"'{rule}' has an empty label in '{host}' (two dots, or a dot at an end)"
            )
        if len(label) > MAX_LABEL_CHARS:
            raise ValueError(f"'{rule}' has a label longer than {MAX_LABEL_CHARS} characters")
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"'{rule}': '{label}' is not a valid name label (letters, digits, '-' and '_' only)"
            )
    if labels[-1].isdigit():
        raise ValueError(
            f"'{rule}': '{host}' is neither an IPv4 address nor a name "
            "(a name's last label is never all digits)"
        )
    return name


def _punycode_hint(host: str) -> str:
    try:
        return f", e.g. {host.encode('idna').decode('ascii')}"
    except UnicodeError:
        return ""


def _parse_port(rule: str, text: str) -> tuple[int, int]:
    if text == "*":
        return 1, MAX_PORT
    lo_text, dash, hi_text = text.partition("-")
    if dash and not (lo_text and hi_text):
        raise ValueError(f"'{rule}': the port range '{text}' needs two numbers, e.g. 8000-8100")
    lo = _port_number(rule, lo_text)
    hi = _port_number(rule, hi_text) if dash else lo
    if lo > hi:
        raise ValueError(
            f"'{rule}': the port range {text} is backwards: write the lower port first, "
            f"e.g. {hi}-{lo}"
        )
    return lo, hi


def _port_number(rule: str, text: str) -> int:
    if not text:
        raise ValueError(f"'{rule}' has an empty port: {_PORT_HINT}")
    if not _PORT_NUMBER.fullmatch(text):
        if text.isascii() and text.isdigit():
            raise ValueError(f"'{rule}': port {text} is out of range: ports are 1-{MAX_PORT}")
        raise ValueError(f"'{rule}': port '{text}' is not a number: {_PORT_HINT}")
    port = int(text)
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"'{rule}': port {port} is out of range: ports are 1-{MAX_PORT}")
    return port
