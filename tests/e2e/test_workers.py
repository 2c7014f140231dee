"""`server.workers = N`: several processes share the proxy port and act as one gateway."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import requests

from tests.helpers import ALLOWED_EGRESS, VendorServer
from tests.serve import client, serve_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workers_config(tmp_path: Path, workers: int = 2) -> dict:
    config = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])])
    config["server"] = {"workers": workers}
    config["listen"] = {
        "http": f"127.0.0.1:{free_port()}",
        "socks": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
    }
    return config


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def test_two_workers_serve_the_same_port(serve, tmp_path: Path, vendor: VendorServer) -> None:
    gw = serve(workers_config(tmp_path))
    assert gw.wait_for_line("(SO_REUSEPORT)").strip() == "workers                2 (SO_REUSEPORT)"
    assert len(children(gw.proc.pid)) == 2
    for i in range(10):  # new connections are spread by the kernel; all must work
        r = requests.get(vendor.url(f"/w{i}"), proxies={"http": gw.proxy_url("billing")}, timeout=5)
        assert r.status_code == 200 and r.json()["peer"] == ALLOWED_EGRESS
    admin = gw.addresses["admin"]
    assert requests.get(f"http://{admin[0]}:{admin[1]}/healthz", timeout=5).text == "ok\n"


def test_a_killed_worker_is_replaced(serve, tmp_path: Path, vendor: VendorServer) -> None:
    gw = serve(workers_config(tmp_path))
    before = children(gw.proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    gw.wait_for_line("restarting it")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = children(gw.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    assert len(now) == 2 and victim not in now, "\n".join(gw.stderr)
    time.sleep(0.5)  # the new worker's listeners are up well within this
    assert "restarting it" not in "".join(
        gw.stderr[gw.stderr.index(gw.wait_for_line("restarting it")) + 1 :]
    )
    for i in range(6):
        r = requests.get(
            vendor.url(f"/after{i}"), proxies={"http": gw.proxy_url("billing")}, timeout=5
        )
        assert r.status_code == 200


def test_sigterm_stops_every_worker_and_exits_0(serve, tmp_path: Path) -> None:
    gw = serve(workers_config(tmp_path))
    workers = children(gw.proc.pid)
    gw.signal(signal.SIGTERM)
    assert gw.wait_exit(15) == 0
    for pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )


def test_sighup_reaches_every_worker(serve, tmp_path: Path) -> None:
    gw = serve(workers_config(tmp_path))
    mark = gw.mark
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if sum("configuration reloaded" in line for line in gw.stderr[mark:]) >= 2:
            break
        time.sleep(0.05)
    assert sum("configuration reloaded" in line for line in gw.stderr[mark:]) == 2


def test_port_zero_with_workers_is_a_config_error(tmp_path: Path) -> None:
    from fixedip.config import ConfigError, from_mapping

    config = serve_config(tmp_path, [client("billing", ["127.0.0.1:*"], [443])])
    config["server"] = {"workers": 2}
    try:
        from_mapping(config, "gw.toml")
    except ConfigError as exc:
        assert "listen.http: port 0 cannot be shared by 2 workers" in str(exc)
    else:
        raise AssertionError("port 0 with two workers was accepted")


def test_workers_never_outlive_a_killed_supervisor(serve, tmp_path: Path) -> None:
    gw = serve(workers_config(tmp_path))
    workers = children(gw.proc.pid)
    assert len(workers) == 2
    gw.proc.kill()  # SIGKILL: the supervisor cannot forward anything
    gw.proc.wait(5)
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = {
            pid
            for pid in workers
            if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        }
        time.sleep(0.1)
    assert alive == set()
