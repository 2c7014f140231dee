"""Who is calling: Basic credentials, token checks, source CIDRs and the verdict cache."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from fixedip.policy import auth
from fixedip.policy.auth import Authenticator, Credentials, parse_basic, source_allowed
from fixedip.policy.decision import ALLOWED, Decision, Reason
from tests.helpers import TOKENS, token_hash

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def nets(*texts: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(text) for text in texts]


@dataclass(frozen=True)
class Client:
    name: str
    token_hash: Sequence[str]
    source_cidrs: Sequence[IPNetwork] = field(default_factory=lambda: nets("0.0.0.0/0", "::/0"))


def basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


@pytest.fixture
def billing() -> Client:
    return Client("billing", [token_hash("billing")])


@pytest.fixture
def count_verify(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every call auth makes to the (slow) verify_token, in order."""
    calls: list[tuple[str, str]] = []
    real: Callable[[str, str], bool] = auth.verify_token

    def counting(token: str, stored: str) -> bool:
        calls.append((token, stored))
        return real(token, stored)

    monkeypatch.setattr(auth, "verify_token", counting)
    return calls


# --- parse_basic -------------------------------------------------------------------------


def test_parse_basic_reads_user_and_password() -> None:
    assert parse_basic(basic(b"billing:s3cret")) == Credentials("billing", "s3cret")


def test_parse_basic_scheme_is_case_insensitive_and_spaces_are_trimmed() -> None:
    value = b"  bAsIc   " + base64.b64encode(b"billing:s3cret") + b"  "
    assert parse_basic(value) == Credentials("billing", "s3cret")


def test_parse_basic_keeps_colons_in_the_password() -> None:
    assert parse_basic(basic(b"billing:a:b::c")) == Credentials("billing", "a:b::c")


def test_parse_basic_allows_an_empty_password() -> None:
    assert parse_basic(basic(b"billing:")) == Credentials("billing", "")


def test_parse_basic_decodes_utf8() -> None:
    assert parse_basic(basic("billing:jeton-é".encode())) == Credentials("billing", "jeton-é")


@pytest.mark.parametrize(
    "value",
    [
        b"Bearer " + base64.b64encode(b"billing:s3cret"),
        b"Digest username=billing",
        base64.b64encode(b"billing:s3cret"),
        b"Basic !!!not-base64!!!",
        b"Basic YmlsbGluZzpzM2NyZXQ",  # missing padding
        basic(b"billing-no-colon"),
        basic(b"billing:\xff\xfe"),  # not UTF-8
        b"Basic",
        b"",
    ],
    ids=[
        "bearer",
        "digest",
        "no-scheme",
        "bad-base64",
        "unpadded-base64",
        "no-colon",
        "not-utf8",
        "scheme-only",
        "empty",
    ],
)
def test_parse_basic_returns_none_for_anything_else(value: bytes) -> None:
    assert parse_basic(value) is None


# --- authenticate --------------------------------------------------------------------------


def test_right_token_authenticates_the_client(billing: Client) -> None:
    assert (
        Authenticator([billing]).authenticate(Credentials("billing", TOKENS["billing"])) is billing
    )


def test_wrong_token_is_refused(billing: Client) -> None:
    assert Authenticator([billing]).authenticate(Credentials("billing", TOKENS["other"])) is None


def test_another_clients_token_is_refused(billing: Client) -> None:
    other = Client("other", [token_hash("other")])
    authenticator = Authenticator([billing, other])
    assert authenticator.authenticate(Credentials("billing", TOKENS["other"])) is None
    assert authenticator.authenticate(Credentials("other", TOKENS["other"])) is other


def test_unknown_user_is_refused_without_hashing(
    billing: Client, count_verify: list[tuple[str, str]]
) -> None:
    assert Authenticator([billing]).authenticate(Credentials("nobody", TOKENS["billing"])) is None
    assert count_verify == []


def test_no_credentials_is_no_client(billing: Client) -> None:
    assert Authenticator([billing]).authenticate(None) is None


def test_has_clients() -> None:
    assert not Authenticator([]).has_clients
    assert Authenticator([Client("x", [])]).has_clients


def test_rotation_list_accepts_either_token() -> None:
    rotating = Client("billing", [token_hash("billing"), token_hash("other")])
    authenticator = Authenticator([rotating])
    assert authenticator.authenticate(Credentials("billing", TOKENS["billing"])) is rotating
    assert authenticator.authenticate(Credentials("billing", TOKENS["other"])) is rotating
    assert authenticator.authenticate(Credentials("billing", TOKENS["pinned"])) is None


def test_rotation_list_tolerates_a_malformed_entry() -> None:
    rotating = Client("billing", ["scrypt$14$8$1$broken", token_hash("billing")])
    creds = Credentials("billing", TOKENS["billing"])
    assert Authenticator([rotating]).authenticate(creds) is rotating


# --- the verdict cache ---------------------------------------------------------------------


def test_second_call_with_the_same_credentials_does_not_hash_again(
    billing: Client, count_verify: list[tuple[str, str]]
) -> None:
    authenticator = Authenticator([billing])
    creds = Credentials("billing", TOKENS["billing"])
    assert authenticator.authenticate(creds) is billing
    assert authenticator.authenticate(Credentials("billing", TOKENS["billing"])) is billing
    assert len(count_verify) == 1


def test_failures_are_cached_too(billing: Client, count_verify: list[tuple[str, str]]) -> None:
    authenticator = Authenticator([billing])
    for _ in range(3):
        assert authenticator.authenticate(Credentials("billing", "wrong")) is None
    assert len(count_verify) == 1


