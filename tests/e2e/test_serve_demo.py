"""`fixedip serve` with no file: the offline demo the README's quick start promises.

The demo listens on fixed ports (3128, 1080, 9090, echo 8080), so this module holds a
single test; the suite's other gateways all listen on port 0.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.serve import ServeProcess

DEMO_EGRESS = "127.0.0.10"
TRY_IT = "curl -x http://demo:demo@127.0.0.1:3128 http://127.0.0.1:8080/"


def curl(*args: str) -> dict:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.xdist_group("demo-fixed-ports")
def test_serve_without_a_config_runs_the_offline_demo(tmp_path: Path) -> None:
    gw = ServeProcess([], tmp_path)
    try:
        gw.wait_announced()
        assert gw.addresses == {
            "http": ("127.0.0.1", 3128),
            "socks": ("127.0.0.1", 1080),
            "admin": ("127.0.0.1", 9090),
            "echo": ("127.0.0.1", 8080),
        }
        assert "serving the embedded demo configuration" in gw.stderr[0]
        assert gw.wait_for_line(TRY_IT).strip() == TRY_IT

        proxy = "http://demo:demo@127.0.0.1:3128"
        forwarded = curl("-x", proxy, "http://127.0.0.1:8080/")
        assert forwarded["you_came_from"] == DEMO_EGRESS
        tunneled = curl("-p", "-x", proxy, "http://127.0.0.1:8080/t")
        assert tunneled["you_came_from"] == DEMO_EGRESS
        socks = curl("--socks5-hostname", "demo:demo@127.0.0.1:1080", "http://127.0.0.1:8080/s")
        assert socks["you_came_from"] == DEMO_EGRESS
        assert socks["path"] == "/s"

        gw.signal(signal.SIGTERM)
        assert gw.wait_exit(5) == 0
    finally:
        gw.stop()

    # The demo's flow log is standard output ("-"): one JSON line per request.
    records = [json.loads(line) for line in gw.stdout if line.strip()]
    seen = sorted((r["listener"], r["kind"], r["status"]) for r in records)
    # A SOCKS5 record's status is the RFC 1928 reply code: 0 is "succeeded".
    assert seen == [("http", "connect", 200), ("http", "http", 200), ("socks", "socks", 0)]
    for record in records:
        assert record["client"] == "demo"
        assert record["egress"] == DEMO_EGRESS
        assert record["decision"] == "allow"
    text = "\n".join(gw.stdout)
    assert "ZGVtbzpkZW1v" not in text  # base64("demo:demo"): no Proxy-Authorization leaks
    assert "Basic" not in text
