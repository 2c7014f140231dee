"""The `[ingress]` section: the webhook relay's listener, spool and routes.

Secrets (signature keys, extra header values) are references (`env:NAME`, `file:PATH`)
checked here and read by the relay when it starts and on every reload, never stored in
the configuration object.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fixedip.configtypes import (
    EndpointField,
    IPNetworkField,
    Section,
    read_secret,
    secret_problem,
)

VerifyPreset = Literal["none", "standard-webhooks", "stripe", "github", "shopify", "hmac-sha256"]

_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")

# Never forwarded to the target (RFC 9110 section 7.6.1, plus framing the client sets).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "host",
        "content-length",
        "expect",
    }
)

# The header each preset's sender uses as its own delivery id (de-duplicates receipts).
# Stripe's event id is in the body, which the relay does not parse.
VENDOR_ID_HEADERS: dict[str, str] = {
    "standard-webhooks": "webhook-id",
    "github": "X-GitHub-Delivery",
    "shopify": "X-Shopify-Webhook-Id",
}


def _header_name(name: str) -> str:
    if not _HEADER_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a header name")
    return name


class SigV4Config(Section):
    """Sign deliveries with AWS SigV4 (a Lambda function URL with IAM auth)."""

    region: str
    service: str = "lambda"

    @model_validator(mode="after")
    def _botocore(self) -> SigV4Config:
        if importlib.util.find_spec("botocore") is None:
            raise ValueError("needs botocore: pip install 'fixedip[server,aws]'")
        return self


class IngressRouteConfig(Section):
    """One webhook path: who may call it, how it is verified, where it is delivered."""

    path: str
    target: str
    source_cidrs: list[IPNetworkField] = [
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    ]
    verify: VerifyPreset = "none"
    secret: list[str] = []
    tolerance_s: int = Field(default=300, ge=1, le=86400, strict=True)
    signature_header: str = ""
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    # None: the preset's vendor id header; "": no de-duplication.
    dedupe_header: str | None = None
    max_body_bytes: int = Field(default=1 << 20, ge=1, le=100 << 20, strict=True)
    concurrency: int = Field(default=8, ge=1, le=1000, strict=True)
    timeout_s: float = Field(default=30.0, gt=0, le=900)
    max_attempts: int = Field(default=16, ge=1, le=100, strict=True)
    retry_base_s: float = Field(default=5.0, gt=0)
    retry_max_s: float = Field(default=21600.0, gt=0)
    headers: dict[str, str] = {}
    sigv4: SigV4Config | None = None
    ca_file: str = ""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _PATH_RE.match(v) or "?" in v:
            raise ValueError('expected an absolute path without a query, e.g. "/hooks/payments"')
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("https", "http") or not host or "@" in host or "#" in v:
            raise ValueError(
                'expected "https://host[:port][/path]", e.g. "https://abc.lambda-url.eu-west-1.on.aws/"'
            )
        return v

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("secret")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for i, ref in enumerate(v):
            problem = secret_problem(ref)
            if problem:
                raise ValueError(f"secret {i + 1}: {problem}")
        return v

    @field_validator("signature_header", "dedupe_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return _header_name(v) if v else v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _header_name(name)
            if name.lower() in HOP_BY_HOP:
                raise ValueError(f"{name!r} is set by the relay itself and cannot be configured")
            if value.startswith(("env:", "file:")):
                problem = secret_problem(value)
                if problem:
                    raise ValueError(f"{name}: {problem}")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str) -> str:
        if v and not Path(v).is_file():
            raise ValueError(f"no such CA bundle {v!r}")
        return v

    @model_validator(mode="after")
    def _verify(self) -> IngressRouteConfig:
        if self.verify == "none" and self.secret:
            raise ValueError('secret: needs verify = "standard-webhooks", "stripe", ... to be used')
        if self.verify != "none" and not self.secret:
            raise ValueError(f'secret: verify = "{self.verify}" needs a secret ("env:NAME")')
        if self.verify == "hmac-sha256" and not self.signature_header:
            raise ValueError('signature_header: verify = "hmac-sha256" needs the header name')
        if self.verify != "hmac-sha256" and (self.signature_header or self.prefix):
            raise ValueError('signature_header: only for verify = "hmac-sha256"')
        if self.verify == "standard-webhooks":
            for i, ref in enumerate(self.secret):
                if standard_webhooks_key(read_secret(ref)) is None:
                    raise ValueError(
                        f"secret {i + 1}: expected a Standard Webhooks key, whsec_ and base64"
                    )
        if self.retry_base_s > self.retry_max_s:
            raise ValueError("retry_base_s: must not exceed retry_max_s")
        return self

    @property
    def vendor_id_header(self) -> str:
        """The header whose value de-duplicates receipts ("" for none)."""
        if self.dedupe_header is not None:
            return self.dedupe_header
        return VENDOR_ID_HEADERS.get(self.verify, "")


def standard_webhooks_key(secret: str) -> bytes | None:
    """The raw key of a Standard Webhooks secret (`whsec_` + base64), or None if malformed."""
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


class IngressConfig(Section):
    """The webhook relay: receive on the static IP, spool durably, deliver at least once."""

    listen: EndpointField
    spool: str
    cert: str = ""
    key: str = ""
    max_spool_records: int = Field(default=100_000, ge=1, strict=True)
    max_spool_bytes: int = Field(default=1 << 30, ge=1 << 16, strict=True)
    keep_delivered_s: float = Field(default=3600.0, ge=0)
    dedupe_ttl_s: float = Field(default=86400.0, ge=0)
    delivery_id_header: str = "Fixedip-Delivery-Id"
    # A sender that trickles its body is cut off (408) after this.
    body_timeout_s: float = Field(default=30.0, gt=0, le=600)
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)
    routes: list[IngressRouteConfig] = Field(min_length=1)

    @field_validator("spool")
    @classmethod
    def _spool(cls, v: str) -> str:
        # Its directory is checked when the relay starts: a file may be checked elsewhere.
        if not v:
            raise ValueError('expected a file path, e.g. "/var/lib/fixedip/spool.db"')
        return v

    @field_validator("cert", "key")
    @classmethod
    def _pem(cls, v: str) -> str:
        if v and not Path(v).is_file():
            raise ValueError(f"no such file {v!r}")
        return v

    @field_validator("delivery_id_header")
    @classmethod
    def _id_header(cls, v: str) -> str:
        _header_name(v)
        if v.lower() in HOP_BY_HOP:
            raise ValueError(f"{v!r} is a hop-by-hop or framing header")
        return v

    @model_validator(mode="after")
    def _cross(self) -> IngressConfig:
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert: set both cert and key for a TLS listener, or neither")
        seen: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            if route.path in seen:
                first = seen[route.path]
                raise ValueError(
                    f"routes[{i}].path: {route.path!r} is already the path of routes[{first}]"
                )
            seen[route.path] = i
        return self