def test_cache_tells_user_and_password_apart(
    billing: Client, count_verify: list[tuple[str, str]]
) -> None:
    authenticator = Authenticator([billing])
    assert authenticator.authenticate(Credentials("billing", TOKENS["billing"])) is billing
    assert authenticator.authenticate(Credentials("billing", TOKENS["billing"] + "x")) is None
    assert len(count_verify) == 2


def test_each_authenticator_has_its_own_cache(
    billing: Client, count_verify: list[tuple[str, str]]
) -> None:
    """A reload builds a new Authenticator: a revoked token must not survive in a cache."""
    creds = Credentials("billing", TOKENS["billing"])
    assert Authenticator([billing]).authenticate(creds) is billing
    revoked = Client("billing", [token_hash("other")])
    assert Authenticator([revoked]).authenticate(creds) is None
    assert len(count_verify) == 2


def test_cache_never_grows_beyond_its_bound(
    monkeypatch: pytest.MonkeyPatch, count_verify: list[tuple[str, str]]
) -> None:
    monkeypatch.setattr(auth, "CACHE_MAX_ENTRIES", 8)
    cheap = Client("billing", ["scrypt$not-a-hash"])  # verify_token returns False at once
    authenticator = Authenticator([cheap])
    for i in range(50):
        authenticator.authenticate(Credentials("billing", f"guess-{i}"))
        assert len(authenticator._cache) <= 8
    assert len(count_verify) == 50
    authenticator.authenticate(Credentials("billing", "guess-49"))
    assert len(count_verify) == 50  # the newest verdict is still cached


# --- check: auth plus source CIDRs ---------------------------------------------------------


def test_check_without_credentials_asks_for_them(billing: Client) -> None:
    assert Authenticator([billing]).check(None, ip("127.0.0.1")) == (
        None,
        Decision(Reason.AUTH_REQUIRED),
    )


def test_check_with_a_wrong_token_is_invalid(billing: Client) -> None:
    client, decision = Authenticator([billing]).check(
        Credentials("billing", "wrong"), ip("127.0.0.1")
    )
    assert client is None
    assert decision.reason is Reason.AUTH_INVALID


def test_check_allows_a_peer_inside_the_source_cidrs() -> None:
    restricted = Client("billing", [token_hash("billing")], nets("10.0.0.0/8"))
    creds = Credentials("billing", TOKENS["billing"])
    assert Authenticator([restricted]).check(creds, ip("10.1.2.3")) == (restricted, ALLOWED)


def test_check_refuses_a_peer_outside_the_source_cidrs() -> None:
    restricted = Client("billing", [token_hash("billing")], nets("10.0.0.0/8"))
    creds = Credentials("billing", TOKENS["billing"])
    client, decision = Authenticator([restricted]).check(creds, ip("203.0.113.5"))
    assert client is restricted
    assert decision.reason is Reason.SOURCE_NOT_ALLOWED
    assert decision.rule == "clients.billing"


def test_check_header_judges_raw_values_as_check_does_and_decodes_each_once(
    count_verify: list[tuple[str, str]],
) -> None:
    restricted = Client("billing", [token_hash("billing")], nets("10.0.0.0/8"))
    authenticator = Authenticator([restricted])
    good = basic(b"billing:" + TOKENS["billing"].encode())
    cases = [
        (good, ip("10.1.2.3"), (restricted, ALLOWED)),
        (
            good,
            ip("203.0.113.5"),
            (restricted, Decision(Reason.SOURCE_NOT_ALLOWED, rule="clients.billing")),
        ),
        (basic(b"billing:wrong"), ip("10.1.2.3"), (None, Decision(Reason.AUTH_INVALID))),
        (
            b"Bearer " + TOKENS["billing"].encode(),
            ip("10.1.2.3"),
            (None, Decision(Reason.AUTH_REQUIRED)),
        ),
        (b"Basic not base64!", ip("10.1.2.3"), (None, Decision(Reason.AUTH_REQUIRED))),
    ]
    for _ in range(3):  # the second and third rounds come from the cache
        for value, peer, expected in cases:
            assert authenticator.check_header(value, peer) == expected, value
            creds = parse_basic(value)
            assert authenticator.check(creds, peer) == expected
    assert len(count_verify) == 2  # the good token and the wrong one, once each


def test_check_judges_an_ipv4_mapped_peer_as_its_ipv4_address() -> None:
    restricted = Client("billing", [token_hash("billing")], nets("10.0.0.0/8"))
    authenticator = Authenticator([restricted])
    creds = Credentials("billing", TOKENS["billing"])
    assert authenticator.check(creds, ip("::ffff:10.1.2.3"))[1] is ALLOWED
    assert authenticator.check(creds, ip("::ffff:203.0.113.5"))[1].reason is (
        Reason.SOURCE_NOT_ALLOWED
    )


@pytest.mark.parametrize(
    ("peer", "cidrs", "allowed"),
    [
        ("127.0.0.1", ["127.0.0.0/8"], True),
        ("127.0.0.1", ["::/0"], False),
        ("::1", ["0.0.0.0/0"], False),
        ("::1", ["::1/128"], True),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True),
        ("2001:db8::1", ["2001:db8::/32", "10.0.0.0/8"], True),
        ("10.0.0.1", [], False),
    ],
)
def test_source_allowed(peer: str, cidrs: list[str], allowed: bool) -> None:
    assert source_allowed(ip(peer), nets(*cidrs)) is allowed
