"""A requests transport adapter that sends each request through the gateway in use and
moves it to the next gateway when the gateway itself cannot be reached.

Only the gateway's own failures count: a refused or timed-out connection to it, or a
connection it dropped without answering. What the vendor does (a 502 from the gateway,
a refused CONNECT) is an answer and is returned as usual. A request that never reached
the gateway is sent again whatever its method; one that may have arrived only when its
method is idempotent and its body can be sent twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError

from fixedip.client._endpoint import Endpoint
from fixedip.client.gateway import IDEMPOTENT_METHODS, Gateway

_NOT_SENT = (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError)
_DROPPED = (ProtocolError, ConnectionResetError, ConnectionAbortedError)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, its urllib3 `reason`s and its causes, outermost first."""
    seen: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or any(item is s for s in seen) or len(seen) > 20:
            continue
        seen.append(item)
        todo.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
    return seen


def gateway_failure(exc: BaseException) -> str | None:
    """ "not_sent" or "dropped" when the gateway failed, None for anything else."""
    causes = _causes(exc)
    if any(isinstance(c, _NOT_SENT) for c in causes):
        return "not_sent"
    if any(isinstance(c, _DROPPED) for c in causes):
        return "dropped"
    return None


class FailoverAdapter(HTTPAdapter):
    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy.startswith("https://"):
            proxy_kwargs.setdefault("proxy_ssl_context", self._gateway._gateway_tls())
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> Response:
        gateway = self._gateway
        tried: set[Endpoint] = set()
        replayable = request.body is None or isinstance(request.body, bytes | str)
        while True:
            endpoint = gateway._choose()
            chosen = {"http": endpoint.url, "https": endpoint.url}
            try:
                return super().send(request, stream, timeout, verify, cert, chosen)
            except RequestsConnectionError as exc:
                failure = gateway_failure(exc)
                if failure is None:
                    raise
                gateway._failed(endpoint)
                tried.add(endpoint)
                safe = failure == "not_sent" or (
                    request.method in IDEMPOTENT_METHODS and replayable
                )
                if not safe or len(tried) >= len(gateway._endpoints):
                    raise
