"""Webhook signature checks, each preset exactly as its sender publishes it.

Every MAC is computed over the raw bytes received (never a re-serialised body) and
compared with `hmac.compare_digest`. During a key rotation a route holds several
secrets; any of them may match. `check()` returns None when the request is authentic,
else the reason it is refused (`missing_signature`, `bad_signature`,
`timestamp_out_of_tolerance`); the receiver answers 401 for each.

- standard-webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`; the key is
  the base64 part of `whsec_...`; the signed content is `id.timestamp.body`; the header
  is a space-separated list of `v1,<base64>` (https://www.standardwebhooks.com/).
- stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]`, HMAC over `t.body` keyed by
  the literal `whsec_...` string; any `v1` may match; `v0` and others are ignored.
- github: `X-Hub-Signature-256: sha256=<hex>` over the body.
- shopify: `X-Shopify-Hmac-Sha256: <base64>` over the body.
- hmac-sha256: a configured header holding `prefix` + hex or base64 of the MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fixedip.ingress.settings import IngressRouteConfig, standard_webhooks_key

MISSING = "missing_signature"
BAD = "bad_signature"
EXPIRED = "timestamp_out_of_tolerance"

# Bounds on what is parsed from a header, so a hostile request costs little.
MAX_SIGNATURES = 16
MAX_HEADER_CHARS = 4096


# Case-insensitive header access: aiohttp's CIMultiDictProxy, multidict's CIMultiDict.
Headers = Mapping[str, str]


class Verifier(Protocol):
    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        """None if authentic, else the refusal reason."""
        ...


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _any_equal(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """Constant time per comparison; every pair is compared (no early exit on a match)."""
    found = False
    for given in candidates[:MAX_SIGNATURES]:
        for want in expected:
            found |= hmac.compare_digest(given, want)
    return found


def _timestamp(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)


@dataclass(frozen=True, slots=True)
class NoVerification:
    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class StandardWebhooks:
    keys: tuple[bytes, ...]
    tolerance_s: int

    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        msg_id = headers.get("webhook-id")
        stamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not msg_id or not stamp or not signature or len(signature) > MAX_HEADER_CHARS:
            return MISSING
        ts = _timestamp(stamp)
        if ts is None:
            return BAD
        if abs(now - ts) > self.tolerance_s:
            return EXPIRED
        given = []
        for part in signature.split(" "):
            version, _, value = part.partition(",")
            if version == "v1" and value:
                given.append(value.encode())
        if not given:
            return BAD
        content = f"{msg_id}.{stamp}.".encode() + body
        expected = [base64.b64encode(_mac(key, content)) for key in self.keys]
        return None if _any_equal(given, expected) else BAD


@dataclass(frozen=True, slots=True)
class Stripe:
    keys: tuple[bytes, ...]
    tolerance_s: int

    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        header = headers.get("Stripe-Signature")
        if not header or len(header) > MAX_HEADER_CHARS:
            return MISSING
        stamp = None
        given = []
        for item in header.split(","):
            name, _, value = item.strip().partition("=")
            if name == "t":
                stamp = value
            elif name == "v1" and value:
                given.append(value.lower().encode())
        ts = _timestamp(stamp)
        if ts is None or not given:
            return BAD
        if abs(now - ts) > self.tolerance_s:
            return EXPIRED
        content = f"{stamp}.".encode() + body
        expected = [_mac(key, content).hex().encode() for key in self.keys]
        return None if _any_equal(given, expected) else BAD


@dataclass(frozen=True, slots=True)
class BodyHmac:
    """One header holding prefix + encoded HMAC-SHA256 of the body (GitHub, Shopify, generic)."""

    keys: tuple[bytes, ...]
    header: str
    encoding: str
    prefix: str

    def check(self, headers: Headers, body: bytes, now: float) -> str | None:
        value = headers.get(self.header)
        if not value or len(value) > MAX_HEADER_CHARS:
            return MISSING
        if not value.startswith(self.prefix):
            return BAD
        given = value[len(self.prefix) :].strip()
        if self.encoding == "hex":
            candidates = [given.lower().encode()]
            expected = [_mac(key, body).hex().encode() for key in self.keys]
        else:
            candidates = [given.encode()]
            expected = [base64.b64encode(_mac(key, body)) for key in self.keys]
        return None if _any_equal(candidates, expected) else BAD


def build_verifier(route: IngressRouteConfig, secrets: Mapping[str, str]) -> Verifier:
    """The verifier for `route`, with its secret references resolved through `secrets`."""
    values = [secrets[ref] for ref in route.secret]
    literal = tuple(v.encode() for v in values)
    if route.verify == "none":
        return NoVerification()
    if route.verify == "standard-webhooks":
        keys = []
        for value in values:
            key = standard_webhooks_key(value)
            if key is None:
                raise ValueError("a Standard Webhooks secret must be whsec_ and base64")
            keys.append(key)
        return StandardWebhooks(tuple(keys), route.tolerance_s)
    if route.verify == "stripe":
        return Stripe(literal, route.tolerance_s)
    if route.verify == "github":
        return BodyHmac(literal, "X-Hub-Signature-256", "hex", "sha256=")
    if route.verify == "shopify":
        return BodyHmac(literal, "X-Shopify-Hmac-Sha256", "base64", "")
    return BodyHmac(literal, route.signature_header, route.encoding, route.prefix)
