"""A gateway URL from FIXEDIP_URL: parsed, checked, and never shown with its token."""

from __future__ import annotations

from fixedip.client.errors import ConfigurationError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# A name under one of these suffixes (or with no dot at all, as container and cluster
# service names are) is private by construction; other names are resolved to decide.
LOCAL_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan")


def is_global(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_global
    return ip.is_global


class Endpoint:
    """One gateway from `FIXEDIP_URL`, parsed and checked."""

    __slots__ = ("host", "port", "redacted", "scheme", "token", "url", "user", "vetted")

    def __init__(self, text: str, allow_insecure: bool) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(text.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        shown_host = f"[{host}]" if ":" in host else host
        try:
            port = parts.port
        except ValueError:
            port = None
        self.redacted = f"{scheme}://{parts.username or ''}:***@{shown_host}:{port or ''}"
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"gateway URL {self.redacted}: use http:// (the gateway's proxy listener) "
                "or https:// (its TLS listener)"
            )
        if not host or port is None:
            raise ConfigurationError(
                f"gateway URL {self.redacted}: give the host and the port, e.g. "
                "http://billing:TOKEN@10.0.1.5:3128 (3128 is the proxy listener's usual "
                "port, 3129 the TLS listener's)"
            )
        if not parts.username or not parts.password:
            raise ConfigurationError(
                f"gateway URL {self.redacted}: put the client name and token in it, "
                "as http://NAME:TOKEN@host:port (`fixedip token new NAME` makes one)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigurationError(
                f"gateway URL {self.redacted}: a gateway URL has no path, query or fragment"
            )
        self.scheme = scheme
        self.host = host
        self.port = port
        self.user = unquote(parts.username)
        self.token = unquote(parts.password)
        self.url = f"{scheme}://{parts.username}:{parts.password}@{shown_host}:{port}"
        self.vetted = scheme == "https" or allow_insecure or self._private_by_name()
        if not self.vetted and self._is_literal():
            raise self._insecure(host)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def _is_literal(self) -> bool:
        import ipaddress

        try:
            ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return False
        return True

    def _private_by_name(self) -> bool:
        if self._is_literal():
            return not is_global(self.host)
        name = self.host.lower().rstrip(".")
        return name == "localhost" or "." not in name or name.endswith(LOCAL_NAME_SUFFIXES)

    def _insecure(self, address: str) -> ConfigurationError:
        via = "" if address == self.host else f" (it resolves to {address})"
        return ConfigurationError(
            f"gateway URL {self.redacted} is plain http:// to a public address{via}: the "
            "token would cross the internet in the clear. Use the gateway's https:// "
            "listener, or, if the path is private after all, pass allow_insecure=True "
            "(FIXEDIP_ALLOW_INSECURE=1)"
        )

    def vet(self) -> None:
        """Refuse an http:// name that resolves to a public address (DNS, once).

        Raises ConfigurationError for a public address, OSError if the name does not
        resolve (the caller treats that gateway as unreachable).
        """
        if self.vetted:
            return
        import socket

        for *_, sockaddr in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            if is_global(str(sockaddr[0])):
                raise self._insecure(str(sockaddr[0]))
        self.vetted = True

    def authorization(self) -> str:
        import base64

        return "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()


def normalise_ips(values: Iterable[str]) -> Iterator[str]:
    import ipaddress

    for value in values:
        if not value.strip():
            continue
        try:
            yield str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ConfigurationError(
                f"expected IP {value.strip()!r} (FIXEDIP_EXPECTED_IPS) is not an IP address"
            ) from None
