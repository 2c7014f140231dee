"""A path-compressed binary trie over address bits: every published cloud range, from
every provider's file, in one structure per address family.

One walk from the root answers "which ranges contain this address" for all files at
once (at most 32 or 128 steps, usually far fewer because single-child chains are
compressed), and a subtree walk answers "which ranges lie inside this network" (for
allowlist entries broader than one address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class _Node(Generic[V]):
    __slots__ = ("children", "key", "length", "values")

    def __init__(self, key: int, length: int, values: list[V] | None = None) -> None:
        self.key = key  # the prefix, left-aligned in the family's width; host bits zero
        self.length = length
        self.values: list[V] = values if values is not None else []
        self.children: list[_Node[V] | None] = [None, None]


class _FamilyTrie(Generic[V]):
    def __init__(self, width: int) -> None:
        self.width = width
        self.root: _Node[V] = _Node(0, 0)
        self.exact: dict[tuple[int, int], _Node[V]] = {(0, 0): self.root}

    def _bit(self, key: int, index: int) -> int:
        return (key >> (self.width - 1 - index)) & 1

    def _matches(self, node: _Node[V], key: int) -> bool:
        return node.length == 0 or (node.key ^ key) >> (self.width - node.length) == 0

    def _mask(self, length: int) -> int:
        return ((1 << length) - 1) << (self.width - length) if length else 0

    def insert(self, key: int, length: int, value: V) -> None:
        known = self.exact.get((key, length))
        if known is not None:  # providers list one prefix under many services and tags
            known.values.append(value)
            return
        width = self.width
        node = self.root
        while True:
            bit = (key >> (width - 1 - node.length)) & 1
            child = node.children[bit]
            if child is None:
                node.children[bit] = self._new(key, length, value)
                return
            common = min(child.length, length, width - (child.key ^ key).bit_length())
            if common == child.length:
                if common == length:  # a branching node created earlier, now a prefix too
                    child.values.append(value)
                    self.exact[(key, length)] = child
                    return
                node = child
                continue
            if common == length:
                new = self._new(key, length, value)
                new.children[(child.key >> (width - 1 - length)) & 1] = child
                node.children[bit] = new
                return
            middle: _Node[V] = _Node(key & self._mask(common), common)
            middle.children[(child.key >> (width - 1 - common)) & 1] = child
            middle.children[(key >> (width - 1 - common)) & 1] = self._new(key, length, value)
            node.children[bit] = middle
            return

    def _new(self, key: int, length: int, value: V) -> _Node[V]:
        node = _Node(key, length, [value])
        self.exact[(key, length)] = node
        return node

    def load_sorted(self, prefixes: dict[tuple[int, int], list[V]]) -> None:
        """Build an empty trie from unique prefixes in one pass: sorted by address, then
        length, prefixes arrive in pre-order, so each one hangs off the rightmost path
        (kept on a stack) and no walk from the root is needed."""
        width = self.width
        root = self.root
        root.values.extend(prefixes.get((0, 0), []))
        stack = [root]
        for (key, length), values in sorted(prefixes.items()):
            if length == 0:
                continue
            top = stack[-1]
            while top.length >= length or (top.length and (top.key ^ key) >> (width - top.length)):
                stack.pop()
                top = stack[-1]
            node = _Node(key, length, list(values))
            self.exact[(key, length)] = node
            bit = (key >> (width - 1 - top.length)) & 1
            child = top.children[bit]
            if child is None:
                top.children[bit] = node
            else:  # the previous subtree on this side shares a shorter prefix with us
                common = min(child.length, width - (child.key ^ key).bit_length())
                middle: _Node[V] = _Node(key & self._mask(common), common)
                middle.children[(child.key >> (width - 1 - common)) & 1] = child
                middle.children[(key >> (width - 1 - common)) & 1] = node
                top.children[bit] = middle
                stack.append(middle)
            stack.append(node)

    def covering(self, key: int, length: int) -> Iterator[tuple[int, int, V]]:
        """Values of every prefix that contains key/length, shortest prefix first."""
        node: _Node[V] | None = self.root
        while node is not None and node.length <= length and self._matches(node, key):
            for value in node.values:
                yield node.key, node.length, value
            if node.length == self.width:
                return
            node = node.children[self._bit(key, node.length)]

    def within(self, key: int, length: int) -> Iterator[tuple[int, int, V]]:
        """Values of every prefix strictly inside key/length (longer prefixes)."""
        node: _Node[V] | None = self.root
        while node is not None and node.length < length:
            if not self._matches(node, key):
                return
            node = node.children[self._bit(key, node.length)]
        if node is None or (node.key ^ key) >> (self.width - length) != 0:
            return
        # At the network itself, its own values contain it: only its children are inside.
        stack = [c for c in node.children if c is not None] if node.length == length else [node]
        while stack:
            current = stack.pop()
            for value in current.values:
                yield current.key, current.length, value
            stack.extend(c for c in current.children if c is not None)


class PrefixTrie(Generic[V]):
    """Map IPv4 and IPv6 networks to values; many values may share one network."""

    def __init__(self) -> None:
        self._families = {4: _FamilyTrie[V](32), 6: _FamilyTrie[V](128)}
        self.size = 0

    def insert(self, network: Network, value: V) -> None:
        trie = self._families[network.version]
        trie.insert(int(network.network_address), network.prefixlen, value)
        self.size += 1

    @classmethod
    def build(cls, items: Iterable[tuple[Network, V]]) -> PrefixTrie[V]:
        """A trie of many ranges at once, much faster than inserting them one by one."""
        grouped: dict[int, dict[tuple[int, int], list[V]]] = {4: {}, 6: {}}
        trie: PrefixTrie[V] = cls()
        for network, value in items:
            key = (int(network.network_address), network.prefixlen)
            grouped[network.version].setdefault(key, []).append(value)
            trie.size += 1
        for version, prefixes in grouped.items():
            trie._families[version].load_sorted(prefixes)
        return trie

    def lookup(self, address: Address) -> list[tuple[Network, V]]:
        """Every (range, value) that contains `address`, most specific first."""
        network = ipaddress.ip_network(address)
        return self.covering(network)

    def covering(self, network: Network) -> list[tuple[Network, V]]:
        """Every (range, value) that contains all of `network`, most specific first."""
        trie = self._families[network.version]
        found = list(trie.covering(int(network.network_address), network.prefixlen))
        # Longest prefix first; values of one prefix keep their insertion order.
        found.sort(key=lambda item: -item[1])
        return [(self._network(network.version, k, n), v) for k, n, v in found]

    def within(self, network: Network) -> list[tuple[Network, V]]:
        """Every (range, value) strictly inside `network` (more specific than it)."""
        trie = self._families[network.version]
        found = trie.within(int(network.network_address), network.prefixlen)
        return [(self._network(network.version, k, n), v) for k, n, v in found]

    def overlapping(self, network: Network) -> list[tuple[Network, V]]:
        """Every (range, value) that shares at least one address with `network`."""
        return self.covering(network) + self.within(network)

    @staticmethod
    def _network(version: int, key: int, length: int) -> Network:
        if version == 4:
            return ipaddress.IPv4Network((key, length))
        return ipaddress.IPv6Network((key, length))
