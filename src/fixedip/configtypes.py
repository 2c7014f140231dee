"""Field types shared by every configuration section (the gateway's, the relay's, the
fleet's), so a part can define its own section without importing the whole loader."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, phrased for the operator; `str()` is the whole message."""


class Endpoint(BaseModel):
    """A `host:port` listen or server address (`[v6]:port` for IPv6)."""

    model_config = ConfigDict(frozen=True)
    host: IPAddress
    port: int

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_ENDPOINT_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>[0-9]{1,5})$")


def parse_endpoint(value: Any) -> Any:
    if isinstance(value, Endpoint | dict):
        return value
    if not isinstance(value, str):
        raise ValueError('expected a string "address:port", e.g. "127.0.0.1:3128"')
    m = _ENDPOINT_RE.match(value.strip())
    if not m:
        raise ValueError(
            f'expected "address:port" with a numeric IP address, e.g. "127.0.0.1:3128" '
            f'or "[::1]:3128", got "{value}"'
        )
    try:
        host = ipaddress.ip_address(m["v6"] or m["v4"])
    except ValueError:
        raise ValueError(f'"{value}" does not hold a valid IP address') from None
    port = int(m["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f'port in "{value}" must be between 0 (any free port) and 65535')
    return {"host": host, "port": port}


EndpointField = Annotated[
    Endpoint, BeforeValidator(parse_endpoint), PlainSerializer(str, return_type=str)
]


def _listen_endpoint(value: Any) -> Any:
    return None if value == "" else value


# A listener: "address:port", or "" to turn it off.
ListenField = Annotated[EndpointField | None, BeforeValidator(_listen_endpoint)]


def _parse_ip(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):  # pydantic would take an integer (or true) as one
        raise ValueError(f'expected an IPv4 or IPv6 address such as "203.0.113.7", got {value!r}')
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(
            f'expected an IPv4 or IPv6 address such as "203.0.113.7", got "{value}"'
        ) from None


def _parse_network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):  # pydantic would take an integer (or true) as one
        raise ValueError(
            f'expected an address or network in CIDR form such as "203.0.113.0/24", got {value!r}'
        )
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f'expected an address or network in CIDR form such as "203.0.113.0/24", got "{value}"'
        ) from None
    raise ValueError(f'"{value}" has host bits set: write the network address, "{loose}"')


# Parsed before pydantic's own IP union, which would report one error per address family.
IPAddressField = Annotated[IPAddress, BeforeValidator(_parse_ip)]
IPNetworkField = Annotated[IPNetwork, BeforeValidator(_parse_network)]


class Section(BaseModel):
    """Base of every configuration section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def secret_problem(ref: str) -> str | None:
    """Why a secret reference cannot be read now, or None. Secrets are read by the
    gateway (again on every reload), never stored in the configuration object."""
    if ref.startswith("env:"):
        name = ref[4:]
        if not name or name not in os.environ:
            return f"environment variable {name!r} is not set"
        return None
    if ref.startswith("file:"):
        path = Path(ref[5:])
        if not path.is_file() or not os.access(path, os.R_OK):
            return f"cannot read secret file {str(path)!r}"
        return None
    return 'expected "env:NAME" or "file:PATH" (never the secret itself)'


def read_secret(ref: str) -> str:
    """The value behind an "env:NAME" or "file:PATH" reference (checked by secret_problem)."""
    if ref.startswith("env:"):
        return os.environ[ref[4:]]
    return Path(ref[5:]).read_text(encoding="utf-8").strip()
