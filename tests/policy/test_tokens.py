"""Client tokens: fresh tokens, salted scrypt hashes, verification and redaction."""

from __future__ import annotations

import re

import pytest

from fixedip.policy.tokens import (
    hash_token,
    is_token_hash,
    new_token,
    redact_hash,
    verify_token,
)
from tests.helpers import TOKENS, token_hash

BILLING = TOKENS["billing"]


def parts(stored: str) -> list[str]:
    return stored.split("$")


def test_hash_then_verify_round_trip() -> None:
    assert verify_token(BILLING, token_hash("billing"))


def test_wrong_token_does_not_verify() -> None:
    assert not verify_token(TOKENS["other"], token_hash("billing"))
    assert not verify_token(BILLING + " ", token_hash("billing"))
    assert not verify_token("", token_hash("billing"))


def test_hash_has_the_documented_format() -> None:
    scheme, log2_n, r, p, salt, digest = parts(token_hash("billing"))
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", salt)  # 16 bytes, unpadded urlsafe base64
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", digest)  # 32 bytes


def test_two_hashes_of_one_token_have_different_salts_and_both_verify() -> None:
    first, second = token_hash("billing"), hash_token(BILLING)
    assert first != second
    assert parts(first)[4] != parts(second)[4]
    assert verify_token(BILLING, second)


def test_non_ascii_token_round_trips() -> None:
    stored = hash_token("jeton-é-☃")
    assert verify_token("jeton-é-☃", stored)
    assert not verify_token("jeton-e-☃", stored)


def _with(stored: str, index: int, value: str) -> str:
    fields = parts(stored)
    fields[index] = value
    return "$".join(fields)


def malformed_hashes() -> list[tuple[str, str]]:
    good = token_hash("billing")
    return [
        ("empty", ""),
        ("raw token", BILLING),
        ("other scheme", "bcrypt" + good[len("scrypt") :]),
        ("truncated digest", good[:-5]),
        ("digest too long", good + "AAAA"),
        ("salt of impossible base64 length", _with(good, 4, parts(good)[4][:21])),
        ("salt too short", _with(good, 4, "A" * 8)),
        ("cost too low", _with(good, 1, "9")),
        ("cost too high", _with(good, 1, "21")),
        ("r zero", _with(good, 2, "0")),
        ("p zero", _with(good, 3, "0")),
        ("bad base64 character", _with(good, 5, "!" + parts(good)[5][1:])),
        ("trailing newline", good + "\n"),
        ("missing field", "$".join(parts(good)[:5])),
    ]


@pytest.mark.parametrize(
    "stored", [m[1] for m in malformed_hashes()], ids=[m[0] for m in malformed_hashes()]
)
def test_malformed_stored_hash_never_verifies_and_never_raises(stored: str) -> None:
    assert not is_token_hash(stored)
    assert verify_token(BILLING, stored) is False


def test_hash_beyond_scrypt_memory_limit_is_false_not_an_exception() -> None:
    stored = _with(_with(token_hash("billing"), 1, "20"), 2, "99")
    assert is_token_hash(stored)
    assert verify_token(BILLING, stored) is False


def test_is_token_hash_accepts_what_hash_token_makes() -> None:
    assert is_token_hash(token_hash("billing"))
    assert is_token_hash(token_hash("other"))


def test_is_token_hash_refuses_tokens() -> None:
    assert not is_token_hash(new_token())
    assert not is_token_hash("demo")


def test_redact_hash_keeps_parameters_and_the_digest_tail_only() -> None:
    stored = token_hash("billing")
    _, _, _, _, salt, digest = parts(stored)
    shown = redact_hash(stored)
    assert shown == f"scrypt$14$8$1$…{digest[-6:]}"
    assert salt not in shown
    assert digest[:-6] not in shown


def test_redact_hash_tells_two_hashes_apart() -> None:
    assert redact_hash(token_hash("billing")) != redact_hash(token_hash("other"))


def test_redact_hash_of_garbage_says_invalid() -> None:
    assert redact_hash(BILLING) == "(invalid)"


def test_new_tokens_are_prefixed_url_safe_and_unique() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert re.fullmatch(r"fxp_[A-Za-z0-9_-]{43}", token)
