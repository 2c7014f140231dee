"""examples/ run against a real gateway: the Lambda handler and the Cloud Run service."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, RunningGateway, VendorServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_env(gateway: RunningGateway, vendor: VendorServer) -> dict[str, str]:
    return {
        **os.environ,
        "FIXEDIP_URL": gateway.proxy_url(),
        "FIXEDIP_EXPECTED_IPS": f"{ALLOWED_EGRESS},{OTHER_EGRESS}",
        "VENDOR_URL": vendor.url("/"),
    }


def test_the_lambda_handler_calls_the_vendor_from_the_fixed_ip(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    code = (
        "import json, runpy, sys\n"
        "handler = runpy.run_path(sys.argv[1])['handler']\n"
        "print(json.dumps([handler({}, None), handler({}, None)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(EXAMPLES / "lambda_handler.py")],
        env=example_env(gateway, vendor),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    first, second = json.loads(out.stdout)
    assert first["statusCode"] == 200
    body = json.loads(first["body"])
    assert body["egress_ip"] == ALLOWED_EGRESS
    assert body["vendor"]["peer"] == ALLOWED_EGRESS
    assert second["statusCode"] == 200
    # One canary (OPTIONS) for the process, then one GET per invocation.
    assert [m for _, _, m, _ in vendor.seen] == ["OPTIONS", "GET", "GET"]


def test_the_lambda_handler_refuses_to_start_on_an_unexpected_ip(
    gateway: RunningGateway, vendor: VendorServer
) -> None:
    env = {**example_env(gateway, vendor), "FIXEDIP_EXPECTED_IPS": "127.0.0.99"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "lambda_handler.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "EgressMismatch" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_cloud_run_service(gateway: RunningGateway, vendor: VendorServer) -> None:
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "cloud_run" / "main.py")],
        env={**example_env(gateway, vendor), "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline().strip() == f"listening on port {port}"
        base = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(base + "/", timeout=10) as r:
            assert json.loads(r.read()) == {"vendor_status": 200}
        with opener.open(base + "/egress", timeout=10) as r:
            assert json.loads(r.read())["egress_ip"] == ALLOWED_EGRESS
        assert {peer for peer, *_ in vendor.seen} == {ALLOWED_EGRESS}
    finally:
        service.terminate()
        try:
            service.wait(timeout=5)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=5)
        if service.stdout:
            service.stdout.close()
        if service.stderr:
            service.stderr.close()
