"""The SSRF guard, in memory: every deny-list spelling, the exceptions, loop protection."""

from __future__ import annotations

import ipaddress

import pytest

from fixedip.policy.decision import ALLOWED, Reason
from fixedip.policy.guard import DEFAULT_DENY, Guard, describe_deny_list


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# (address, the rule the refusal names)
DENIED = [
    ("0.0.0.0", "unspecified 0.0.0.0/32"),
    ("0.1.2.3", "this-network 0.0.0.0/8"),
    ("10.0.0.1", "private 10.0.0.0/8"),
    ("10.255.255.255", "private 10.0.0.0/8"),
    ("100.64.0.1", "cgnat 100.64.0.0/10"),
    ("100.127.255.254", "cgnat 100.64.0.0/10"),
    ("100.100.100.200", "metadata 100.100.100.200/32"),
    ("127.0.0.1", "loopback 127.0.0.0/8"),
    ("127.255.255.254", "loopback 127.0.0.0/8"),
    ("169.254.0.1", "link-local 169.254.0.0/16"),
    ("169.254.169.254", "metadata 169.254.169.254/32"),
    ("169.254.170.2", "metadata 169.254.170.2/32"),
    ("172.16.0.1", "private 172.16.0.0/12"),
    ("172.31.255.255", "private 172.16.0.0/12"),
    ("192.0.0.8", "ietf-protocol 192.0.0.0/24"),
    ("192.0.2.1", "documentation 192.0.2.0/24"),
    ("192.88.99.1", "6to4-relay 192.88.99.0/24"),
    ("192.168.1.1", "private 192.168.0.0/16"),
    ("198.18.0.1", "benchmark 198.18.0.0/15"),
    ("198.19.255.254", "benchmark 198.18.0.0/15"),
    ("198.51.100.7", "documentation 198.51.100.0/24"),
    ("203.0.113.7", "documentation 203.0.113.0/24"),
    ("224.0.0.1", "multicast 224.0.0.0/4"),
    ("239.255.255.250", "multicast 224.0.0.0/4"),
    ("240.0.0.1", "reserved 240.0.0.0/4"),
    ("255.255.255.255", "broadcast 255.255.255.255/32"),
    ("::", "unspecified ::/128"),
    ("::1", "loopback ::1/128"),
    ("::127.0.0.1", "ipv4-compatible ::/96"),
    ("::ffff:127.0.0.1", "ipv4-mapped ::ffff:0:0/96"),
    ("::ffff:169.254.169.254", "ipv4-mapped ::ffff:0:0/96"),
    ("::ffff:0:a00:1", "ipv4-translated ::ffff:0:0:0/96"),
    ("64:ff9b::a00:1", "nat64 64:ff9b::/96"),
    ("64:ff9b::7f00:1", "nat64 64:ff9b::/96"),
    ("64:ff9b:1::a00:1", "nat64 64:ff9b:1::/48"),
    ("100::1", "discard 100::/64"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo 2001::/32"),
    ("2001:2::1", "ietf-protocol 2001::/23"),
    ("2001:db8::1", "documentation 2001:db8::/32"),
    ("2002:7f00:1::", "6to4 2002::/16"),
    ("2002:a9fe:a9fe::1", "6to4 2002::/16"),
    ("3fff::1", "documentation 3fff::/20"),
    ("fc00::1", "unique-local fc00::/7"),
    ("fd12:3456::1", "unique-local fc00::/7"),
    ("fd00:ec2::254", "metadata fd00:ec2::254/128"),
    ("fe80::1", "link-local fe80::/10"),
    ("fe80::1%eth0", "link-local fe80::/10"),
    ("fec0::1", "site-local fec0::/10"),
    ("ff02::1", "multicast ff00::/8"),
    ("ff05::1:3", "multicast ff00::/8"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::1111", "2a00:1450:4001:82a::200e"]


@pytest.mark.parametrize(("address", "rule"), DENIED)
def test_non_public_address_is_denied_naming_its_network(address: str, rule: str) -> None:
    decision = Guard().vet(ip(address), 443)
    assert decision.reason is Reason.GUARD_DENIED
    assert decision.rule == rule


@pytest.mark.parametrize("address", PUBLIC)
def test_public_address_is_allowed(address: str) -> None:
    assert Guard().vet(ip(address), 443) == ALLOWED


def test_required_networks_are_all_on_the_deny_list() -> None:
    required = {
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48",
        "100::/64", "2001::/32", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8",
    }  # fmt: skip
    listed = {str(network) for network, _ in DEFAULT_DENY}
    assert required <= listed


def test_address_the_standard_library_calls_reserved_is_denied_even_off_the_table() -> None:
    decision = Guard().vet(ip("4000::1"), 443)
    assert decision.reason is Reason.GUARD_DENIED
    assert decision.rule == "reserved (ipaddress.is_reserved)"


def test_public_ipv6_address_with_a_zone_id_is_denied() -> None:
    decision = Guard().vet(ip("2606:4700::1111%eth0"), 443)
    assert decision.reason is Reason.GUARD_DENIED
    assert decision.rule == "zone-id %eth0"


def test_public_ipv4_mapped_address_is_denied() -> None:
    assert Guard().vet(ip("::ffff:8.8.8.8"), 443).reason is Reason.GUARD_DENIED


def test_cidr_exception_allows_a_denied_address() -> None:
    guard = Guard(allow_cidrs=[net("127.0.0.0/8")])
    assert guard.vet(ip("127.0.0.1"), 8080) == ALLOWED


def test_cidr_exception_leaves_the_rest_of_the_deny_list_in_force() -> None:
    guard = Guard(allow_cidrs=[net("127.0.0.0/8")])
    assert guard.vet(ip("169.254.169.254"), 80).reason is Reason.GUARD_DENIED


def test_cidr_exception_covers_the_ipv4_mapped_spelling() -> None:
    guard = Guard(allow_cidrs=[net("127.0.0.0/8")])
    assert guard.vet(ip("::ffff:127.0.0.1"), 8080) == ALLOWED


def test_narrow_cidr_exception_inside_a_denied_network_allows_only_itself() -> None:
    guard = Guard(allow_cidrs=[net("10.1.2.0/24")])
    assert guard.vet(ip("10.1.2.3"), 443) == ALLOWED
    assert guard.vet(ip("10.1.3.3"), 443).reason is Reason.GUARD_DENIED


def test_ipv6_cidr_exception_allows_a_unique_local_address() -> None:
    guard = Guard(allow_cidrs=[net("fd12:3456::/32")])
    assert guard.vet(ip("fd12:3456::1"), 443) == ALLOWED


def test_cidr_exception_does_not_cover_an_address_with_a_zone_id() -> None:
    guard = Guard(allow_cidrs=[net("fe80::/10")])
    assert guard.vet(ip("fe80::1%eth0"), 443).reason is Reason.GUARD_DENIED


def test_endpoint_exception_allows_its_exact_address_and_port() -> None:
    guard = Guard(allow_endpoints=[(ip("127.0.0.1"), 8080)])
    assert guard.vet(ip("127.0.0.1"), 8080) == ALLOWED


def test_endpoint_exception_does_not_cover_another_port() -> None:
    guard = Guard(allow_endpoints=[(ip("127.0.0.1"), 8080)])
    assert guard.vet(ip("127.0.0.1"), 8081).reason is Reason.GUARD_DENIED


def test_endpoint_exception_does_not_cover_another_address() -> None:
    guard = Guard(allow_endpoints=[(ip("127.0.0.1"), 8080)])
    assert guard.vet(ip("127.0.0.2"), 8080).reason is Reason.GUARD_DENIED


def test_endpoint_exception_covers_the_ipv4_mapped_spelling() -> None:
    guard = Guard(allow_endpoints=[(ip("127.0.0.1"), 8080)])
    assert guard.vet(ip("::ffff:127.0.0.1"), 8080) == ALLOWED


def test_connection_to_own_listener_is_a_loop() -> None:
    guard = Guard(own_endpoints=[(ip("127.0.0.1"), 3128)])
    decision = guard.vet(ip("127.0.0.1"), 3128)
    assert decision.reason is Reason.GUARD_LOOP
    assert decision.rule == "listener 127.0.0.1:3128"


def test_own_address_on_another_port_is_not_a_loop() -> None:
    guard = Guard(own_endpoints=[(ip("127.0.0.1"), 3128)])
    assert guard.vet(ip("127.0.0.1"), 3129).reason is Reason.GUARD_DENIED


def test_ipv4_mapped_spelling_of_own_listener_is_a_loop() -> None:
    guard = Guard(own_endpoints=[(ip("127.0.0.1"), 3128)])
    assert guard.vet(ip("::ffff:127.0.0.1"), 3128).reason is Reason.GUARD_LOOP


def test_ipv6_listener_is_named_with_brackets() -> None:
    guard = Guard(own_endpoints=[(ip("::1"), 3128)])
    assert guard.vet(ip("::1"), 3128).rule == "listener [::1]:3128"


def test_loop_wins_over_an_endpoint_exception() -> None:
    guard = Guard(
        allow_endpoints=[(ip("127.0.0.1"), 3128)],
        own_endpoints=[(ip("127.0.0.1"), 3128)],
    )
    assert guard.vet(ip("127.0.0.1"), 3128).reason is Reason.GUARD_LOOP


def test_loop_wins_over_a_cidr_exception() -> None:
    guard = Guard(allow_cidrs=[net("10.0.0.0/8")], own_endpoints=[(ip("10.0.1.5"), 3128)])
    assert guard.vet(ip("10.0.1.5"), 3128).reason is Reason.GUARD_LOOP


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "::1", "0.0.0.0", "::"])
def test_wildcard_listener_loops_from_loopback_and_unspecified(address: str) -> None:
    guard = Guard(
        allow_cidrs=[net("0.0.0.0/0"), net("::/0")], own_endpoints=[(ip("0.0.0.0"), 3128)]
    )
    decision = guard.vet(ip(address), 3128)
    assert decision.reason is Reason.GUARD_LOOP
    assert decision.rule == "listener 0.0.0.0:3128"


def test_wildcard_listener_loops_from_a_local_address() -> None:
    guard = Guard(
        allow_cidrs=[net("10.0.0.0/8")],
        own_endpoints=[(ip("::"), 3128)],
        local_addresses=[ip("10.0.1.5")],
    )
    assert guard.vet(ip("10.0.1.5"), 3128).reason is Reason.GUARD_LOOP


def test_wildcard_listener_does_not_loop_from_a_remote_address() -> None:
    guard = Guard(own_endpoints=[(ip("0.0.0.0"), 443)], local_addresses=[ip("10.0.1.5")])
    assert guard.vet(ip("8.8.8.8"), 443) == ALLOWED


def test_unspecified_destination_reaches_a_listener_on_a_specific_address() -> None:
    guard = Guard(allow_cidrs=[net("0.0.0.0/8")], own_endpoints=[(ip("127.0.0.1"), 3128)])
    assert guard.vet(ip("0.0.0.0"), 3128).reason is Reason.GUARD_LOOP


def test_deny_list_description_names_every_network_and_the_fallbacks() -> None:
    lines = describe_deny_list()
    assert len(lines) == len(DEFAULT_DENY) + 2
    assert lines[0].split() == ["0.0.0.0/32", "unspecified"]
    assert any("zone id" in line for line in lines)
