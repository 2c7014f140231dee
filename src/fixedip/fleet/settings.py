"""`[fleet]` and `[fleet.aws]`: several gateways sharing one Redis act as one identity pool.

The models validate what can be checked offline (URL shape, names, secret references,
timeouts); reaching Redis or AWS is the gateway's job at start-up.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, field_serializer, field_validator, model_validator

from fixedip.configtypes import IPAddress, IPAddressField, Section, read_secret, secret_problem

_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EIP_RE = re.compile(r"^eipalloc-[0-9a-f]{8,17}$")
_INSTANCE_RE = re.compile(r"^i-[0-9a-f]{8,17}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]$")
REDIS_HINT = 'expected "redis://host:port/db" or "rediss://host:port/db" (TLS), e.g. "redis://10.0.1.9:6379/0"'


class RedisURL:
    """A parsed `[fleet] redis` URL. The password, if the URL holds one, is never shown."""

    __slots__ = ("db", "host", "password", "port", "tls", "username")

    def __init__(self, text: str) -> None:
        parts = urlsplit(text.strip())
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(REDIS_HINT)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"the port is not a number between 1 and 65535; {REDIS_HINT}"
            ) from None
        if not parts.hostname:
            raise ValueError(f"no host; {REDIS_HINT}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database must be a number, not {path!r}; {REDIS_HINT}")
        if parts.query or parts.fragment:
            raise ValueError(f"no query or fragment is understood; {REDIS_HINT}")
        self.tls = parts.scheme == "rediss"
        self.host = parts.hostname
        self.port = port or 6379
        self.db = int(path) if path else 0
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def redacted(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '')}:***@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}/{self.db}"


class FleetAWSConfig(Section):
    """Floating Elastic IPs: one holder at a time, moved to a healthy member on failure."""

    region: str
    endpoint_url: str = ""  # empty: AWS; tests: a moto server
    instance_id: str = ""  # empty: read from the instance metadata service
    # The private addresses of this instance that floating EIPs are associated with, one
    # EIP per address (so a member holds at most that many); `private_ip` is the
    # one-address form. Neither: the instance's primary private address, one EIP.
    private_ips: list[IPAddressField] = []
    private_ip: IPAddressField | None = None
    floating_eips: list[str] = []

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION_RE.match(v):
            raise ValueError(f'expected an AWS region such as "eu-west-1", got "{v}"')
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if v and not re.match(r"^https?://[^/@\s]+(/.*)?$", v):
            raise ValueError(
                f'expected "" (AWS itself) or a URL such as "http://127.0.0.1:5000", got "{v}"'
            )
        return v

    @field_validator("instance_id")
    @classmethod
    def _instance(cls, v: str) -> str:
        if v and not _INSTANCE_RE.match(v):
            raise ValueError(
                'expected "" (ask the metadata service) or an id such as '
                f'"i-0abc12345678", got "{v}"'
            )
        return v

    @field_validator("floating_eips")
    @classmethod
    def _eips(cls, v: list[str]) -> list[str]:
        for i, alloc in enumerate(v):
            if not _EIP_RE.match(alloc):
                raise ValueError(
                    f'entry {i}: expected an allocation id such as "eipalloc-0abc1234", '
                    f'got "{alloc}"'
                )
        if len(set(v)) != len(v):
            raise ValueError("an allocation id is listed twice")
        return v

    @field_validator("private_ips")
    @classmethod
    def _private_ips(cls, v: list[IPAddress]) -> list[IPAddress]:
        if len(set(v)) != len(v):
            raise ValueError("an address is listed twice: each floating EIP needs its own")
        return v

    @model_validator(mode="after")
    def _one_form(self) -> FleetAWSConfig:
        if self.private_ip is not None and self.private_ips:
            raise ValueError(
                "private_ip and private_ips: keep one (private_ip = X is private_ips = [X])"
            )
        return self

    @property
    def addresses(self) -> list[IPAddress]:
        """Where this member's floating EIPs go, in order ([]: the primary address)."""
        return list(self.private_ips) or ([self.private_ip] if self.private_ip else [])


class FleetConfig(Section):
    """Gateways with the same `redis` share limits, quarantines, canaries and membership."""

    redis: str
    member: str
    # AUTH: "env:NAME" or "file:PATH" (or a password in the URL, which `fixedip config
    # show` never prints). `username` is for Redis 6 ACLs.
    password: str = ""
    username: str = ""
    ca_file: str = ""  # rediss://: verify Redis against this bundle (empty: system store)
    prefix: str = "fixedip"  # key prefix, so fleets can share one Redis
    timeout_ms: int = Field(default=50, ge=1, le=5000, strict=True)  # on the request path
    heartbeat_s: float = Field(default=1.0, gt=0, le=60)
    member_ttl_s: float = Field(default=5.0, gt=0, le=600)
    lease_s: float = Field(default=10.0, gt=0, le=3600)  # a concurrency slot's lease
    eip_lease_s: float = Field(default=6.0, gt=0, le=600)
    aws: FleetAWSConfig | None = None

    @field_validator("redis")
    @classmethod
    def _redis(cls, v: str) -> str:
        RedisURL(v)
        return v.strip()

    @field_serializer("redis")
    def _redacted_redis(self, v: str) -> str:
        return RedisURL(v).redacted()

    @field_validator("member")
    @classmethod
    def _member(cls, v: str) -> str:
        if not _MEMBER_RE.match(v):
            raise ValueError(
                "expected 1-63 letters, digits, '.', '_' or '-', starting with a letter or "
                f'digit (this gateway\'s name in the fleet), got "{v}"'
            )
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: str) -> str:
        if v:
            problem = secret_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$", v):
            raise ValueError(f'expected letters, digits, ".", "_", ":" or "-", got "{v}"')
        return v

    @model_validator(mode="after")
    def _checks(self) -> FleetConfig:
        url = RedisURL(self.redis)
        if self.password and url.password:
            raise ValueError("password: the redis URL already holds one; keep only one of them")
        if self.ca_file and not url.tls:
            raise ValueError('ca_file: only used with a "rediss://" URL')
        if self.member_ttl_s <= self.heartbeat_s:
            raise ValueError("member_ttl_s: must be longer than heartbeat_s")
        return self

    @property
    def url(self) -> RedisURL:
        return RedisURL(self.redis)

    def auth(self) -> tuple[str | None, str | None]:
        """(username, password) for AUTH, reading a secret reference now."""
        url = self.url
        password = read_secret(self.password) if self.password else url.password
        return (self.username or url.username), password
