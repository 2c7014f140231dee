"""Each signature preset against signatures made the way its sender documents them:
valid, tampered, wrong key, missing, expired, and key rotation."""

from __future__ import annotations

import time
from typing import Any

import pytest
from multidict import CIMultiDict

from fixedip.config import ConfigError
from fixedip.ingress.settings import IngressRouteConfig
from fixedip.ingress.signatures import BAD, EXPIRED, MISSING, Verifier, build_verifier
from tests.ingress.stubs import (
    github_header,
    shopify_header,
    standard_webhooks_headers,
    stripe_header,
)

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_WHSEC = "whsec_c2VjcmV0LXR3by1zZWNyZXQtdHdvLXNlY3JldA=="
LITERAL = "whsec_stripe_like_literal_key"
BODY = b'{"id":"evt_1","object":"event","amount":4200}'


def verifier(verify: str, secrets: list[str], **extra: Any) -> Verifier:
    refs = [f"env:SECRET_{i}" for i in range(len(secrets))]
    with pytest.MonkeyPatch.context() as mp:
        for ref, value in zip(refs, secrets, strict=True):
            mp.setenv(ref[4:], value)
        route = IngressRouteConfig(
            path="/h", target="http://127.0.0.1:9/", verify=verify, secret=refs, **extra
        )
        return build_verifier(route, {ref: value for ref, value in zip(refs, secrets, strict=True)})


def check(
    v: Verifier, headers: dict[str, str], body: bytes = BODY, now: float | None = None
) -> str | None:
    return v.check(CIMultiDict(headers), body, time.time() if now is None else now)


# --- Standard Webhooks ---------------------------------------------------------------


def test_standard_webhooks_valid_signature_passes() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    assert check(v, standard_webhooks_headers(WHSEC, "msg_p5jXN8AQM9LWM0D4loKWxJek", BODY)) is None


def test_standard_webhooks_spec_example_passes() -> None:
    # The worked example of the Standard Webhooks specification.
    v = verifier("standard-webhooks", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    assert v.check(CIMultiDict(headers), body, 1614265330.0) is None


def test_standard_webhooks_any_of_several_signatures_may_match() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    headers = standard_webhooks_headers(WHSEC, "msg_1", BODY)
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]
    assert check(v, headers) is None


def test_standard_webhooks_tampered_body_fails() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    headers = standard_webhooks_headers(WHSEC, "msg_1", BODY)
    assert check(v, headers, BODY.replace(b"4200", b"4201")) == BAD


def test_standard_webhooks_changed_id_fails_because_the_id_is_signed() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    headers = standard_webhooks_headers(WHSEC, "msg_1", BODY)
    headers["webhook-id"] = "msg_2"
    assert check(v, headers) == BAD


def test_standard_webhooks_wrong_key_fails() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    assert check(v, standard_webhooks_headers(OTHER_WHSEC, "msg_1", BODY)) == BAD


def test_standard_webhooks_expired_and_future_timestamps_fail() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    now = time.time()
    old = standard_webhooks_headers(WHSEC, "msg_1", BODY, timestamp=int(now) - 301)
    future = standard_webhooks_headers(WHSEC, "msg_1", BODY, timestamp=int(now) + 301)
    assert check(v, old, now=now) == EXPIRED
    assert check(v, future, now=now) == EXPIRED
    edge = standard_webhooks_headers(WHSEC, "msg_1", BODY, timestamp=int(now) - 299)
    assert check(v, edge, now=now) is None


def test_standard_webhooks_missing_headers_fail() -> None:
    v = verifier("standard-webhooks", [WHSEC])
    headers = standard_webhooks_headers(WHSEC, "msg_1", BODY)
    for name in headers:
        assert check(v, {k: x for k, x in headers.items() if k != name}) == MISSING


def test_standard_webhooks_rotation_accepts_old_and_new_keys() -> None:
    v = verifier("standard-webhooks", [WHSEC, OTHER_WHSEC])
    assert check(v, standard_webhooks_headers(WHSEC, "msg_1", BODY)) is None
    assert check(v, standard_webhooks_headers(OTHER_WHSEC, "msg_1", BODY)) is None


