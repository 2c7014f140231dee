"""Client tokens: generated with `secrets`, stored only as salted scrypt hashes.

Format: `scrypt$<log2 n>$<r>$<p>$<salt>$<digest>` (salt and digest urlsafe base64, no
padding), so the cost can be raised later without breaking stored hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
SALT_BYTES = 16
DIGEST_BYTES = 32
LOG2_N = 14
R = 8
P = 1
_MAX_LOG2_N = 20

_HASH_RE = re.compile(
    r"^scrypt\$(?P<n>[0-9]{1,2})\$(?P<r>[0-9]{1,2})\$(?P<p>[0-9]{1,2})"
    r"\$(?P<salt>[A-Za-z0-9_-]{16,64})\$(?P<digest>[A-Za-z0-9_-]{32,128})$"
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_token() -> str:
    """A fresh random token, safe to paste in a URL's userinfo."""
    return "fxp_" + secrets.token_urlsafe(TOKEN_BYTES)


def _scrypt(token: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        token.encode("utf-8"),
        salt=salt,
        n=1 << log2_n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=DIGEST_BYTES,
    )


def hash_token(token: str) -> str:
    """The `token_hash` value to put in the configuration for `token`."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(token, salt, LOG2_N, R, P)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(digest)}"


def is_token_hash(text: str) -> bool:
    """Whether `text` is a well-formed hash that `verify_token` can check (not a token).

    A truncated paste is refused here: its digest could never match.
    """
    m = _HASH_RE.fullmatch(text)
    if m is None:
        return False
    if not (10 <= int(m["n"]) <= _MAX_LOG2_N and int(m["r"]) >= 1 and int(m["p"]) >= 1):
        return False
    try:
        salt, digest = _unb64(m["salt"]), _unb64(m["digest"])
    except binascii.Error:
        return False
    return len(salt) >= SALT_BYTES and len(digest) == DIGEST_BYTES


def verify_token(token: str, stored: str) -> bool:
    """Constant-time check of `token` against one stored hash; False for a malformed hash."""
    m = _HASH_RE.fullmatch(stored)
    if not m or not is_token_hash(stored):
        return False
    try:
        digest = _scrypt(token, _unb64(m["salt"]), int(m["n"]), int(m["r"]), int(m["p"]))
    except (ValueError, UnicodeError):  # scrypt's memory limit; a token that is not text
        return False
    return hmac.compare_digest(digest, _unb64(m["digest"]))


def redact_hash(stored: str) -> str:
    """Enough of a hash to tell two apart in `config check`, not enough to attack it."""
    m = _HASH_RE.fullmatch(stored)
    if not m:
        return "(invalid)"
    return f"scrypt${m['n']}${m['r']}${m['p']}$…{m['digest'][-6:]}"
