"""The one typed, frozen configuration object and its loader.

Every part of fixedip reads a `Config`. Loading never raises anything but `ConfigError`,
whose message names the file, the key path and what was expected, so the CLI can print
it and exit 2 without a traceback.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fixedip.check.settings import CheckConfig
from fixedip.configtypes import (
    ConfigError,
    Endpoint,
    EndpointField,
    IPAddress,
    IPAddressField,
    IPNetwork,
    IPNetworkField,
    ListenField,
    Section,
    parse_endpoint,
    read_secret,
    secret_problem,
)
from fixedip.fleet.settings import FleetConfig
from fixedip.gateway.tls import TlsConfig
from fixedip.identity.limits import parse_rate
from fixedip.ingress.settings import IngressConfig
from fixedip.policy import rules as rules_mod
from fixedip.policy import tokens

__all__ = [
    "EMBEDDED_DEFAULT",
    "Config",
    "ConfigError",
    "Endpoint",
    "IPAddress",
    "IPNetwork",
    "load",
    "parse",
    "parse_endpoint",
    "read_secret",
]

EMBEDDED_DEFAULT = "<embedded default>"


class ListenConfig(Section):
    http: ListenField = Endpoint(host=ipaddress.ip_address("127.0.0.1"), port=3128)
    socks: ListenField = Endpoint(host=ipaddress.ip_address("127.0.0.1"), port=1080)
    admin: ListenField = Endpoint(host=ipaddress.ip_address("127.0.0.1"), port=9090)
    https: ListenField = None  # the same proxy over TLS; needs [tls]

    @model_validator(mode="after")
    def _listeners(self) -> ListenConfig:
        used: dict[Endpoint, str] = {}
        for name in ("http", "https", "socks", "admin"):
            endpoint = getattr(self, name)
            if endpoint is None or endpoint.port == 0:
                continue
            if endpoint in used:
                raise ValueError(
                    f"{used[endpoint]} and {name} both use {endpoint}: "
                    "give each listener its own port"
                )
            used[endpoint] = name
        return self


class EgressIP(Section):
    """An address to bind; `public` is the address the internet sees when a cloud 1:1-NATs it."""

    bind: IPAddressField
    public: IPAddressField | None = None

    @property
    def seen_as(self) -> IPAddress:
        return self.public or self.bind


def _parse_egress_ip(value: Any) -> Any:
    if isinstance(value, str):
        return {"bind": value}
    if not isinstance(value, Mapping | EgressIP):
        raise ValueError(
            'expected an address such as "203.0.113.7", '
            'or a table { bind = "10.0.1.5", public = "203.0.113.7" }'
        )
    return value


class EgressConfig(Section):
    ips: list[Annotated[EgressIP, BeforeValidator(_parse_egress_ip)]] = Field(min_length=1)
    strategy: Literal["pinned", "round-robin", "failover"] = "round-robin"
    health_check_s: float = Field(default=10.0, gt=0, strict=True)
    # Quarantines survive restarts here; empty: kept in memory only.
    state_file: str = ""
    quarantine_s: float = Field(default=60.0, gt=0)  # first quarantine; doubles per repeat
    quarantine_max_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _quarantine_bounds(self) -> EgressConfig:
        if self.quarantine_s > self.quarantine_max_s:
            raise ValueError("quarantine_s: must not exceed quarantine_max_s")
        return self

    @field_validator("ips")
    @classmethod
    def _unique(cls, v: list[EgressIP]) -> list[EgressIP]:
        seen: dict[IPAddress, int] = {}
        for i, ip in enumerate(v):
            if ip.bind in seen:
                raise ValueError(f"{ip.bind} is listed twice (entries {seen[ip.bind]} and {i})")
            seen[ip.bind] = i
        return v


def _dns_server_port(server: Endpoint) -> Endpoint:
    if server.port == 0:
        raise ValueError(f"{server}: a DNS server needs a port, e.g. 53")
    return server


class DnsConfig(Section):
    servers: list[Annotated[EndpointField, AfterValidator(_dns_server_port)]] = []
    timeout_s: float = Field(default=3.0, gt=0, le=60, strict=True)
    cache_size: int = Field(default=10_000, ge=0, strict=True)
    max_ttl_s: int = Field(default=300, ge=0, strict=True)


class GuardConfig(Section):
    allow_cidrs: list[IPNetworkField] = []


class LogConfig(Section):
    flow: str = "flow.jsonl"  # "" turns it off, as "" turns off a listener
    level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def flow_target(self) -> str | None:
        """What FlowLog takes: the path or "-", or None for no flow log."""
        return self.flow if self.flow.strip() else None


class TimeoutsConfig(Section):
    connect_s: float = Field(default=10.0, gt=0, le=300, strict=True)
    header_s: float = Field(default=10.0, gt=0, le=300, strict=True)
    idle_s: float = Field(default=60.0, gt=0, strict=True)
    upstream_idle_s: float = Field(default=30.0, gt=0, strict=True)
    tunnel_idle_s: float = Field(default=3600.0, gt=0, strict=True)
    shutdown_grace_s: float = Field(default=10.0, ge=0, strict=True)
    tls_handshake_s: float = Field(default=10.0, gt=0, le=300, strict=True)


class LimitsConfig(Section):
    max_header_bytes: int = Field(default=65536, ge=1024, le=1 << 20, strict=True)
    max_connections: int = Field(default=10_000, ge=1, strict=True)
    max_connections_per_client: int = Field(default=1_000, ge=1, strict=True)
    max_body_bytes: int = Field(default=0, ge=0, strict=True)
    pool_per_destination: int = Field(default=64, ge=0, strict=True)
    max_tls_handshakes: int = Field(default=512, ge=1, strict=True)


_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def client_name_problem(name: str) -> str | None:
    """Why `name` cannot be a client name, or None; shared with `fixedip token new`."""
    if _CLIENT_NAME_RE.match(name):
        return None
    return (
        "expected 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
        "letter or digit (it is the user name in Proxy-Authorization, so no ':')"
    )


class ClientConfig(Section):
    name: str
    token_hash: list[str]
    source_cidrs: list[IPNetworkField] = [
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    ]
    allow: list[str] = []
    deny: list[str] = []
    connect_ports: list[Annotated[int, Field(ge=1, le=65535, strict=True)]] = [443]
    egress: IPAddressField | None = None
    # observe: what allow/deny rules or connect_ports would refuse is let through and
    # flagged in the flow log (the SSRF guard is never relaxed). Unset: policy.mode.
    mode: Literal["enforce", "observe"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = client_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("token_hash", mode="before")
    @classmethod
    def _token_hash(cls, v: Any) -> Any:
        values = [v] if isinstance(v, str) else v
        if not isinstance(values, list) or not values:
            raise ValueError("expected a hash from `fixedip token hash`, or a list of them")
        for item in values:
            if not isinstance(item, str) or not tokens.is_token_hash(item):
                raise ValueError(
                    "expected the output of `fixedip token hash` (scrypt$...); "
                    "never put the token itself in the file"
                )
        return values

    @field_validator("allow", "deny")
    @classmethod
    def _rules(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            try:
                rules_mod.parse_rule(text)
            except ValueError as exc:
                raise ValueError(f"rule {i + 1} ({text!r}): {exc}") from None
        return v


class DemoConfig(Section):
    """The offline demo's echo vendor; only the embedded default sets it."""

    echo: EndpointField | None = None


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class DestinationConfig(Section):
    """Per-vendor behaviour; the first entry whose `match` fits the host applies."""

    match: str
    sanitize: Literal["standard", "strict", "allowlist"] = "standard"
    sanitize_extra: list[str] = []
    block_statuses: list[Annotated[int, Field(ge=400, le=599)]] = [403, 429]
    # { url, method = "OPTIONS", blocked = [403], interval_s = 300, timeout_s = 3 }
    canary: dict[str, Any] | None = None
    rate: str | None = None
    burst: int | None = Field(default=None, ge=1, strict=True)
    per_egress_ip: bool = False
    concurrency: int | None = Field(default=None, ge=1, strict=True)
    queue_timeout_s: float = Field(default=5.0, ge=0, le=300)

    @field_validator("canary")
    @classmethod
    def _canary(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from fixedip.identity.canary import CanarySpec

            CanarySpec.from_mapping(v)  # raises ValueError naming what is wrong
        return v

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)  # raises ValueError with the expected forms
        return v

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.concurrency is not None

    @model_validator(mode="after")
    def _limits_need_a_name(self) -> DestinationConfig:
        if self.limited:
            try:
                ipaddress.ip_address(self.match)
            except ValueError:
                pass
            else:
                raise ValueError(
                    f"match: rate and concurrency need a host-name match, not {self.match}"
                )
        if self.burst is not None and self.rate is None:
            raise ValueError('burst: needs a rate, e.g. rate = "20/s"')
        return self

    @field_validator("match")
    @classmethod
    def _match(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v.strip("[]")))  # a vendor addressed by IP
        except ValueError:
            pass
        try:
            rule = rules_mod.parse_rule(f"{v}:*")
        except ValueError as exc:
            raise ValueError(
                f"expected a host name, *.domain, * or one IP address ({exc})"
            ) from None
        if rule.host is None:
            raise ValueError("expected a host name, *.domain, * or one IP address, not a network")
        return rule.host

    @field_validator("sanitize_extra")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in {"host", "content-length", "transfer-encoding"}:
                raise ValueError(f"{name!r} frames the message and is never sanitised")
        return v


