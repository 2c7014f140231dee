"""Header sanitising for forwarded HTTP requests, per destination.

The presets are the SDK's (`fixedip.client.headers`), so a function and the gateway
agree on what `standard`, `strict` and `allowlist` mean. `standard` applies to every
destination no `[[destinations]]` entry matches: forwarding headers that carry the
caller's address never reach a vendor by default. Framing and routing headers (Host,
Content-Length, Transfer-Encoding) are never touched. Only plain-HTTP forwarding is
sanitised: inside a CONNECT tunnel the gateway sees no headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fixedip.client.headers import header_filter
from fixedip.config import DestinationConfig
from fixedip.policy.rules import Rule, parse_rule

CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Lower-case names to drop, or (allowlist) the only names to keep."""

    preset: str
    drop: frozenset[bytes]
    keep: frozenset[bytes] | None  # None: keep everything not dropped


def _policy(preset: str, extra: Sequence[str]) -> HeaderPolicy:
    names = frozenset(n.encode("ascii") for n in header_filter(preset, extra))
    if preset == "allowlist":
        return HeaderPolicy(preset, frozenset(), names)
    return HeaderPolicy(preset, names, None)


STANDARD = _policy("standard", ())


class Sanitizer:
    """First `[[destinations]]` entry whose `match` fits the host decides; memoised."""

    def __init__(self, destinations: Sequence[DestinationConfig]) -> None:
        # `match` is an exact name, *.domain, * (a name rule) or one IP address (the
        # canonical text of an IP-literal host).
        self._entries: list[tuple[str | Rule, HeaderPolicy]] = []
        for d in destinations:
            policy = _policy(d.sanitize, d.sanitize_extra)
            rule = parse_rule(f"[{d.match}]:*" if ":" in d.match else f"{d.match}:*")
            self._entries.append((rule if rule.host is not None else d.match, policy))
        self._cache: dict[str, HeaderPolicy] = {}

    def for_host(self, host: str) -> HeaderPolicy:
        policy = self._cache.get(host)
        if policy is None:
            policy = next(
                (p for match, p in self._entries if _matches(match, host)),
                STANDARD,
            )
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[host] = policy
        return policy


def _matches(match: str | Rule, host: str) -> bool:
    if isinstance(match, str):
        return match == host
    return match.matches_name(host, match.port_lo)
