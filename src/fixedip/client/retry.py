"""`retrying()`: retry a call on connection errors, 429 and 5xx, with exponential back-off
and full jitter, honouring Retry-After, within a total deadline.

It judges what the call returned or raised by duck typing, so it works with requests,
httpx, aiohttp, urllib and botocore without importing any of them: a status code is
read from `status_code`, `status` or `code` (of the result, or of an exception's
`response`, or of the exception itself), headers from `headers`, and botocore's
`ResponseMetadata`.
"""

from __future__ import annotations

import time

from fixedip.client._callables import is_async, wraps
from fixedip.client.errors import ConfigurationError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if not TYPE_CHECKING:
    # typing.overload at run time costs importing typing, a good part of a cold start;
    # mypy (and ruff) see the real one below.
    def overload(fn):
        return fn


if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ParamSpec, TypeVar, overload

    P = ParamSpec("P")
    T = TypeVar("T")


ATTEMPTS = 5
DEADLINE_S = 30.0
BASE_S = 0.1
CAP_S = 5.0
# Exception classes (by name, anywhere in the class's MRO) that mean the request never
# reached the server, or the connection died before an answer: safe to send again.
# The built-in ConnectionError (refused, reset, aborted) is matched by type.
CONNECTION_ERROR_NAMES = frozenset(
    {
        "ConnectionError",  # requests, botocore (EndpointConnectionError, ConnectTimeoutError)
        "ConnectError",  # httpx
        "ConnectTimeout",  # httpx, requests
        "ClientConnectionError",  # aiohttp (ClientConnectorError, ServerDisconnectedError)
        "URLError",  # urllib, before any response (HTTPError carries a status instead)
        "gaierror",  # a name that did not resolve
    }
)


def _retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _status_of(obj: object) -> tuple[int | None, object]:
    """(status, headers) of a response-like object, or (None, None)."""
    if isinstance(obj, dict):
        meta = obj.get("ResponseMetadata")
        if isinstance(meta, dict) and isinstance(meta.get("HTTPStatusCode"), int):
            return int(meta["HTTPStatusCode"]), meta.get("HTTPHeaders")
        return None, None
    for attr in ("status_code", "status", "code"):
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value, getattr(obj, "headers", None)
    return None, None


def _status_of_error(exc: BaseException) -> tuple[int | None, object]:
    response = getattr(exc, "response", None)
    if response is not None:
        status, headers = _status_of(response)
        if status is not None:
            return status, headers
    return _status_of(exc)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError):
        return True
    return any(cls.__name__ in CONNECTION_ERROR_NAMES for cls in type(exc).__mro__)


