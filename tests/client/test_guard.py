"""guard(): one canary per process, a block exits or raises, anything else is safe."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixedip.client import EgressBlocked, Gateway, guard
from tests.client.conftest import client_entry, dead_url, https_url, tls_listener
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, RunningGateway, VendorServer

EXIT_SCRIPT = """
import sys
from fixedip.client import guard

kwargs = {"on_block": sys.argv[2]} if len(sys.argv) > 2 else {}

@guard(sys.argv[1], timeout_s=5, **kwargs)
def handler(event, context):
    return "handled"

print(handler({}, None))
"""


def run_handler(url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, url, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def canaries(vendor: VendorServer) -> list[tuple[str, str, str]]:
    return [(peer, method, path) for peer, _, method, path in vendor.seen]


# --- without a gateway: the worker's own address -----------------------------------
# In-process tests pass on_block="raise": the default here ends the process, pytest's.


@pytest.fixture
def open_vendor() -> Any:
    """A stub vendor that also accepts 127.0.0.1 (a worker without a gateway)."""
    from tests.client.conftest import serve

    server = VendorServer({"127.0.0.1"})
    serve(server)
    yield server
    server.shutdown()
    server.server_close()


def test_a_safe_canary_runs_the_handler_and_is_not_repeated(vendor: VendorServer) -> None:
    calls = []

    @guard(vendor.url("/status?code=200"), on_block="raise")
    def handler(event: dict[str, Any], context: object) -> str:
        calls.append(event)
        return "ok"

    assert handler({"n": 1}, None) == "ok"
    assert handler({"n": 2}, None) == "ok"
    assert calls == [{"n": 1}, {"n": 2}]
    assert canaries(vendor) == [("127.0.0.1", "OPTIONS", "/status?code=200")]


def test_the_guard_keeps_the_handlers_name_and_doc(vendor: VendorServer) -> None:
    @guard(vendor.url("/status?code=200"), on_block="raise")
    def handler(event: object, context: object) -> None:
        """Handles things."""

    assert handler.__name__ == "handler"
    assert handler.__doc__ == "Handles things."


@pytest.mark.parametrize("path", ["/status?code=500", "/status?code=429", "/status?code=404"])
def test_other_statuses_count_as_safe(vendor: VendorServer, path: str) -> None:
    handler = guard(vendor.url(path), on_block="raise")(lambda: "ran")
    assert handler() == "ran"
    assert handler() == "ran"
    assert len(vendor.seen) == 1


def test_a_timeout_counts_as_safe(vendor: VendorServer) -> None:
    handler = guard(vendor.url("/slow?s=2"), on_block="raise", timeout_s=0.2)(lambda: "ran")
    assert handler() == "ran"


def test_a_refused_connection_counts_as_safe(caplog: pytest.LogCaptureFixture) -> None:
    url = dead_url().replace("billing:tok-billing-s3cret@", "")
    handler = guard(url, on_block="raise")(lambda: "ran")
    with caplog.at_level(logging.WARNING, logger="fixedip.client"):
        assert handler() == "ran"
    assert "counted as safe" in caplog.text


def test_a_403_raises_when_asked_to_and_asks_again_next_time(vendor: VendorServer) -> None:
    handler = guard(vendor.url("/blocked"), on_block="raise")(lambda: "ran")
    with pytest.raises(EgressBlocked) as info:
        handler()
    assert info.value.status == 403
    assert info.value.seen_ip is None
    with pytest.raises(EgressBlocked):
        handler()
    assert len(vendor.seen) == 2


def test_custom_blocking_statuses(vendor: VendorServer) -> None:
    handler = guard(vendor.url("/status?code=429"), on_block="raise", statuses=[403, 429])(
        lambda: "ran"
    )
    with pytest.raises(EgressBlocked):
        handler()


def test_a_403_exits_the_worker_by_default_without_a_gateway(vendor: VendorServer) -> None:
    out = run_handler(vendor.url("/blocked"))
    assert out.returncode == 1
    assert "handled" not in out.stdout
    assert "answered 403 to the canary" in out.stderr


def test_a_safe_canary_lets_the_worker_run_in_a_subprocess(vendor: VendorServer) -> None:
    out = run_handler(vendor.url("/status?code=200"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "handled"


def test_an_async_handler_is_guarded_once(vendor: VendorServer) -> None:
    @guard(vendor.url("/status?code=200"), on_block="raise")
    async def handler(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    async def main() -> list[int]:
        return [await handler(1), await handler(2)]

    assert asyncio.run(main()) == [2, 4]
    assert len(vendor.seen) == 1


def test_an_async_handler_raises_on_a_block(vendor: VendorServer) -> None:
    @guard(vendor.url("/blocked"), on_block="raise")
    async def handler() -> str:
        return "ran"

    with pytest.raises(EgressBlocked):
        asyncio.run(handler())


def test_concurrent_first_invocations_send_one_canary(open_vendor: VendorServer) -> None:
    @guard(open_vendor.url("/slow?s=0.2"), on_block="raise")
    async def handler(n: int) -> int:
        return n

    async def main() -> list[int]:
        return list(await asyncio.gather(*(handler(n) for n in range(5))))

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert len(open_vendor.seen) == 1


# --- through a gateway -----------------------------------------------------------------


def test_the_canary_goes_through_the_gateway(
    gateway: RunningGateway, vendor: VendorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXEDIP_URL", gateway.proxy_url())
    handler = guard(vendor.url("/canary"))(lambda: "ran")
    assert handler() == "ran"
    assert handler() == "ran"
    assert canaries(vendor) == [(ALLOWED_EGRESS, "OPTIONS", "/canary")]


def test_through_a_gateway_a_block_raises_naming_the_egress_ip(
    gateway: RunningGateway, vendor: VendorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pinned` leaves from 127.0.0.11, which the vendor refuses.
    monkeypatch.setenv("FIXEDIP_URL", gateway.proxy_url("pinned"))
    handler = guard(vendor.url("/canary"))(lambda: "ran")
    with pytest.raises(EgressBlocked) as info:
        handler()
    assert info.value.seen_ip == OTHER_EGRESS
    assert OTHER_EGRESS in str(info.value)


def test_through_a_gateway_exit_must_be_asked_for(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    env = {"FIXEDIP_URL": gateway.proxy_url("pinned")}
    out = run_handler(vendor.url("/canary"), "exit", env=env)
    assert out.returncode == 1
    assert OTHER_EGRESS in out.stderr


def test_an_explicit_gateway_argument_is_used(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    handler = guard(vendor.url("/canary"), gateway=Gateway(gateway.proxy_url()))(lambda: "ran")
    assert handler() == "ran"
    assert vendor.seen[0][0] == ALLOWED_EGRESS


def test_the_canary_fails_over_to_the_next_gateway(
    gateway: RunningGateway, vendor: VendorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXEDIP_URL", f"{dead_url()},{gateway.proxy_url('pinned')}")
    handler = guard(vendor.url("/canary"), on_block="raise")(lambda: "ran")
    with pytest.raises(EgressBlocked):
        handler()
    assert vendor.seen[0][0] == OTHER_EGRESS


def test_a_refusal_by_the_gateway_itself_is_not_a_block(
    gateway: RunningGateway,
    vendor: VendorServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The billing client's deny rule covers 127.0.0.1:9: the gateway answers 403 itself,
    # with a Proxy-Status naming its reason; the vendor never blocked anyone.
    monkeypatch.setenv("FIXEDIP_URL", gateway.proxy_url())
    handler = guard("http://127.0.0.1:9/", on_block="raise")(lambda: "ran")
    with caplog.at_level(logging.WARNING, logger="fixedip.client"):
        assert handler() == "ran"
    assert "the gateway refused the canary" in caplog.text


def test_no_reachable_gateway_counts_as_safe(
    vendor: VendorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXEDIP_URL", dead_url())
    handler = guard(vendor.url("/canary"), on_block="raise")(lambda: "ran")
    assert handler() == "ran"
    assert vendor.seen == []


# --- https canaries: CONNECT through the gateway, and TLS inside TLS -----------------


@pytest.fixture
def tls_gateway(
    make_gateway: Callable[..., RunningGateway], tls_vendor: VendorServer
) -> RunningGateway:
    ports = [tls_vendor.port]
    return make_gateway(
        clients=[
            client_entry("billing", connect_ports=ports),
            client_entry("pinned", egress=OTHER_EGRESS, connect_ports=ports),
        ]
    )


def test_an_https_canary_goes_through_a_connect_tunnel(
    tls_gateway: RunningGateway, tls_vendor: VendorServer, trust_test_ca: object
) -> None:
    handler = guard(
        tls_vendor.url("/tls").replace("http:", "https:"),
        gateway=Gateway(tls_gateway.proxy_url("pinned")),
    )(lambda: "ran")
    with pytest.raises(EgressBlocked) as info:
        handler()
    assert info.value.seen_ip == OTHER_EGRESS
    assert canaries(tls_vendor) == [(OTHER_EGRESS, "OPTIONS", "/tls")]


def test_an_https_canary_through_a_tls_gateway_nests_tls(
    make_gateway: Callable[..., RunningGateway],
    tls_vendor: VendorServer,
    trust_test_ca: object,
    ca: Any,
    tmp_path: Path,
) -> None:
    ports = [tls_vendor.port]
    tls_gateway = make_gateway(
        clients=[client_entry("billing", connect_ports=ports)], **tls_listener(ca, tmp_path)
    )
    gw = Gateway(https_url(tls_gateway), ca=str(trust_test_ca))
    handler = guard(
        tls_vendor.url("/nested").replace("http:", "https:"), on_block="raise", gateway=gw
    )(lambda: "ran")
    assert handler() == "ran"
    assert canaries(tls_vendor) == [(ALLOWED_EGRESS, "OPTIONS", "/nested")]
