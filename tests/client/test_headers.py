"""sanitize_headers() and the presets the gateway shares (DESIGN: "Header sanitising
presets")."""

from __future__ import annotations

import httpx
import pytest
import requests

from fixedip.client import ConfigurationError, sanitize_headers
from fixedip.client.headers import (
    ALLOWLIST_KEPT,
    FRAMING_HEADERS,
    PRESETS,
    STANDARD_REMOVED,
    STRICT_REMOVED,
)

LEAKY = {
    "X-Forwarded-For": "10.0.0.7",
    "X-Forwarded-Host": "internal.example",
    "X-Forwarded-Proto": "http",
    "X-Real-IP": "10.0.0.7",
    "True-Client-IP": "10.0.0.7",
    "CF-Connecting-IP": "10.0.0.7",
    "Forwarded": "for=10.0.0.7",
    "Via": "1.1 lambda",
}
FRAMING = {"Host": "api.vendor.example", "Content-Length": "2", "Transfer-Encoding": "chunked"}
BROWSERISH = {
    "Cookie": "session=1",
    "Referer": "https://app.example/",
    "Origin": "https://app.example",
}
USEFUL = {
    "Authorization": "Bearer x",
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "billing/1.0",
    "X-Correlation-ID": "c-1",
}


def test_the_presets_are_the_documented_lists() -> None:
    assert PRESETS == ("standard", "strict", "allowlist")
    assert {k.lower() for k in LEAKY} == STANDARD_REMOVED
    assert STANDARD_REMOVED | {"cookie", "referer", "origin"} == STRICT_REMOVED
    assert {k.lower() for k in USEFUL} == ALLOWLIST_KEPT
    assert {k.lower() for k in FRAMING} == FRAMING_HEADERS


def test_standard_removes_forwarding_headers_only() -> None:
    headers = {**LEAKY, **FRAMING, **BROWSERISH, **USEFUL, "X-Trace": "t"}
    assert sanitize_headers(headers) == {**FRAMING, **BROWSERISH, **USEFUL, "X-Trace": "t"}


def test_strict_also_removes_cookie_referer_origin_and_extras() -> None:
    headers = {**LEAKY, **FRAMING, **BROWSERISH, **USEFUL, "X-Internal-User": "u"}
    out = sanitize_headers(headers, "strict", extra=["x-internal-user"])
    assert out == {**FRAMING, **USEFUL}


def test_allowlist_keeps_only_the_listed_names_and_framing() -> None:
    headers = {**LEAKY, **FRAMING, **BROWSERISH, **USEFUL, "X-Tenant": "t", "X-Other": "o"}
    out = sanitize_headers(headers, "allowlist", extra=["X-Tenant"])
    assert out == {**FRAMING, **USEFUL, "X-Tenant": "t"}


@pytest.mark.parametrize("preset", PRESETS)
def test_framing_headers_are_never_touched(preset: str) -> None:
    out = sanitize_headers(FRAMING, preset, extra=["host", "content-length", "transfer-encoding"])
    assert out == FRAMING


def test_names_match_case_insensitively_and_keep_their_spelling() -> None:
    assert sanitize_headers({"x-FORWARDED-for": "1", "ACCEPT": "*/*"}) == {"ACCEPT": "*/*"}


def test_pairs_stay_pairs_in_order_with_repeats() -> None:
    pairs = [("Accept", "a"), ("Via", "v"), ("Cookie", "1"), ("Cookie", "2")]
    assert sanitize_headers(pairs) == [("Accept", "a"), ("Cookie", "1"), ("Cookie", "2")]


def test_the_input_is_not_changed() -> None:
    headers = dict(LEAKY)
    sanitize_headers(headers, "strict")
    assert headers == LEAKY


def test_the_older_mode_names_still_work() -> None:
    assert sanitize_headers({"Via": "v", "Cookie": "c"}, mode="strip") == {"Cookie": "c"}
    assert sanitize_headers({"Via": "v", "Accept": "a"}, mode="allowlist") == {"Accept": "a"}


def test_client_library_header_types_are_accepted() -> None:
    from_requests = requests.structures.CaseInsensitiveDict({"Via": "v", "Accept": "a"})
    assert sanitize_headers(from_requests) == {"Accept": "a"}
    assert sanitize_headers(httpx.Headers({"Via": "v", "Accept": "a"})) == {"accept": "a"}


def test_an_unknown_preset_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="standard, strict, allowlist"):
        sanitize_headers({}, "paranoid")