def _header(headers: object, name: str) -> str | None:
    get = getattr(headers, "get", None)
    if get is None:
        return None
    value = get(name)
    if value is None:
        items = getattr(headers, "items", None)
        if items is not None:
            value = next((v for k, v in items() if str(k).lower() == name.lower()), None)
    return None if value is None else str(value)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP-date
    (RFC 9110 section 10.2.3). None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Policy:
    def __init__(
        self,
        attempts: int,
        deadline_s: float,
        base_s: float,
        cap_s: float,
        sleep: Callable[[float], object] | None,
    ) -> None:
        if attempts < 1 or deadline_s <= 0 or base_s < 0 or cap_s < base_s:
            raise ConfigurationError(
                "retrying(): attempts >= 1, deadline_s > 0 and 0 <= base_s <= cap_s"
            )
        self.attempts = attempts
        self.deadline_s = deadline_s
        self.base_s = base_s
        self.cap_s = cap_s
        self.sleep = sleep

    def _delay(self, attempt: int, started: float, headers: object) -> float | None:
        """How long to wait before attempt `attempt + 1`, or None to stop now."""
        if attempt >= self.attempts:
            return None
        import random

        # Full jitter (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog).
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        wait = retry_after_s(_header(headers, "Retry-After")) if headers is not None else None
        if wait is not None:
            delay = max(delay, wait)
        if time.monotonic() - started + delay > self.deadline_s:
            return None
        return delay

    def after_result(self, result: object, attempt: int, started: float) -> float | None:
        status, headers = _status_of(result)
        if status is None or not _retryable(status):
            return None
        return self._delay(attempt, started, headers)

    def after_error(self, exc: BaseException, attempt: int, started: float) -> float | None:
        status, headers = _status_of_error(exc)
        if status is not None:
            return self._delay(attempt, started, headers) if _retryable(status) else None
        if _is_connection_error(exc):
            return self._delay(attempt, started, None)
        return None

    def call(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                delay = self.after_error(exc, attempt, started)
                if delay is None:
                    raise
            else:
                delay = self.after_result(result, attempt, started)
                if delay is None:
                    return result
                _discard(result)
            (time.sleep if self.sleep is None else self.sleep)(delay)

    async def call_async(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        import asyncio

        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                delay = self.after_error(exc, attempt, started)
                if delay is None:
                    raise
            else:
                delay = self.after_result(result, attempt, started)
                if delay is None:
                    return result
                await _discard_async(result)
            slept = (asyncio.sleep if self.sleep is None else self.sleep)(delay)
            if hasattr(slept, "__await__"):
                await slept


def _discard(result: object) -> None:
    """Give a response that will not be returned its connection back."""
    close = getattr(result, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # a response that cannot close synchronously is left to the GC
            return


async def _discard_async(result: object) -> None:
    for name in ("aclose", "release", "close"):
        method = getattr(result, name, None)
        if callable(method):
            try:
                done = method()
                if hasattr(done, "__await__"):
                    await done
            except Exception:
                pass
            return


@overload
def retrying(
    fn: Callable[P, T],
    /,
    *,
    attempts: int = ...,
    deadline_s: float = ...,
    base_s: float = ...,
    cap_s: float = ...,
    sleep: Callable[[float], object] | None = ...,
) -> Callable[P, T]: ...


@overload
def retrying(
    fn: None = None,
    /,
    *,
    attempts: int = ...,
    deadline_s: float = ...,
    base_s: float = ...,
    cap_s: float = ...,
    sleep: Callable[[float], object] | None = ...,
) -> Callable[[Callable[P, T]], Callable[P, T]]: ...


def retrying(
    fn: Callable[P, T] | None = None,
    /,
    *,
    attempts: int = ATTEMPTS,
    deadline_s: float = DEADLINE_S,
    base_s: float = BASE_S,
    cap_s: float = CAP_S,
    sleep: Callable[[float], object] | None = None,
) -> Callable[P, T] | Callable[[Callable[P, T]], Callable[P, T]]:
    """Retry `fn` (sync or async) on connection errors, 429 and 5xx.

    Use it as a decorator (`@retrying`, `@retrying(deadline_s=10)`) or wrap a call:
    `retrying(session.get)(url)`. At most `attempts` calls within `deadline_s`
    seconds; before attempt n+1 it sleeps a random time between 0 and
    min(`cap_s`, `base_s` * 2**(n-1)) ("full jitter"), or the response's Retry-After
    (seconds or an HTTP-date) when that is longer. If the next wait would pass the
    deadline it stops at once. Any other status or exception ends it at once too.

    When it stops, you get what the last attempt gave: the response (check its status
    as usual) or the exception, re-raised. Responses it retries past are closed.
    `sleep` replaces `time.sleep` / `asyncio.sleep` (tests).

    >>> get = retrying(requests.get, deadline_s=10)
    >>> get("https://api.vendor.example/orders", proxies=gw.proxies, timeout=5)
    """
    policy = _Policy(attempts, deadline_s, base_s, cap_s, sleep)

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        if is_async(func):

            async def retried_async(*args: Any, **kwargs: Any) -> Any:
                return await policy.call_async(func, args, kwargs)

            return wraps(retried_async, func)

        def retried(*args: Any, **kwargs: Any) -> Any:
            return policy.call(func, args, kwargs)

        return wraps(retried, func)

    return decorate if fn is None else decorate(fn)
