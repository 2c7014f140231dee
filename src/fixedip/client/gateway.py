"""`Gateway`: where the fixed IP is, and proxy settings for the common HTTP clients.

Nothing here runs at import. The standard-library modules a method needs, and the
optional client libraries (httpx, aiohttp, botocore), are imported by that method.
"""

from __future__ import annotations

import os
import time

from fixedip.client._endpoint import Endpoint, normalise_ips
from fixedip.client.errors import (
    ConfigurationError,
    GatewayError,
    GatewayUnavailable,
    MissingDependency,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    import ssl
    import urllib.request
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
    from typing import Any, TypeVar

    from botocore.config import Config
    from httpx import AsyncClient, Client, Proxy
    from requests import Session

    from fixedip.client._http import Hop

    T = TypeVar("T")

PROBE_TIMEOUT_S = 1.0
CHOICE_TTL_S = 60.0
# A gateway that failed is left alone for a back-off that doubles per failure, from
# BACKOFF_BASE_S up to BACKOFF_CAP_S; after it, a more preferred one is probed again.
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
# Methods a request may be sent again for on another gateway after it may have been
# received (RFC 9110 section 9.2.2); a request that never reached a gateway is always safe.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
WHOAMI_TIMEOUT_S = 3.0
# Addresses that must never go through a proxy: cloud metadata and credential endpoints
# (the gateway's SSRF guard refuses them, which would break credential lookups) and
# this machine.
DEFAULT_NO_PROXY = (
    "localhost",
    "127.0.0.1",
    "::1",
    "169.254.169.254",
    "169.254.170.2",
    "fd00:ec2::254",
    "metadata.google.internal",
)
_TRUE = ("1", "true", "yes", "on")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Gateway:
    """One or more fixedip gateways (tried in order) and your client's token for them.

    >>> gw = Gateway("http://billing:TOKEN@10.0.1.5:3128")
    >>> requests.get("https://api.vendor.example/", proxies=gw.proxies)

    `url` may hold several gateways, comma-separated, most preferred first: the SDK's
    own requests (`whoami`, `verify_egress`, the guard's canary) go to the next one when
    a gateway refuses the connection or does not answer; the proxy settings name the
    first *healthy* one, where healthy means it accepted a TCP connection within
    `PROBE_TIMEOUT_S` (1 s) the last time it was probed. The choice is kept for
    `CHOICE_TTL_S` (60 s) and dropped as soon as a request finds that gateway
    unreachable. A gateway that failed is skipped for a back-off (1 s, doubling per
    failure up to 30 s); once it is over, a more preferred gateway is probed again and
    the SDK goes back to it when it answers. `requests_session()` also moves a request
    to the next gateway when its gateway cannot be reached: always when nothing was
    sent, otherwise only for idempotent methods. With a single gateway nothing is probed.

    A plain `http://` gateway must be on a loopback or private address (the token
    travels in the clear); a name that is not obviously private is resolved the first
    time the gateway is used and refused if any address it has is public, unless
    `allow_insecure=True`. `https://` gateways are verified against `ca` (a PEM bundle)
    or the system's trust store.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        ca: str | None = None,
        expected_ips: Iterable[str] = (),
        allow_insecure: bool = False,
        no_proxy: str | Iterable[str] | None = None,
    ) -> None:
        texts = url.split(",") if isinstance(url, str) else list(url)
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise ConfigurationError(
                "no gateway URL given: set FIXEDIP_URL=http://NAME:TOKEN@host:port"
            )
        self._endpoints = tuple(Endpoint(t, allow_insecure) for t in texts)
        if ca is not None and not os.path.isfile(ca):
            raise ConfigurationError(f"CA bundle {ca!r} (FIXEDIP_CA) is not a readable file")
        self.ca = ca
        self.expected_ips = tuple(normalise_ips(expected_ips))
        if no_proxy is None:
            no_proxy = DEFAULT_NO_PROXY
        if isinstance(no_proxy, str):
            no_proxy = no_proxy.split(",")
        self.no_proxy = tuple(n.strip() for n in no_proxy if n.strip())
        self._current: Endpoint | None = None
        self._chosen_at = 0.0
        self._backoff: dict[Endpoint, tuple[float, float]] = {}  # -> (until, seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Gateway:
        """Build a Gateway from the environment.

        `FIXEDIP_URL` (required: one URL or several, comma-separated), `FIXEDIP_CA`
        (PEM bundle for an https:// gateway), `FIXEDIP_EXPECTED_IPS` (comma-separated),
        `FIXEDIP_ALLOW_INSECURE=1` and `FIXEDIP_NO_PROXY` (comma-separated; replaces the
        default list `env()` writes to NO_PROXY).
        """
        env = os.environ if environ is None else environ
        url = env.get("FIXEDIP_URL", "").strip()
        if not url:
            raise ConfigurationError(
                "FIXEDIP_URL is not set: set it to http://NAME:TOKEN@host:port "
                "(several gateways: comma-separated)"
            )
        return cls(
            url,
            ca=env.get("FIXEDIP_CA") or None,
            expected_ips=env.get("FIXEDIP_EXPECTED_IPS", "").split(","),
            allow_insecure=env.get("FIXEDIP_ALLOW_INSECURE", "").strip().lower() in _TRUE,
            no_proxy=env.get("FIXEDIP_NO_PROXY"),
        )

    def __repr__(self) -> str:
        return f"Gateway({', '.join(e.redacted for e in self._endpoints)!r})"

    # --- choosing a gateway ------------------------------------------------------------

    def _choose(self) -> Endpoint:
        if len(self._endpoints) == 1:
            only = self._endpoints[0]
            try:
                only.vet()
            except OSError:  # does not resolve: nothing can leak; the client will say so
                return only
            return only
        now = time.monotonic()
        current = self._current
        if current is not None and now - self._chosen_at < CHOICE_TTL_S:
            # Go back to a more preferred gateway once its back-off is over and it answers.
            for endpoint in self._endpoints:
                if endpoint is current:
                    return current
                if self._backoff.get(endpoint, (0.0, 0.0))[0] <= now and self._probe(endpoint):
                    return endpoint
            return current
        failures: dict[str, str] = {}
        waiting = [e for e in self._endpoints if self._backoff.get(e, (0.0, 0.0))[0] > now]
        # Gateways in back-off come last, so a fleet that is all down is still tried.
        ordered = [e for e in self._endpoints if e not in waiting] + waiting
        for endpoint in ordered:
            if self._probe(endpoint, failures):
                return endpoint
        raise _unavailable(failures)

    def _probe(self, endpoint: Endpoint, failures: dict[str, str] | None = None) -> bool:
        """A TCP connection within PROBE_TIMEOUT_S: chosen. A failure starts its back-off."""
        import socket

        try:
            endpoint.vet()
            socket.create_connection((endpoint.host, endpoint.port), PROBE_TIMEOUT_S).close()
        except OSError as exc:
            self._failed(endpoint)
            if failures is not None:
                failures[endpoint.redacted] = _describe(exc)
            return False
        self._succeeded(endpoint)
        return True

    def _succeeded(self, endpoint: Endpoint) -> None:
        self._current = endpoint
        self._chosen_at = time.monotonic()
        self._backoff.pop(endpoint, None)

    def _failed(self, endpoint: Endpoint) -> None:
        """Drop `endpoint` as the choice and back off from it (doubling, with jitter)."""
        import random

        if self._current is endpoint:
            self._current = None
        previous = self._backoff.get(endpoint)
        seconds = min(BACKOFF_CAP_S, previous[1] * 2 if previous else BACKOFF_BASE_S)
        until = time.monotonic() + random.uniform(seconds / 2, seconds)
        self._backoff[endpoint] = (until, seconds)

    def _in_order(self) -> Iterator[Endpoint]:
        """The gateways for the SDK's own requests: the current choice first."""
        if self._current is not None:
            yield self._current
        yield from (e for e in self._endpoints if e is not self._current)

    def _hop(self, endpoint: Endpoint) -> Hop:
        from fixedip.client._http import Hop

        tls = self._gateway_tls() if endpoint.tls else None
        return Hop(endpoint.host, endpoint.port, tls, endpoint.authorization())

    def _gateway_tls(self) -> ssl.SSLContext:
        import ssl

        return ssl.create_default_context(cafile=self.ca)

    def _client_tls(self) -> ssl.SSLContext:
        """The system's trust store plus `ca`: for clients that verify the gateway and
        the vendor with one context (aiohttp)."""
        import ssl

        context = ssl.create_default_context()
        if self.ca:
            context.load_verify_locations(cafile=self.ca)
        return context

    # --- proxy settings --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy URL, token included, of the gateway in use."""
        return self._choose().url

    @property
    def proxies(self) -> dict[str, str]:
        """For requests: `requests.get(url, proxies=gw.proxies)` or `session.proxies`.

        With an https:// gateway prefer `requests_session()`: requests on its own does
        not verify an HTTPS proxy's certificate for http:// URLs, and for https:// URLs
        verifies it with the vendor's `verify=` bundle rather than `ca`.
        """
        url = self.url
        return {"http": url, "https": url}

    def requests_session(self) -> Session:
        """A `requests.Session` that sends everything through the gateway in use,
        verifies an https:// gateway against `ca` (or the system's trust store) for
        every URL, and fails over to the next gateway where that is safe (see the class
        docstring)."""
        try:
            import requests
        except ImportError as exc:
            raise MissingDependency(
                "gw.requests_session() needs requests: pip install requests"
            ) from exc
        from fixedip.client._failover import FailoverAdapter

        session = requests.Session()
        session.proxies.update(self.proxies)
        adapter = FailoverAdapter(self)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def env(self) -> dict[str, str]:
        """HTTP(S)_PROXY and NO_PROXY, both spellings, for subprocesses and other SDKs:
        `subprocess.run(cmd, env={**os.environ, **gw.env()})`."""
        url = self.url
        no_proxy = ",".join(self.no_proxy)
        return {
            "HTTP_PROXY": url,
            "HTTPS_PROXY": url,
            "http_proxy": url,
            "https_proxy": url,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def httpx(self, **kwargs: Any) -> Client:
        """An `httpx.Client` that sends everything through the gateway."""
        try:
            import httpx
        except ImportError as exc:
            raise MissingDependency("gw.httpx() needs httpx: pip install httpx") from exc
        return httpx.Client(proxy=self._httpx_proxy(), **kwargs)

    def httpx_async(self, **kwargs: Any) -> AsyncClient:
        """An `httpx.AsyncClient` that sends everything through the gateway."""
        try:
            import httpx
        except ImportError as exc:
            raise MissingDependency("gw.httpx_async() needs httpx: pip install httpx") from exc
        return httpx.AsyncClient(proxy=self._httpx_proxy(), **kwargs)

    def _httpx_proxy(self) -> Proxy:
        import httpx

        endpoint = self._choose()
        if endpoint.tls:
            return httpx.Proxy(endpoint.url, ssl_context=self._gateway_tls())
        return httpx.Proxy(endpoint.url)

    def aiohttp_kwargs(self) -> dict[str, Any]:
        """Per-request keyword arguments for aiohttp: `session.get(url, **kw)`.

        `proxy` (the URL with the token: aiohttp turns it into Proxy-Authorization for
        plain requests and CONNECT alike), plus `ssl` (the system trust store and `ca`)
        when the gateway speaks TLS, because aiohttp verifies the gateway and the vendor
        with one context.
        """
        endpoint = self._choose()
        kwargs: dict[str, Any] = {"proxy": endpoint.url}
        if endpoint.tls:
            kwargs["ssl"] = self._client_tls()
        return kwargs

    def urllib_opener(self, *handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
        """A `urllib.request` opener whose requests go through the gateway.

        urllib's own ProxyHandler cannot speak TLS to a proxy; for an https:// gateway the
        opener uses the SDK's handler instead, which verifies the gateway against `ca`
        (and https:// vendors against the system's trust store), never plain text.
        """
        import urllib.request

        endpoint = self._choose()
        if endpoint.tls:
            from fixedip.client._urllib import GatewayTLSHandler

            gateway = GatewayTLSHandler(
                endpoint.host, endpoint.port, endpoint.authorization(), self._gateway_tls()
            )
            # An empty ProxyHandler replaces the default one, which would follow *_PROXY.
            return urllib.request.build_opener(urllib.request.ProxyHandler({}), gateway, *handlers)
        proxy = urllib.request.ProxyHandler({"http": endpoint.url, "https": endpoint.url})
        return urllib.request.build_opener(proxy, *handlers)

    def boto3_config(self, **kwargs: Any) -> Config:
        """A `botocore.config.Config` with the gateway as proxy (and `ca` for an
        https:// gateway): `boto3.client("s3", config=gw.boto3_config())`. Extra keyword
        arguments go to `Config`; merge with your own through `Config.merge`."""
        try:
            from botocore.config import Config
        except ImportError as exc:
            raise MissingDependency(
                "gw.boto3_config() needs botocore (it comes with boto3): pip install boto3"
            ) from exc
        endpoint = self._choose()
        proxies_config = {"proxy_ca_bundle": self.ca} if endpoint.tls and self.ca else None
        return Config(
            proxies={"http": endpoint.url, "https": endpoint.url},
            proxies_config=proxies_config,
            **kwargs,
        )

    def route(self, name: str) -> str:
        """The base URL of the gateway's route `name` (route mode): plain HTTP through
        the proxy to `http://NAME.route.fixedip`, and the gateway speaks TLS to the vendor
        and adds the credentials. Use it with a client that has the proxy settings."""
        label = name.strip().lower()
        if not (
            0 < len(label) <= 63
            and label.replace("-", "").isalnum()
            and label.isascii()
            and not label.startswith("-")
            and not label.endswith("-")
        ):
            raise ConfigurationError(
                f"route name {name!r}: use letters, digits and '-' (a DNS label), "
                "as in the gateway's [[routes]] name"
            )
        return f"http://{label}.route.fixedip"

    # --- asking the gateway ------------------------------------------------------------

    def whoami(self, timeout_s: float = WHOAMI_TIMEOUT_S) -> dict[str, Any]:
        """What the gateway says about this client: `{"client", "egress_ip",
        "egress_ips", "strategy"}` (egress_ip: the IP the next request leaves from;
        egress_ips: every IP it may use)."""
        return self._whoami(timeout_s)[1]

    def _whoami(self, timeout_s: float) -> tuple[str, dict[str, Any]]:
        import json

        from fixedip.client._http import GatewayUnreachable, Response, gateway_request

        def ask(redacted: str, hop: Hop) -> tuple[str, Response]:
            try:
                return redacted, gateway_request(hop, "/whoami", timeout_s)
            except (TimeoutError, ConnectionError) as exc:
                raise GatewayUnreachable(_describe(exc)) from exc

        redacted, response = self._failover(ask)
        source = f"{redacted}/whoami"
        if response.status != 200:
            raise _gateway_error(source, response.status, response.headers)
        try:
            data = json.loads(response.body)
        except ValueError as exc:
            raise GatewayError(f"{source} answered something other than JSON", 200) from exc
        if not isinstance(data, dict):
            raise GatewayError(f"{source} answered something other than a JSON object", 200)
        return source, data

    def _failover(self, action: Callable[[str, Hop], T]) -> T:
        """Run `action` against each gateway in turn until one can be connected to.

        `action` gets the redacted URL and how to reach the gateway; it raises
        GatewayUnreachable to move on. A certificate the CA does not vouch for is a
        ConfigurationError, never a reason to try the next gateway.
        """
        import socket
        import ssl

        from fixedip.client._http import GatewayUnreachable

        failures: dict[str, str] = {}
        for endpoint in list(self._in_order()):
            try:
                endpoint.vet()
                result = action(endpoint.redacted, self._hop(endpoint))
            except ssl.SSLCertVerificationError as exc:
                self._failed(endpoint)
                raise ConfigurationError(
                    f"the certificate of {endpoint.redacted} is not trusted "
                    f"({exc.verify_message}): point FIXEDIP_CA at the CA bundle that signed it"
                ) from exc
            except (GatewayUnreachable, socket.gaierror) as exc:
                self._failed(endpoint)
                failures[endpoint.redacted] = _describe(exc)
                continue
            self._succeeded(endpoint)
            return result
        raise _unavailable(failures)


def _unavailable(failures: dict[str, str]) -> GatewayUnavailable:
    listed = "; ".join(f"{url}: {why}" for url, why in failures.items())
    return GatewayUnavailable(f"no gateway accepted a connection ({listed})", failures)


def _gateway_error(source: str, status: int, headers: dict[str, str]) -> GatewayError:
    proxy_status = headers.get("proxy-status")
    if status == 407:
        message = (
            f"{source} refused the credentials (407): check the client name and token "
            "in FIXEDIP_URL against the gateway's [[clients]]"
        )
    else:
        message = f"{source} answered {status}" + (f" ({proxy_status})" if proxy_status else "")
    return GatewayError(message, status, proxy_status)
