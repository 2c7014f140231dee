"""Suite-wide guards.

The tests must run in a network namespace that holds only loopback: some ask the
gateway for 169.254.169.254, private ranges or names that resolve inside; if a guard were
broken, the namespace turns that into "network unreachable" instead of a packet on a real
network. `make test` provides it (scripts/isolated).

And they must test the source as it is: a compiled hot path older than the source it
was built from (scripts/compile) would shadow the change under test.
"""

from __future__ import annotations

import os
import socket

import pytest

from fixedip import compiled

pytest_plugins = ["tests.fixtures"]


def _isolated() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_configure(config: pytest.Config) -> None:
    if not _isolated() and not os.environ.get("FIXEDIP_TESTS_UNISOLATED"):
        pytest.exit(
            "the suite must run in a network namespace with only loopback: use `make test`, "
            "or `scripts/isolated .venv/bin/pytest ...`",
            returncode=3,
        )
    why = compiled.stale()
    if why is not None:
        pytest.exit(
            f"the compiled hot path is stale ({why}): run `make compile`, or "
            "`scripts/compile --clean` and set FIXEDIP_TEST_PURE=1 to test the pure-Python "
            "modules",
            returncode=3,
        )
