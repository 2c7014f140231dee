"""Fixtures for the relay tests: a target stub and relays in threads, always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ingress.stubs import RunningRelay, TargetStub, relay_config


@pytest.fixture
def target() -> Iterator[TargetStub]:
    stub = TargetStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def make_relay(tmp_path: Path) -> Iterator[Callable[..., RunningRelay]]:
    """Start a relay with `relay_config(tmp_path, routes, **ingress)`; stopped at the end."""
    started: list[RunningRelay] = []

    def make(routes: list[dict[str, Any]], **ingress: Any) -> RunningRelay:
        relay = RunningRelay(relay_config(tmp_path, routes, **ingress)).start()
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()