# --- Stripe ----------------------------------------------------------------------------


def test_stripe_valid_signature_passes() -> None:
    v = verifier("stripe", [LITERAL])
    assert check(v, stripe_header(LITERAL, BODY)) is None


def test_stripe_any_v1_may_match_during_a_secret_roll() -> None:
    v = verifier("stripe", [LITERAL])
    header = stripe_header(LITERAL, BODY)["Stripe-Signature"]
    t, v1, v0 = header.split(",")
    assert check(v, {"Stripe-Signature": f"{t},v1={'0' * 64},{v1},{v0}"}) is None


def test_stripe_tampered_body_and_wrong_key_fail() -> None:
    v = verifier("stripe", [LITERAL])
    assert check(v, stripe_header(LITERAL, BODY), BODY + b" ") == BAD
    assert check(v, stripe_header("whsec_other", BODY)) == BAD


def test_stripe_old_timestamp_fails() -> None:
    v = verifier("stripe", [LITERAL], tolerance_s=60)
    now = time.time()
    assert check(v, stripe_header(LITERAL, BODY, timestamp=int(now) - 61), now=now) == EXPIRED


def test_stripe_missing_header_or_v1_fails() -> None:
    v = verifier("stripe", [LITERAL])
    assert check(v, {}) == MISSING
    assert check(v, {"Stripe-Signature": f"t={int(time.time())},v0=abc"}) == BAD


# --- GitHub, Shopify, generic ------------------------------------------------------------


def test_github_valid_invalid_missing() -> None:
    v = verifier("github", ["It's a Secret to Everybody"])
    assert check(v, github_header("It's a Secret to Everybody", BODY)) is None
    assert check(v, github_header("wrong", BODY)) == BAD
    assert check(v, {"X-Hub-Signature": "sha1=abc"}) == MISSING


def test_github_documented_example_passes() -> None:
    # From GitHub's "Validating webhook deliveries" page.
    v = verifier("github", ["It's a Secret to Everybody"])
    headers = {
        "X-Hub-Signature-256": (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        )
    }
    assert v.check(CIMultiDict(headers), b"Hello, World!", time.time()) is None


def test_shopify_valid_invalid_missing() -> None:
    v = verifier("shopify", ["shpss_secret"])
    assert check(v, shopify_header("shpss_secret", BODY)) is None
    assert check(v, shopify_header("shpss_secret", BODY), BODY[:-1]) == BAD
    assert check(v, {}) == MISSING


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_generic_hmac_with_header_encoding_and_prefix(encoding: str) -> None:
    import base64
    import hashlib
    import hmac

    v = verifier(
        "hmac-sha256", ["k3y"], signature_header="X-Signature", encoding=encoding, prefix="v1="
    )
    mac = hmac.new(b"k3y", BODY, hashlib.sha256)
    value = mac.hexdigest() if encoding == "hex" else base64.b64encode(mac.digest()).decode()
    assert check(v, {"X-Signature": "v1=" + value}) is None
    assert check(v, {"X-Signature": value}) == BAD  # prefix required
    assert check(v, {"X-Signature": "v1=" + value}, BODY + b"x") == BAD
    assert check(v, {"X-Other": "v1=" + value}) == MISSING


# --- configuration of the presets ---------------------------------------------------------


def test_presets_need_a_secret_and_none_refuses_one() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs a secret"):
        IngressRouteConfig(path="/h", target="http://127.0.0.1:9/", verify="github")
    with pytest.raises(ValidationError, match="secret: needs verify"):
        IngressRouteConfig(
            path="/h", target="http://127.0.0.1:9/", secret=["env:PATH"], verify="none"
        )


def test_standard_webhooks_secret_must_be_base64(tmp_path: Any) -> None:
    from tests.ingress.stubs import relay_config

    secret = tmp_path / "s"
    secret.write_text("whsec_not base64!")
    route = {
        "path": "/h",
        "target": "http://127.0.0.1:9/",
        "verify": "standard-webhooks",
        "secret": f"file:{secret}",
    }
    with pytest.raises(ConfigError, match=r"ingress\.routes\[0\]: secret 1: expected a Standard"):
        relay_config(tmp_path, [route])