_ROUTE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class RouteConfig(Section):
    """Route mode: the function speaks plain HTTP to the gateway, which opens HTTPS to
    base_url from the fixed IP and injects the credentials the function never holds."""

    name: str
    base_url: str
    auth: dict[str, str] | None = None
    ca_file: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ROUTE_NAME_RE.match(v):
            raise ValueError("expected lowercase letters, digits and '-' (it becomes a host label)")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in ("https", "http") or not host or "@" in host:
            raise ValueError(
                'expected "https://host[:port][/prefix]", e.g. "https://api.stripe.com"'
            )
        return v.rstrip("/")

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        keys = set(v)
        if keys == {"bearer"} or keys == {"basic"}:
            ref = next(iter(v.values()))
        elif keys == {"header", "value"}:
            if not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", v["header"]):
                raise ValueError(f"{v['header']!r} is not a header name")
            ref = v["value"]
        else:
            raise ValueError(
                'expected { bearer = "env:NAME" }, { basic = "file:PATH" } or '
                '{ header = "X-Api-Key", value = "env:NAME" }'
            )
        problem = secret_problem(ref)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca(cls, v: str) -> str:
        if v and not Path(v).is_file():
            raise ValueError(f"no such CA bundle {v!r}")
        return v


class PolicyConfig(Section):
    mode: Literal["enforce", "observe"] = "enforce"


