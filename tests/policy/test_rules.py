"""Destination rules: parsing every form, matching, deny-over-allow, and the prefilter."""

from __future__ import annotations

import ipaddress
import re

import pytest

from fixedip.policy.decision import Decision, Reason
from fixedip.policy.rules import Rule, RuleSet, normalise_host, parse_rule


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def rules(*texts: str) -> list[Rule]:
    return [parse_rule(text) for text in texts]


PUBLIC_V4 = ip("93.184.215.14")


# parsing


@pytest.mark.parametrize(
    ("text", "host", "network", "ports"),
    [
        ("api.example.com:443", "api.example.com", None, (443, 443)),
        ("API.Example.COM:443", "api.example.com", None, (443, 443)),
        ("api.example.com.:443", "api.example.com", None, (443, 443)),
        ("my_host-1.example.com:22", "my_host-1.example.com", None, (22, 22)),
        ("*.example.com:443", "*.example.com", None, (443, 443)),
        ("*:*", "*", None, (1, 65535)),
        ("api.example.com:8000-8100", "api.example.com", None, (8000, 8100)),
        ("api.example.com:443-443", "api.example.com", None, (443, 443)),
        ("api.example.com:*", "api.example.com", None, (1, 65535)),
        ("api.example.com:65535", "api.example.com", None, (65535, 65535)),
        ("203.0.113.7:443", None, "203.0.113.7/32", (443, 443)),
        ("203.0.113.0/24:*", None, "203.0.113.0/24", (1, 65535)),
        ("[2001:db8::1]:443", None, "2001:db8::1/128", (443, 443)),
        ("[2001:db8::]/32:443", None, "2001:db8::/32", (443, 443)),
        ("[2001:db8::/32]:443", None, "2001:db8::/32", (443, 443)),
    ],
)
def test_rule_parses(
    text: str, host: str | None, network: str | None, ports: tuple[int, int]
) -> None:
    rule = parse_rule(text)
    assert rule.host == host
    assert rule.network == (None if network is None else ipaddress.ip_network(network))
    assert (rule.port_lo, rule.port_hi) == ports


