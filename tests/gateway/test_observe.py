"""Observe mode: policy refusals are let through and flagged; the guard never is.
Then `fixedip suggest allowlist` turns the flow log into rules that enforce mode accepts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import requests

from fixedip.cli.suggest import suggest
from tests.helpers import TOKENS, VendorServer, basic, read_flow_log, token_hash

FIXEDIP = Path(sys.executable).parent / "fixedip"


def observer(make_gateway, **client) -> object:
    return make_gateway(
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": [],
                "mode": "observe",
                **client,
            }
        ]
    )


def test_observe_mode_lets_policy_refusals_through_and_flags_them(
    make_gateway, vendor: VendorServer, tmp_path: Path
) -> None:
    gw = observer(make_gateway)
    r = requests.get(vendor.url("/o"), proxies={"http": gw.proxy_url()}, timeout=5)
    assert r.status_code == 200
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert record["decision"] == "allow"
    assert record["rule"] == "observe: would deny (destination_not_allowed)"


def test_observe_mode_never_relaxes_the_ssrf_guard(make_gateway) -> None:
    gw = make_gateway(
        guard={"allow_cidrs": []},
        policy={"mode": "observe"},
        clients=[{"name": "billing", "token_hash": token_hash("billing"), "allow": []}],
    )
    r = requests.get("http://169.254.169.254/", proxies={"http": gw.proxy_url()}, timeout=5)
    assert r.status_code == 403 and "destination_ip_prohibited" in r.headers["Proxy-Status"]


def test_observe_mode_flags_a_connect_port_outside_connect_ports(
    make_gateway, echo, tmp_path: Path
) -> None:
    import socket

    gw = observer(make_gateway, connect_ports=[443])
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
            f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    (record,) = read_flow_log(tmp_path / "flow.jsonl", 1)
    assert record["rule"] == "observe: would deny (port_not_allowed: clients.billing.connect_ports)"


def test_suggested_allowlist_is_accepted_in_enforce_mode(
    make_gateway, vendor: VendorServer, tmp_path: Path
) -> None:
    gw = observer(make_gateway)
    for path in ("/a", "/b"):
        requests.get(vendor.url(path), proxies={"http": gw.proxy_url()}, timeout=5)
    read_flow_log(tmp_path / "flow.jsonl", 2)
    out = subprocess.run(
        [str(FIXEDIP), "suggest", "allowlist", str(tmp_path / "flow.jsonl")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "# billing: 2 flows, 2 allowed only by observe mode" in out.stdout
    suggested = tomllib.loads(out.stdout)["clients"][0]
    assert suggested["allow"] == [f"127.0.0.1:{vendor.port}"]
    enforced = make_gateway(
        clients=[
            {"name": "billing", "token_hash": token_hash("billing"), "allow": suggested["allow"]}
        ]
    )
    r = requests.get(vendor.url("/again"), proxies={"http": enforced.proxy_url()}, timeout=5)
    assert r.status_code == 200


def test_subdomains_collapse_into_a_glob_and_refusals_never_widen_the_policy() -> None:
    def flow(host: str, port: int = 443, decision: str = "allow", kind: str = "connect") -> dict:
        return {"client": "billing", "host": host, "port": port, "decision": decision, "kind": kind}

    records = [
        flow("a.api.example"),
        flow("b.api.example"),
        flow("c.api.example", 8443),
        flow("pay.other.example"),
        flow("evil.example", decision="deny"),
        flow("203.0.113.7", 80, kind="http"),
    ]
    found = suggest(records, min_subdomains=3)["billing"]
    assert found["allow"] == [
        "*.api.example:443",
        "*.api.example:8443",
        "203.0.113.7:80",
        "pay.other.example:443",
    ]
    assert found["connect_ports"] == [443, 8443]


def test_suggest_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(FIXEDIP), "suggest", "allowlist", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