class ServerConfig(Section):
    """The process model."""

    workers: int = Field(default=1, ge=1, le=64, strict=True)


class Config(Section):
    server: ServerConfig = ServerConfig()
    policy: PolicyConfig = PolicyConfig()
    listen: ListenConfig = ListenConfig()
    # Read through `egress`; absent only in a file that runs the webhook relay alone.
    egress_section: EgressConfig | None = Field(default=None, alias="egress")
    dns: DnsConfig = DnsConfig()
    guard: GuardConfig = GuardConfig()
    log: LogConfig = LogConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    limits: LimitsConfig = LimitsConfig()
    clients: list[ClientConfig] = []
    destinations: list[DestinationConfig] = []
    routes: list[RouteConfig] = []
    demo: DemoConfig = DemoConfig()
    tls: TlsConfig | None = None
    ingress: IngressConfig | None = None
    fleet: FleetConfig | None = None
    check: CheckConfig | None = None
    source: str = EMBEDDED_DEFAULT

    @property
    def runs_proxy(self) -> bool:
        """False for a file that runs only the webhook relay (no [egress])."""
        return self.egress_section is not None

    @property
    def egress(self) -> EgressConfig:
        """The [egress] section; only the proxy reads it, and runs only when it exists."""
        if self.egress_section is None:
            raise RuntimeError(f"{self.source} has no [egress]: it runs only the webhook relay")
        return self.egress_section

    # Messages of the model validators start with their key path (see _format_errors).
    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        self._proxy_or_relay()
        if self.listen.https is not None and self.tls is None:
            raise ValueError(
                "listen.https: the TLS listener needs a [tls] section with cert and key "
                '(tls.cert = "fullchain.pem", tls.key = "privkey.pem")'
            )
        if self.server.workers > 1:
            for name in ("http", "https", "socks", "admin"):
                endpoint = getattr(self.listen, name)
                if endpoint is not None and endpoint.port == 0:
                    raise ValueError(
                        f"listen.{name}: port 0 cannot be shared by {self.server.workers} "
                        "workers; give a fixed port or set server.workers = 1"
                    )
        repeat = _repeated([r.name for r in self.routes])
        if repeat:
            i, first, name = repeat
            raise ValueError(f"routes[{i}].name: {name!r} is already the name of routes[{first}]")
        repeat = _repeated([c.name for c in self.clients])
        if repeat:
            i, first, name = repeat
            raise ValueError(
                f"clients[{i}].name: {name!r} is already the name of "
                f"clients[{first}]; client names must be unique"
            )
        if self.egress_section is None:
            return self
        pool = {ip.bind for ip in self.egress.ips} | {ip.seen_as for ip in self.egress.ips}
        for i, client in enumerate(self.clients):
            if client.egress is not None and client.egress not in pool:
                raise ValueError(
                    f"clients[{i}].egress: {client.egress} is not one of egress.ips "
                    f"({', '.join(str(ip.bind) for ip in self.egress.ips)})"
                )
        return self

    def _proxy_or_relay(self) -> None:
        """A file runs the proxy ([egress]), the webhook relay ([ingress]) or both."""
        if self.egress_section is None:
            if self.ingress is None:
                raise ValueError(
                    "egress: required key is missing (a file without [egress] must have "
                    "[ingress] and runs only the webhook relay)"
                )
            for name in ("http", "https", "socks"):
                if name in self.listen.model_fields_set and getattr(self.listen, name):
                    raise ValueError(
                        f"listen.{name}: the proxy needs [egress]; add it, or remove "
                        f"listen.{name} to run only the webhook relay"
                    )
        elif (
            self.listen.http is None
            and self.listen.socks is None
            and self.listen.https is None
            and self.ingress is None
        ):
            raise ValueError("listen: set at least one of http or socks (or https)")

    def client(self, name: str) -> ClientConfig | None:
        for c in self.clients:
            if c.name == name:
                return c
        return None


