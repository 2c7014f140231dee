"""Header sanitising presets: the same lists in the SDK and the gateway.

What a request may leak about its caller (the function's own address, the chain of
proxies, the page it came from), as three presets:

- `standard` (the default) removes `STANDARD_REMOVED`: the forwarding headers that
  carry client addresses (X-Forwarded-For/-Host/-Proto, X-Real-IP, True-Client-IP,
  CF-Connecting-IP, Forwarded, Via);
- `strict` removes `STRICT_REMOVED`: those, plus Cookie, Referer and Origin, plus the
  names you add;
- `allowlist` keeps only `ALLOWLIST_KEPT` (Authorization, Content-Type, Accept,
  User-Agent, X-Correlation-ID) plus the names you add, and removes everything else.

Framing and routing headers (`FRAMING_HEADERS`: Host, Content-Length,
Transfer-Encoding) are never touched by any preset: removing them would change what the
message means, not what it tells about its sender.

All names here are lower-case; comparisons are case-insensitive.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if not TYPE_CHECKING:
    # typing.overload at run time costs importing typing, a good part of a cold start;
    # mypy (and ruff) see the real one below.
    def overload(fn):
        return fn


if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import overload


STANDARD_REMOVED: frozenset[str] = frozenset(
    {
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "forwarded",
        "via",
    }
)
STRICT_REMOVED: frozenset[str] = STANDARD_REMOVED | {"cookie", "referer", "origin"}
ALLOWLIST_KEPT: frozenset[str] = frozenset(
    {"authorization", "content-type", "accept", "user-agent", "x-correlation-id"}
)
FRAMING_HEADERS: frozenset[str] = frozenset({"host", "content-length", "transfer-encoding"})
PRESETS: tuple[str, ...] = ("standard", "strict", "allowlist")
# The names issue 8 first used: "strip" is the standard preset.
_ALIASES = {"strip": "standard"}


def header_filter(preset: str = "standard", extra: Iterable[str] = ()) -> frozenset[str]:
    """The lower-case names `preset` acts on: removed for standard and strict, kept for
    allowlist. `extra` adds names (strict: more to remove; allowlist: more to keep;
    standard: more to remove)."""
    preset = _ALIASES.get(preset, preset)
    base = {
        "standard": STANDARD_REMOVED,
        "strict": STRICT_REMOVED,
        "allowlist": ALLOWLIST_KEPT,
    }.get(preset)
    if base is None:
        from fixedip.client.errors import ConfigurationError

        raise ConfigurationError(
            f"unknown header preset {preset!r}: use one of {', '.join(PRESETS)}"
        )
    return base | {name.strip().lower() for name in extra}


def removes(name: str, preset: str, names: frozenset[str]) -> bool:
    """Whether `preset`, acting on `names` (from `header_filter`), removes header `name`."""
    key = name.lower()
    if key in FRAMING_HEADERS:
        return False
    kept = _ALIASES.get(preset, preset) == "allowlist"
    return (key in names) != kept


@overload
def sanitize_headers(
    headers: Mapping[str, str],
    preset: str = ...,
    *,
    extra: Iterable[str] = ...,
    mode: str | None = ...,
) -> dict[str, str]: ...


@overload
def sanitize_headers(
    headers: Iterable[tuple[str, str]],
    preset: str = ...,
    *,
    extra: Iterable[str] = ...,
    mode: str | None = ...,
) -> list[tuple[str, str]]: ...


def sanitize_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    preset: str = "standard",
    *,
    extra: Iterable[str] = (),
    mode: str | None = None,
) -> dict[str, str] | list[tuple[str, str]]:
    """A copy of `headers` without what `preset` removes; the input is not changed.

    A mapping (dict, requests' or httpx's headers) gives a dict, a list of pairs a list
    of pairs, in the original order and spelling. `mode` is the older name of `preset`
    (`"strip"` means `"standard"`).

    >>> sanitize_headers({"X-Forwarded-For": "10.0.0.7", "Accept": "*/*"})
    {'Accept': '*/*'}
    >>> sanitize_headers({"Cookie": "a=1", "X-Trace": "t"}, "allowlist", extra=["X-Trace"])
    {'X-Trace': 't'}
    """
    if mode is not None:
        preset = mode
    names = header_filter(preset, extra)
    items = getattr(headers, "items", None)
    if callable(items):
        return {k: v for k, v in items() if not removes(k, preset, names)}
    return [(k, v) for k, v in _pairs(headers) if not removes(k, preset, names)]


def _pairs(headers: object) -> Iterable[tuple[str, str]]:
    return headers  # type: ignore[return-value]
