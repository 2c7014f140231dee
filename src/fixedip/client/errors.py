"""The SDK's exceptions: catch `FixedIPError` to catch them all.

Messages never contain a token: gateway URLs in them are redacted (`billing:***@…`).
"""

from __future__ import annotations


class FixedIPError(Exception):
    """The root of every exception `fixedip.client` raises on purpose."""


class ConfigurationError(FixedIPError, ValueError):
    """The SDK's settings are wrong: a missing or malformed `FIXEDIP_URL`, a token that
    would cross a public network in the clear, a client library that cannot do what the
    settings ask (urllib and a TLS gateway)."""


class MissingDependency(FixedIPError, ImportError):
    """An optional integration was asked for but its library is not installed."""


class GatewayUnavailable(FixedIPError):
    """No configured gateway accepted a connection. `failures` maps each redacted gateway
    URL to what went wrong with it."""

    def __init__(self, message: str, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.failures: dict[str, str] = dict(failures or {})


class GatewayError(FixedIPError):
    """A gateway answered, but refused or failed the request. `status` is the HTTP status
    and `proxy_status` the RFC 9209 `Proxy-Status` value naming the gateway's reason."""

    def __init__(self, message: str, status: int, proxy_status: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.proxy_status = proxy_status


class EgressMismatch(FixedIPError):
    """The egress IP seen is not one of the expected ones. `seen` lists every IP that was
    not expected, `expected` the IPs that are."""

    def __init__(self, seen: tuple[str, ...], expected: tuple[str, ...], source: str) -> None:
        super().__init__(
            f"egress IP {', '.join(seen)} (reported by {source}) is not one of the expected "
            f"{', '.join(expected)}: allowlist it at the vendor, or fix FIXEDIP_EXPECTED_IPS "
            "or the gateway's [egress] ips"
        )
        self.seen = seen
        self.expected = expected
        self.source = source


class EgressBlocked(FixedIPError):
    """The canary was answered with a blocking status: the vendor refuses this egress IP.
    `seen_ip` is the IP the gateway reported for this client (None without a gateway,
    where the platform's address cannot be seen from inside)."""

    def __init__(self, canary_url: str, status: int, seen_ip: str | None) -> None:
        where = f"egress IP {seen_ip}" if seen_ip else "this worker's egress IP"
        super().__init__(f"{canary_url} answered {status} to the canary: the vendor blocks {where}")
        self.canary_url = canary_url
        self.status = status
        self.seen_ip = seen_ip