def test_rule_keeps_its_text_as_written_for_decisions() -> None:
    assert parse_rule("  API.Example.COM.:443 ").text == "API.Example.COM.:443"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a rule is empty: write host:port, e.g. api.example.com:443"),
        (
            "api.example.com",
            "'api.example.com' has no port: write host:port, "
            "e.g. api.example.com:443 or api.example.com:*",
        ),
        ("api.example.com:", "has an empty port"),
        (":443", "':443' has no host"),
        ("api.example.com:0", "port 0 is out of range: ports are 1-65535"),
        ("api.example.com:65536", "port 65536 is out of range: ports are 1-65535"),
        ("api.example.com:99999999", "port 99999999 is out of range"),
        ("api.example.com:https", "port 'https' is not a number"),
        ("api.example.com:9000-8000", "backwards: write the lower port first, e.g. 8000-9000"),
        ("api.example.com:8000-", "the port range '8000-' needs two numbers"),
        ("203.0.113.7/24:443", "has host bits set: write the network address, e.g. 203.0.113.0/24"),
        (
            "[2001:db8::1]/32:443",
            "has host bits set: write the network address, e.g. 2001:db8::/32",
        ),
        ("10.0.0.0/33:*", "'10.0.0.0/33' is not a valid IPv4 address or network"),
        ("256.1.1.1:443", "'256.1.1.1' is not a valid IPv4 address"),
        ("2001:db8::1:443", "looks like an IPv6 address without brackets"),
        ("[2001:db8::1:443", "opens '[' but never closes it"),
        ("[2001:db8::1]", "has no port"),
        ("[2001:db8::1]x:443", "has 'x' after the address"),
        ("[nope]:443", "'nope' is not a valid IPv6 address"),
        ("[203.0.113.7]:443", "brackets are for IPv6, write 203.0.113.7:443"),
        ("[fe80::1%eth0]:443", "has a zone id"),
        ("*example.com:443", "'*' may only stand alone as the first label"),
        ("api.*.example.com:443", "'*' may only stand alone as the first label"),
        ("*.*.example.com:443", "'*' may only stand alone as the first label"),
        ("*.:443", "has nothing after '*.'"),
        ("bad..example.com:443", "has an empty label"),
        ("api.example.com..:443", "has an empty label"),
        ("exa mple.com:443", "'exa mple' is not a valid name label"),
        ("api!.example.com:443", "'api!' is not a valid name label"),
        ("*.113.7:443", "is neither an IPv4 address nor a name"),
        ("bücher.example:443", "punycode) form, e.g. xn--bcher-kva.example"),
        (f"{'a' * 64}.example.com:443", "has a label longer than 63 characters"),
        (f"{'abcdefghi.' * 26}com:443", "has a name longer than 253 characters"),
    ],
)
def test_invalid_rule_is_refused_with_a_message_that_says_what_to_write(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_rule(text)


# normalising hosts


@pytest.mark.parametrize(
    ("host", "normalised"),
    [
        ("API.Example.COM", "api.example.com"),
        ("api.example.com.", "api.example.com"),
        ("api.example.com..", "api.example.com."),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("203.0.113.7", "203.0.113.7"),
    ],
)
def test_normalise_host(host: str, normalised: str) -> None:
    assert normalise_host(host) == normalised


# matching by name


def test_exact_name_matches_only_itself() -> None:
    rule = parse_rule("api.example.com:443")
    assert rule.matches_name("api.example.com", 443)
    assert not rule.matches_name("www.api.example.com", 443)
    assert not rule.matches_name("example.com", 443)


@pytest.mark.parametrize("host", ["a.example.com", "a.b.example.com", "x.y.z.example.com"])
def test_wildcard_matches_subdomains_at_any_depth(host: str) -> None:
    assert parse_rule("*.example.com:443").matches_name(host, 443)


def test_wildcard_never_matches_the_apex() -> None:
    assert not parse_rule("*.example.com:443").matches_name("example.com", 443)


def test_wildcard_does_not_match_a_name_that_merely_ends_the_same() -> None:
    assert not parse_rule("*.example.com:443").matches_name("badexample.com", 443)


def test_name_rule_written_in_capitals_with_trailing_dot_matches_normalised_host() -> None:
    assert parse_rule("API.Example.COM.:443").matches_name("api.example.com", 443)


def test_name_rule_checks_the_port() -> None:
    rule = parse_rule("api.example.com:443")
    assert not rule.matches_name("api.example.com", 80)


@pytest.mark.parametrize(
    ("port", "matches"), [(7999, False), (8000, True), (8050, True), (8100, True), (8101, False)]
)
def test_port_range_is_inclusive(port: int, matches: bool) -> None:
    assert parse_rule("api.example.com:8000-8100").matches_name("api.example.com", port) is matches


@pytest.mark.parametrize("port", [1, 443, 65535])
def test_star_port_matches_every_port(port: int) -> None:
    assert parse_rule("api.example.com:*").matches_name("api.example.com", port)


@pytest.mark.parametrize("host", ["anything.example", "203.0.113.7", "2001:db8::1"])
def test_star_host_matches_any_host_including_ip_literals(host: str) -> None:
    assert parse_rule("*:443").matches_name(host, 443)


def test_star_host_matches_any_address() -> None:
    assert parse_rule("*:443").matches_address(ip("2001:db8::1"), 443)


@pytest.mark.parametrize("host", ["203.0.113.7", "2001:db8::1"])
def test_name_rules_never_match_an_ip_literal_host(host: str) -> None:
    assert not parse_rule("*.example.com:443").matches_name(host, 443)


def test_address_rule_never_matches_by_name() -> None:
    assert not parse_rule("203.0.113.7:443").matches_name("203.0.113.7", 443)


def test_name_rule_never_matches_by_address() -> None:
    assert not parse_rule("api.example.com:443").matches_address(PUBLIC_V4, 443)


# matching by address


def test_ipv4_cidr_matches_addresses_inside_it() -> None:
    rule = parse_rule("203.0.113.0/24:*")
    assert rule.matches_address(ip("203.0.113.200"), 8443)
    assert not rule.matches_address(ip("203.0.114.1"), 8443)


def test_ipv4_rule_matches_the_ipv4_mapped_spelling() -> None:
    assert parse_rule("10.0.0.0/8:*").matches_address(ip("::ffff:10.0.0.1"), 443)


def test_ipv6_cidr_matches_addresses_inside_it() -> None:
    rule = parse_rule("[2001:db8::]/32:443")
    assert rule.matches_address(ip("2001:db8:1::5"), 443)
    assert not rule.matches_address(ip("2001:db9::5"), 443)


def test_ipv6_rule_does_not_match_an_ipv4_address() -> None:
    assert not parse_rule("[::]/0:*").matches_address(PUBLIC_V4, 443)


def test_address_rule_checks_the_port() -> None:
    assert not parse_rule("[2001:db8::1]:443").matches_address(ip("2001:db8::1"), 80)


# rule sets


def test_allow_rule_allows_and_names_itself() -> None:
    ruleset = RuleSet(rules("api.example.com:443"))
    decision = ruleset.decide("api.example.com", 443, PUBLIC_V4)
    assert decision == Decision(Reason.ALLOWED, rule="api.example.com:443")


def test_destination_without_a_matching_rule_is_not_allowed() -> None:
    ruleset = RuleSet(rules("api.example.com:443"))
    decision = ruleset.decide("other.example.com", 443, PUBLIC_V4)
    assert decision == Decision(Reason.DESTINATION_NOT_ALLOWED)


def test_deny_rule_wins_over_allow_rule() -> None:
    ruleset = RuleSet(rules("*.example.com:*"), deny=rules("admin.example.com:*"))
    decision = ruleset.decide("admin.example.com", 443, PUBLIC_V4)
    assert decision == Decision(Reason.DESTINATION_DENIED, rule="admin.example.com:*")


def test_deny_by_address_wins_over_allow_by_name() -> None:
    ruleset = RuleSet(rules("*.example.com:443"), deny=rules("93.184.0.0/16:*"))
    decision = ruleset.decide("www.example.com", 443, PUBLIC_V4)
    assert decision == Decision(Reason.DESTINATION_DENIED, rule="93.184.0.0/16:*")


def test_allow_by_address_applies_whatever_the_name() -> None:
    ruleset = RuleSet(rules("93.184.215.0/24:443"))
    decision = ruleset.decide("anything.example", 443, PUBLIC_V4)
    assert decision == Decision(Reason.ALLOWED, rule="93.184.215.0/24:443")


def test_rule_set_normalises_the_host_so_deny_rules_cannot_be_dodged() -> None:
    ruleset = RuleSet(rules("*:*"), deny=rules("admin.example.com:*"))
    decision = ruleset.decide("ADMIN.example.com.", 443, PUBLIC_V4)
    assert decision.reason is Reason.DESTINATION_DENIED


def test_ipv6_literal_host_is_allowed_by_ipv6_rule() -> None:
    ruleset = RuleSet(rules("[2001:db8::]/32:443"))
    decision = ruleset.decide("[2001:db8::1]", 443, ip("2001:db8::1"))
    assert decision == Decision(Reason.ALLOWED, rule="[2001:db8::]/32:443")


def test_ip_literal_host_is_not_allowed_by_a_wildcard_name_rule() -> None:
    ruleset = RuleSet(rules("*.113.example:443"))
    decision = ruleset.decide("203.0.113.7", 443, ip("203.0.113.7"))
    assert decision.reason is Reason.DESTINATION_NOT_ALLOWED


# prefilter


def test_prefilter_refuses_a_denied_name_before_resolution() -> None:
    ruleset = RuleSet(rules("*.example.com:443"), deny=rules("*.internal.example.com:*"))
    decision = ruleset.prefilter("db.internal.example.com", 443)
    assert decision == Decision(Reason.DESTINATION_DENIED, rule="*.internal.example.com:*")


def test_prefilter_refuses_a_name_no_rule_can_allow() -> None:
    ruleset = RuleSet(rules("api.example.com:443"))
    assert ruleset.prefilter("evil.example", 443) == Decision(Reason.DESTINATION_NOT_ALLOWED)


def test_prefilter_refuses_an_allowed_name_on_another_port() -> None:
    ruleset = RuleSet(rules("api.example.com:443"))
    assert ruleset.prefilter("api.example.com", 22) == Decision(Reason.DESTINATION_NOT_ALLOWED)


def test_prefilter_asks_for_resolution_when_a_name_rule_matches() -> None:
    ruleset = RuleSet(rules("api.example.com:443"))
    assert ruleset.prefilter("api.example.com", 443) is None


def test_prefilter_asks_for_resolution_when_an_address_rule_covers_the_port() -> None:
    ruleset = RuleSet(rules("203.0.113.0/24:8000-8100"))
    assert ruleset.prefilter("anything.example", 8080) is None


def test_prefilter_refuses_when_address_rules_cover_other_ports_only() -> None:
    ruleset = RuleSet(rules("203.0.113.0/24:8000-8100"))
    assert ruleset.prefilter("anything.example", 443) == Decision(Reason.DESTINATION_NOT_ALLOWED)


def test_empty_rule_set_allows_nothing() -> None:
    assert RuleSet([]).prefilter("api.example.com", 443) == Decision(Reason.DESTINATION_NOT_ALLOWED)