def _repeated(names: list[str]) -> tuple[int, int, str] | None:
    """(index, index of its first use, name) for the first name used twice, or None."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            return i, first[name], name
        first[name] = i
    return None


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "union[")) or part == "str" or part.endswith("]"):
            continue  # pydantic's validator labels, not keys
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _describe(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; `fixedip config example` lists every key)"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short":
        return f"expected at least {err['ctx']['min_length']} entry, got none"
    if kind == "list_type":
        return f"expected an array, got {_toml_value(err.get('input'))}"
    if kind in {"model_type", "dict_type"}:
        return f"expected a table, got {_toml_value(err.get('input'))}"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if msg.startswith("Assertion failed, "):
        return msg[len("Assertion failed, ") :]
    if msg.startswith("Input should be "):
        expected = msg[len("Input should be ") :]
        if expected.startswith(("greater", "less")):
            expected = "a number " + expected
        return f"expected {expected}, got {_toml_value(err.get('input'))}"
    return msg


def _toml_value(value: Any) -> str:
    """How the offending value was spelled in the file, for "got ..." in messages."""
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    seen = set()
    for err in exc.errors():
        loc = tuple(p for p in err.get("loc", ()) if p != "source")
        if loc:
            line = f"{source}: {_key_path(loc)}: {_describe(err)}"
        else:  # a Config model validator: its message starts with the key path
            line = f"{source}: {_describe(err)}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return "\n".join(lines)


def parse(text: str, source: str) -> Config:
    """Build a Config from TOML text; `source` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        raise ConfigError(
            f"{source}: arrays or inline tables are nested too deeply; no setting needs more "
            "than two levels"
        ) from None
    return from_mapping(data, source)


def from_mapping(data: Mapping[str, Any], source: str) -> Config:
    if "source" in data:
        raise ConfigError(f"{source}: source: {_describe({'type': 'extra_forbidden'})}")
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load(path: str | Path | None) -> Config:
    """Load a file, or the embedded default demo configuration when `path` is None."""
    if path is None:
        return parse(embedded_text("default.toml"), EMBEDDED_DEFAULT)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    return parse(text, str(p))


def embedded_text(name: str) -> str:
    """A TOML file shipped inside the package (`default.toml`, `example.toml`)."""
    return resources.files("fixedip").joinpath(name).read_text(encoding="utf-8")


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with secrets replaced."""
    data = config.model_dump(mode="json", exclude={"source"}, by_alias=True)
    for name, endpoint in data["listen"].items():
        if endpoint is None:
            data["listen"][name] = ""
    for client in data.get("clients", []):
        client["token_hash"] = [tokens.redact_hash(h) for h in client.get("token_hash", [])]
    if not data["demo"]["echo"]:
        data.pop("demo")
    stripped: dict[str, Any] = _strip_none(data)
    return stripped


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value
