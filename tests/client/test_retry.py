"""retrying(): connection errors, 429 and 5xx are retried with jittered back-off that
honours Retry-After, within a deadline; anything else is returned or raised at once."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import botocore.exceptions
import httpx
import pytest
import requests

from fixedip.client import ConfigurationError, Gateway, retrying
from fixedip.client.retry import retry_after_s
from tests.client.conftest import ScriptedServer, dead_url
from tests.helpers import ALLOWED_EGRESS, VendorServer

TOO_MANY = (429, {"Retry-After": "0.05"})
OK = (200, {})


class Sleeps(list[float]):
    """An injected sleep that records its delays and does not wait."""

    def __call__(self, delay: float) -> None:
        self.append(delay)


def test_429_with_retry_after_then_200(scripted: ScriptedServer) -> None:
    scripted.answer(TOO_MANY, OK)
    sleeps = Sleeps()
    r = retrying(requests.get, sleep=sleeps)(scripted.url, timeout=5)
    assert r.status_code == 200
    assert scripted.requests == 2
    assert len(sleeps) == 1 and sleeps[0] >= 0.05


def test_retry_after_longer_than_the_deadline_stops_at_once(scripted: ScriptedServer) -> None:
    scripted.answer((503, {"Retry-After": "120"}), OK)
    sleeps = Sleeps()
    r = retrying(requests.get, deadline_s=5, sleep=sleeps)(scripted.url, timeout=5)
    assert r.status_code == 503
    assert scripted.requests == 1
    assert sleeps == []


def test_retry_after_as_an_http_date(scripted: ScriptedServer) -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    scripted.answer((503, {"Retry-After": soon}), OK)
    sleeps = Sleeps()
    assert retrying(requests.get, sleep=sleeps)(scripted.url, timeout=5).status_code == 200
    assert 0.5 < sleeps[0] <= 2.0


def test_retry_after_values() -> None:
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after_s("7") == 7
    assert retry_after_s("Fri, 01 May 2026 12:00:30 GMT", now=now) == 30
    assert retry_after_s("Fri, 01 May 2026 11:00:00 GMT", now=now) == 0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None


def test_5xx_is_retried_until_the_deadline(scripted: ScriptedServer) -> None:
    scripted.answer((500, {}))
    started = time.monotonic()
    r = retrying(requests.get, attempts=1000, deadline_s=0.5, base_s=0.02, cap_s=0.05)(
        scripted.url, timeout=5
    )
    assert r.status_code == 500
    assert scripted.requests > 2
    assert time.monotonic() - started < 0.5 + 2  # stopped by the deadline, not attempts


def test_attempts_bound_the_calls(scripted: ScriptedServer) -> None:
    scripted.answer((502, {}))
    sleeps = Sleeps()
    r = retrying(requests.get, attempts=3, sleep=sleeps)(scripted.url, timeout=5)
    assert r.status_code == 502
    assert scripted.requests == 3
    assert len(sleeps) == 2


def test_back_off_is_full_jitter_below_an_exponential_cap(scripted: ScriptedServer) -> None:
    scripted.answer((503, {}))
    sleeps = Sleeps()
    retrying(requests.get, attempts=6, base_s=0.1, cap_s=0.4, sleep=sleeps)(scripted.url)
    assert len(sleeps) == 5
    for n, delay in enumerate(sleeps):
        assert 0 <= delay <= min(0.4, 0.1 * 2**n)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_4xx_is_not_retried(scripted: ScriptedServer, status: int) -> None:
    scripted.answer((status, {}), OK)
    r = retrying(requests.get, sleep=Sleeps())(scripted.url, timeout=5)
    assert r.status_code == status
    assert scripted.requests == 1


def test_raise_for_status_errors_are_judged_by_their_status(scripted: ScriptedServer) -> None:
    @retrying(sleep=Sleeps())
    def get() -> requests.Response:
        r = requests.get(scripted.url, timeout=5)
        r.raise_for_status()
        return r

    scripted.answer((503, {}), OK)
    assert get().status_code == 200
    scripted.answer((403, {}), OK)
    with pytest.raises(requests.HTTPError):
        get()
    assert scripted.requests == 1


def test_connection_errors_are_retried_then_raised() -> None:
    url = dead_url().replace("billing:tok-billing-s3cret@", "")
    sleeps = Sleeps()
    with pytest.raises(requests.ConnectionError):
        retrying(requests.get, attempts=3, sleep=sleeps)(url, timeout=5)
    assert len(sleeps) == 2


def test_other_exceptions_are_not_retried() -> None:
    calls = []

    @retrying(sleep=Sleeps())
    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()
    assert calls == [1]


def test_values_without_a_status_are_returned_as_they_are() -> None:
    assert retrying(lambda: {"id": 7})() == {"id": 7}


def test_the_decorator_keeps_the_functions_name() -> None:
    @retrying
    def fetch_orders() -> int:
        """Fetches orders."""
        return 1

    assert fetch_orders() == 1
    assert fetch_orders.__name__ == "fetch_orders"
    assert fetch_orders.__doc__ == "Fetches orders."


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        retrying(attempts=0)


def test_httpx_responses(scripted: ScriptedServer) -> None:
    scripted.answer(TOO_MANY, OK)
    with httpx.Client(timeout=5) as client:
        assert retrying(client.get, sleep=Sleeps())(scripted.url).status_code == 200
    assert scripted.requests == 2


def test_httpx_connect_errors_are_retried() -> None:
    url = dead_url().replace("billing:tok-billing-s3cret@", "")
    sleeps = Sleeps()
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.ConnectError):
        retrying(client.get, attempts=2, sleep=sleeps)(url)
    assert len(sleeps) == 1


def test_async_httpx_with_an_async_sleep(scripted: ScriptedServer) -> None:
    scripted.answer((500, {}), (500, {}), OK)
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    async def main() -> int:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await retrying(client.get, sleep=sleep)(scripted.url)).status_code

    assert asyncio.run(main()) == 200
    assert len(delays) == 2


def test_aiohttp_responses_and_errors(scripted: ScriptedServer) -> None:
    scripted.answer(TOO_MANY, (503, {}), OK)

    async def main() -> int:
        async with aiohttp.ClientSession() as session:

            @retrying(sleep=Sleeps())
            async def get() -> int:
                async with session.get(scripted.url) as r:
                    r.raise_for_status()
                    return r.status

            return await get()

    assert asyncio.run(main()) == 200
    assert scripted.requests == 3


def test_aiohttp_connection_errors_are_retried() -> None:
    url = dead_url().replace("billing:tok-billing-s3cret@", "")
    sleeps = Sleeps()

    async def main() -> None:
        async with aiohttp.ClientSession() as session:

            @retrying(attempts=2, sleep=sleeps)
            async def get() -> None:
                async with session.get(url):
                    pass

            await get()

    with pytest.raises(aiohttp.ClientConnectionError):
        asyncio.run(main())
    assert len(sleeps) == 1


def test_urllib_http_errors_and_url_errors(scripted: ScriptedServer) -> None:
    scripted.answer(TOO_MANY, OK)
    with retrying(urllib.request.urlopen, sleep=Sleeps())(scripted.url, timeout=5) as r:
        assert r.status == 200
    url = dead_url().replace("billing:tok-billing-s3cret@", "")
    sleeps = Sleeps()
    with pytest.raises(urllib.error.URLError):
        retrying(urllib.request.urlopen, attempts=2, sleep=sleeps)(url, timeout=5)
    assert len(sleeps) == 1


def test_botocore_client_errors_are_judged_by_their_status() -> None:
    answers = [503, 200]

    @retrying(sleep=Sleeps())
    def call() -> dict[str, object]:
        status = answers.pop(0)
        response = {
            "Error": {"Code": "SlowDown"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {"retry-after": "0"}},
        }
        if status >= 400:
            raise botocore.exceptions.ClientError(response, "GetObject")  # type: ignore[arg-type]
        return response

    assert call()["ResponseMetadata"] == {
        "HTTPStatusCode": 200,
        "HTTPHeaders": {"retry-after": "0"},
    }
    assert answers == []


def test_retrying_through_the_gateway(sdk: Gateway, vendor: VendorServer) -> None:
    r = retrying(requests.get)(vendor.url("/retried"), proxies=sdk.proxies, timeout=5)
    assert r.status_code == 200
    assert r.json()["peer"] == ALLOWED_EGRESS
