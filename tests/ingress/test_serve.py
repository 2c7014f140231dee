"""`fixedip serve` with [ingress]: the relay beside the proxy (one flow log, one /metrics),
or alone when the file has no [egress]; SIGHUP reloads routes, SIGTERM exits 0."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from tests.helpers import ALLOWED_EGRESS, read_flow_log
from tests.ingress.process import FIXEDIP, RelayProcess
from tests.ingress.stubs import TargetStub
from tests.serve import ServeProcess, client, serve_config, write_config

RELAY_LINE = re.compile(r"webhook relay\s+(http://[0-9.]+:\d+)")


def with_ingress(tmp_path: Path, target: TargetStub, paths: list[str]) -> dict[str, Any]:
    data = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])])
    data["ingress"] = {
        "listen": "127.0.0.1:0",
        "spool": str(tmp_path / "spool.db"),
        "routes": [{"path": p, "target": target.url("/ok")} for p in paths],
    }
    return data


def relay_url(process: ServeProcess) -> str:
    m = RELAY_LINE.search(process.wait_for_line("webhook relay"))
    assert m
    return m[1]


def test_serve_runs_proxy_and_relay_together(
    serve: Callable[[dict[str, Any]], ServeProcess], target: TargetStub, tmp_path: Path
) -> None:
    process = serve(with_ingress(tmp_path, target, ["/hooks/a"]))
    url = relay_url(process)
    proxied = requests.get(
        target.url("/ok"), proxies={"http": process.proxy_url("billing")}, timeout=5
    )
    assert proxied.status_code == 200
    answer = requests.post(url + "/hooks/a", data=b"beside the proxy", timeout=5)
    assert answer.status_code == 200
    delivered = target.wait_for(2, "/ok")
    assert any(d.body == b"beside the proxy" for d in delivered)
    admin = process.addresses["admin"]
    metrics = requests.get(f"http://{admin[0]}:{admin[1]}/metrics", timeout=5).text
    assert 'fixedip_ingress_spooled_total{route="/hooks/a"} 1.0' in metrics
    assert "fixedip_requests_total" in metrics
    records = read_flow_log(tmp_path / "flow.jsonl", 3)
    kinds = {r["kind"] for r in records}
    assert {"webhook", "delivery"} <= kinds
    assert any(r.get("egress") == ALLOWED_EGRESS for r in records)

    process.signal(signal.SIGTERM)
    assert process.wait_exit(20) == 0


def test_sighup_adds_a_route_without_a_restart(
    serve: Callable[[dict[str, Any]], ServeProcess], target: TargetStub, tmp_path: Path
) -> None:
    data = with_ingress(tmp_path, target, ["/hooks/a"])
    process = serve(data)
    url = relay_url(process)
    assert requests.post(url + "/hooks/b", data=b"x", timeout=5).status_code == 404
    data["ingress"]["routes"].append({"path": "/hooks/b", "target": target.url("/ok")})
    write_config(tmp_path / "fixedip.toml", data)
    mark = process.mark
    process.signal(signal.SIGHUP)
    process.wait_for_line("ingress: 2 routes loaded", after=mark)
    assert requests.post(url + "/hooks/b", data=b"new route", timeout=5).status_code == 200
    target.wait_for(1, "/ok")


def test_serve_on_a_relay_only_file_runs_just_the_relay(tmp_path: Path, target: TargetStub) -> None:
    config = tmp_path / "relay.toml"
    write_config(
        config,
        {
            "listen": {"admin": "127.0.0.1:0"},
            "log": {"flow": str(tmp_path / "flow.jsonl")},
            "ingress": {
                "listen": "127.0.0.1:0",
                "spool": str(tmp_path / "spool.db"),
                "routes": [{"path": "/h", "target": target.url("/ok")}],
            },
        },
    )
    log = tmp_path / "serve.log"
    log.touch()
    relay = RelayProcess(config, log, args=("serve",)).wait_ready()
    try:
        assert "relaying webhooks from" in relay.output()
        assert "HTTP proxy" not in relay.output()
        assert requests.post(relay.url + "/h", data=b"alone", timeout=5).status_code == 200
        target.wait_for(1, "/ok")
    finally:
        assert relay.stop() == 0


def test_serve_refuses_workers_with_the_relay(tmp_path: Path, target: TargetStub) -> None:
    data = with_ingress(tmp_path, target, ["/h"])
    data["server"] = {"workers": 2}
    data["listen"] = {"http": "127.0.0.1:39127", "socks": "", "admin": ""}  # never bound
    config = tmp_path / "fixedip.toml"
    write_config(config, data)
    result = subprocess.run(
        [str(FIXEDIP), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "server.workers > 1 cannot run the webhook relay" in result.stderr
