"""The optional `[check]` section: the gateway runs `fixedip check` itself, periodically,
from each of its egress IPs, and exposes the results as metrics and on GET /checks.

The defaults are the CLI's (docs/check.md); "" means "the default" for the paths and the
resolver, as for other optional strings in the configuration.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from fixedip.check.dnsbl import DEFAULT_ZONES
from fixedip.check.echo import DEFAULT_ECHO_URLS, ECHO_TIMEOUT_S
from fixedip.check.resolver import parse_server
from fixedip.configtypes import IPAddressField, Section

MAX_ECHO_URLS = 16
MAX_DNSBL_ZONES = 32


class CheckConfig(Section):
    # How often the checks run, from every egress IP (the first run is at start-up).
    interval_s: float = Field(default=3600.0, ge=1)
    # Per echo request and per DNS query.
    timeout_s: float = Field(default=ECHO_TIMEOUT_S, gt=0, le=60)
    echo: list[str] = Field(default=list(DEFAULT_ECHO_URLS), max_length=MAX_ECHO_URLS)
    resolver: str = ""  # HOST[:PORT] for PTR and blocklist queries; "" = resolv.conf
    dnsbl: list[str] = Field(default=list(DEFAULT_ZONES), max_length=MAX_DNSBL_ZONES)
    ranges_cache: str = ""  # where `fixedip ranges update` keeps the files; "" = its default
    allowlist: str = ""  # the vendor's allowlist file; "" = no allowlist check
    expect: list[IPAddressField] = []  # [] = each egress IP's own public address

    @field_validator("echo")
    @classmethod
    def _echo_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            try:
                parts.port  # noqa: B018  (raises ValueError on a bad port)
            except ValueError:
                raise ValueError(f"{url!r} has an invalid port") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f'expected http:// or https:// URLs such as "https://checkip.amazonaws.com/", '
                    f"got {url!r}"
                )
        return urls

    @field_validator("resolver")
    @classmethod
    def _resolver(cls, value: str) -> str:
        if value:
            parse_server(value)  # ValueError names the expected form
        return value

    @field_validator("dnsbl")
    @classmethod
    def _zones(cls, zones: list[str]) -> list[str]:
        for zone in zones:
            labels = zone.strip(".").split(".")
            if not zone or any(not label or len(label) > 63 for label in labels):
                raise ValueError(
                    f'expected DNS zone names such as "zen.spamhaus.org", got {zone!r}'
                )
        return zones

    def resolver_address(self) -> tuple[str, int] | None:
        return parse_server(self.resolver) if self.resolver else None
