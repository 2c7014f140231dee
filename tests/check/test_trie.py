"""The prefix trie agrees with a brute-force scan of ipaddress networks."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.check.trie import PrefixTrie


def _v4_networks() -> st.SearchStrategy[ipaddress.IPv4Network]:
    return st.builds(
        lambda addr, length: ipaddress.IPv4Network((addr, length), strict=False),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    )


def test_lookup_returns_every_covering_range_most_specific_first() -> None:
    trie: PrefixTrie[str] = PrefixTrie()
    trie.insert(ipaddress.ip_network("203.0.113.0/24"), "wide")
    trie.insert(ipaddress.ip_network("203.0.113.0/26"), "aws-ec2")
    trie.insert(ipaddress.ip_network("203.0.113.0/26"), "aws-amazon")
    trie.insert(ipaddress.ip_network("203.0.113.64/27"), "elsewhere")
    found = trie.lookup(ipaddress.ip_address("203.0.113.7"))
    assert [(str(n), v) for n, v in found] == [
        ("203.0.113.0/26", "aws-ec2"),
        ("203.0.113.0/26", "aws-amazon"),
        ("203.0.113.0/24", "wide"),
    ]
    assert trie.lookup(ipaddress.ip_address("203.0.114.1")) == []


def test_ipv6_and_ipv4_are_kept_apart() -> None:
    trie: PrefixTrie[str] = PrefixTrie()
    trie.insert(ipaddress.ip_network("2001:db8:a::/48"), "v6")
    trie.insert(ipaddress.ip_network("0.0.0.0/0"), "v4 default")
    assert [v for _, v in trie.lookup(ipaddress.ip_address("2001:db8:a::1"))] == ["v6"]
    assert [v for _, v in trie.lookup(ipaddress.ip_address("2001:db8:b::1"))] == []
    assert [v for _, v in trie.lookup(ipaddress.ip_address("192.0.2.1"))] == ["v4 default"]


def test_within_finds_narrower_ranges_inside_a_wide_network() -> None:
    trie: PrefixTrie[str] = PrefixTrie()
    trie.insert(ipaddress.ip_network("198.51.100.128/26"), "azure")
    trie.insert(ipaddress.ip_network("198.51.100.160/28"), "app service")
    trie.insert(ipaddress.ip_network("198.51.101.0/24"), "outside")
    inside = trie.within(ipaddress.ip_network("198.51.100.0/24"))
    assert sorted(v for _, v in inside) == ["app service", "azure"]
    # The network itself is covering, not inside.
    assert [v for _, v in trie.within(ipaddress.ip_network("198.51.100.128/26"))] == ["app service"]
    overlap = trie.overlapping(ipaddress.ip_network("198.51.100.160/27"))
    assert sorted(v for _, v in overlap) == ["app service", "azure"]


@settings(max_examples=200, deadline=None)
@given(
    networks=st.lists(_v4_networks(), min_size=1, max_size=40),
    probe=st.integers(0, 2**32 - 1),
    query=_v4_networks(),
)
def test_matches_a_brute_force_scan(
    networks: list[ipaddress.IPv4Network], probe: int, query: ipaddress.IPv4Network
) -> None:
    trie: PrefixTrie[int] = PrefixTrie()
    for i, network in enumerate(networks):
        trie.insert(network, i)
    address = ipaddress.IPv4Address(probe)
    assert sorted(v for _, v in trie.lookup(address)) == [
        i for i, n in enumerate(networks) if address in n
    ]
    assert sorted(v for _, v in trie.covering(query)) == [
        i for i, n in enumerate(networks) if query.subnet_of(n)
    ]
    assert sorted(v for _, v in trie.within(query)) == [
        i for i, n in enumerate(networks) if n.subnet_of(query) and n != query
    ]


@settings(max_examples=200, deadline=None)
@given(
    networks=st.lists(_v4_networks(), min_size=1, max_size=40),
    probe=st.integers(0, 2**32 - 1),
    query=_v4_networks(),
)
def test_bulk_build_answers_like_one_by_one_inserts(
    networks: list[ipaddress.IPv4Network], probe: int, query: ipaddress.IPv4Network
) -> None:
    built = PrefixTrie.build((n, i) for i, n in enumerate(networks))
    inserted: PrefixTrie[int] = PrefixTrie()
    for i, network in enumerate(networks):
        inserted.insert(network, i)
    address = ipaddress.IPv4Address(probe)
    assert built.lookup(address) == inserted.lookup(address)
    assert sorted(v for _, v in built.lookup(address)) == [
        i for i, n in enumerate(networks) if address in n
    ]
    assert sorted(v for _, v in built.within(query)) == sorted(v for _, v in inserted.within(query))
    assert built.size == len(networks)
