"""Fixtures shared by every test module (registered from conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    ALLOWED_EGRESS,
    DNSServer,
    EchoServer,
    RunningGateway,
    VendorServer,
    gateway_config,
)
from tests.serve import serve  # noqa: F401  (the `serve` fixture: fixedip serve in a subprocess)
from tests.tlskit import https_vendor, pki  # noqa: F401  (TLS: the gateway's CA and pair)


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    server = VendorServer({ALLOWED_EGRESS})
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    server = DNSServer({"vendor.test": ["127.0.0.1"]})
    yield server
    server.close()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway with `gateway_config(tmp_path, **overrides)`; stopped at the end."""
    started: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        gw = RunningGateway(gateway_config(tmp_path, **overrides)).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()
