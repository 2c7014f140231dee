"""`fixedip status` against a real gateway's admin API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from tests.helpers import OTHER_EGRESS, RunningGateway, VendorServer, token_hash, url_of

FIXEDIP = Path(sys.executable).parent / "fixedip"


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )


def test_all_up_exits_0_and_lists_every_ip(gateway: RunningGateway) -> None:
    out = status("--admin", url_of(gateway.admin))
    assert out.returncode == 0, out.stderr
    assert "127.0.0.10" in out.stdout and "127.0.0.11" in out.stdout
    assert "up" in out.stdout


def test_quarantine_is_shown_and_exits_1(make_gateway, vendor: VendorServer) -> None:
    gw = make_gateway(
        clients=[
            {
                "name": "pinned",
                "token_hash": token_hash("pinned"),
                "allow": ["127.0.0.1:*"],
                "egress": OTHER_EGRESS,
            }
        ]
    )
    for _ in range(3):  # the vendor answers 403 to 127.0.0.11
        requests.get(vendor.url("/b"), proxies={"http": gw.proxy_url("pinned")}, timeout=5)
    out = status("--admin", url_of(gw.admin))
    assert out.returncode == 1, out.stderr
    assert "quarantined" in out.stdout and "127.0.0.1" in out.stdout and "status 403" in out.stdout
    raw = status("--admin", url_of(gw.admin), "--json")
    entry = next(e for e in json.loads(raw.stdout)["egress"] if e["bind"] == OTHER_EGRESS)
    assert entry["quarantined_for"][0]["host"] == "127.0.0.1"
    metrics = requests.get(url_of(gw.admin, "/metrics"), timeout=5).text
    assert 'fixedip_egress_quarantined{egress="127.0.0.11",host="127.0.0.1"} 1.0' in metrics


def test_unreachable_admin_exits_3() -> None:
    out = status("--admin", "http://127.0.0.1:9")
    assert out.returncode == 3
    assert "could not read" in out.stderr and "Traceback" not in out.stderr
