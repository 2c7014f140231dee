"""Route mode's targets: where a `[[routes]]` entry goes and what it injects.

Secrets are read when a configuration generation is built (start, every SIGHUP), so a
rotated vendor credential needs only a reload and never sits in the Config object.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass

from fixedip.config import RouteConfig
from fixedip.configtypes import read_secret
from fixedip.proto import http1


@dataclass(frozen=True, slots=True)
class RouteTLS:
    server_name: str
    context: ssl.SSLContext


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """A `[[routes]]` entry ready to serve: where it goes and what it injects."""

    name: str
    host: str
    port: int
    is_ip: bool
    prefix: bytes
    tls: RouteTLS | None
    inject: tuple[bytes, bytes] | None  # (header, value) holding the vendor credential

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def route_target(route: RouteConfig) -> RouteTarget:
    scheme, _, rest = route.base_url.partition("://")
    authority, _, prefix = rest.partition("/")
    tls = scheme == "https"
    host, is_ip, port = http1.parse_authority(authority.encode("ascii"), 443 if tls else 80)
    inject = None
    if route.auth is not None:
        if "bearer" in route.auth:
            inject = (b"Authorization", b"Bearer " + read_secret(route.auth["bearer"]).encode())
        elif "basic" in route.auth:
            raw = read_secret(route.auth["basic"]).encode()
            inject = (b"Authorization", b"Basic " + base64.b64encode(raw))
        else:
            value = read_secret(route.auth["value"]).encode()
            inject = (route.auth["header"].encode("ascii"), value)
    context = None
    if tls:
        context = ssl.create_default_context(cafile=route.ca_file or None)
    return RouteTarget(
        name=route.name,
        host=host,
        port=port,
        is_ip=is_ip,
        prefix=b"/" + prefix.encode() if prefix else b"",
        tls=RouteTLS(host, context) if context else None,
        inject=inject,
    )
