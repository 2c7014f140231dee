"""docs/client.md: every public name is documented, and every Python example runs.

The examples are written against the offline demo (`make run`: client demo/demo on
127.0.0.1:3128, an echo vendor on 127.0.0.1:8080); here they run against a test
gateway with the same client and echo, on the ports it got.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fixedip.client
from fixedip.policy.tokens import hash_token
from tests.helpers import RunningGateway

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def test_every_public_name_is_documented() -> None:
    text = DOC.read_text()
    missing = [n for n in fixedip.client.__all__ if not re.search(rf"\b{n}\b", text)]
    assert missing == []


@pytest.fixture
def demo(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    demo_client = {"name": "demo", "token_hash": hash_token("demo"), "allow": ["127.0.0.1:*"]}
    return make_gateway(
        egress={"ips": ["127.0.0.10"], "strategy": "round-robin"},
        demo={"echo": "127.0.0.1:0"},
        clients=[demo_client],
    )


def test_the_python_examples_run(
    demo: RunningGateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = "{}:{}".format(*demo.http)
    echo = "{}:{}".format(*demo.addresses["echo"])
    text = DOC.read_text().replace("127.0.0.1:3128", proxy).replace("127.0.0.1:8080", echo)
    monkeypatch.setenv("FIXEDIP_URL", f"http://demo:demo@{proxy}")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 10
    namespace: dict[str, Any] = {}
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/client.md python block {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "127.0.0.10" in printed
    assert "{'Accept': '*/*'}" in printed
