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


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Lower-case names to drop, or (allowlist) the only names to keep."""

    preset: str
    drop: frozenset[bytes]
    keep: frozenset[bytes] | None  # None: keep everything not dropped

    @property
    def forward_drop(self) -> frozenset[bytes]:
        """`drop` plus Host, which the gateway always rewrites to the target's authority."""
        return self.drop | _HOST


_HOST = frozenset({b"host"})


def _policy(preset: str, extra: Sequence[str]) -> HeaderPolicy:
    names = frozenset(n.encode("ascii") for n in header_filter(preset, extra))
    if preset == "allowlist":
        return HeaderPolicy(preset, frozenset(), names)
    return HeaderPolicy(preset, names, None)


STANDARD = _policy("standard", ())


class Sanitizer:
    """The header policy of each `[[destinations]]` entry. Which entry applies to a host
    is the runtime's one first-match lookup (`Runtime.destination`); hosts no entry
    matches get `standard`."""

    def __init__(self, destinations: Sequence[DestinationConfig]) -> None:
        self._by_match: dict[str, HeaderPolicy] = {}
        for d in destinations:  # a repeated match: the first entry is the one that applies
            self._by_match.setdefault(d.match, _policy(d.sanitize, d.sanitize_extra))

    def for_destination(self, destination: DestinationConfig | None) -> HeaderPolicy:
        return STANDARD if destination is None else self._by_match[destination.match]
