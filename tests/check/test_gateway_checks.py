"""`[check]` inside the gateway: the checks of `fixedip check` run from each egress IP in
the background, shown as `fixedip_check_*` metrics and on the admin API's GET /checks.

As in test_check_cli.py, the egress IPs 127.0.0.10/.11 are seen by the loopback echo
endpoints through a 1:1 NAT table as 203.0.113.10/.11 (documentation addresses, data
only); a dnslib server answers PTR and blocklist queries; the range files come from
`fixedip ranges update` against a loopback server.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixedip.config import ConfigError
from tests.check.conftest import EchoSite, Zone
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, RunningGateway, gateway_config

PUBLIC_A, PUBLIC_B = "203.0.113.10", "203.0.113.11"
ZONE = "bl.example.test"
NAT_EGRESS = {
    "ips": [
        {"bind": ALLOWED_EGRESS, "public": PUBLIC_A},
        {"bind": OTHER_EGRESS, "public": PUBLIC_B},
    ],
    "strategy": "failover",
}


def admin_get(gw: RunningGateway, path: str) -> tuple[int, bytes]:
    host, port = gw.admin
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for_checks(gw: RunningGateway, egress: int = 2, timeout: float = 30) -> dict[str, Any]:
    """GET /checks until every egress IP has a result (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = admin_get(gw, "/checks")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        if len(data["egress"]) >= egress or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def samples(gw: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = admin_get(gw, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith("fixedip_check_")
    }


def check_status(found: dict[Any, float], egress: str, check: str) -> float:
    return found[("fixedip_check_status", (("check", check), ("egress", egress)))]


@pytest.fixture
def nat(echo_site: EchoSite) -> EchoSite:
    echo_site.nat = {ALLOWED_EGRESS: PUBLIC_A, OTHER_EGRESS: PUBLIC_B}
    return echo_site


@pytest.fixture
def good_dns(zone: Zone) -> Zone:
    for ip, name in ((PUBLIC_A, "gw-a.example.test"), (PUBLIC_B, "gw-b.example.test")):
        zone.ptr(ip, name)
    return zone


def test_every_egress_ip_is_checked_and_shown_as_metrics(
    make_gateway: Callable[..., RunningGateway],
    nat: EchoSite,
    good_dns: Zone,
    ranges_cache: Path,
    tmp_path: Path,
) -> None:
    allowlist = tmp_path / "vendor-allowlist.txt"
    allowlist.write_text(f"{PUBLIC_A}\n{PUBLIC_B}\n")
    before = time.time()
    gw = make_gateway(
        egress=NAT_EGRESS,
        check={
            "echo": [nat.url("/plain"), nat.url("/json")],
            "resolver": good_dns.address,
            "dnsbl": [ZONE],
            "ranges_cache": str(ranges_cache),
            "allowlist": str(allowlist),
            "timeout_s": 3,
        },
    )
    data = wait_for_checks(gw)
    by_egress = {e["egress"]: e for e in data["egress"]}
    assert set(by_egress) == {ALLOWED_EGRESS, OTHER_EGRESS}
    a, b = by_egress[ALLOWED_EGRESS], by_egress[OTHER_EGRESS]
    assert a["exit_code"] == 0 and b["exit_code"] == 0, (a["rows"], b["rows"])
    assert a["public"] == PUBLIC_A and a["observed"] == [PUBLIC_A]
    assert b["observed"] == [PUBLIC_B]
    assert data["interval_s"] == 3600
    rows_b = {(r["check"], r["subject"]): r for r in b["rows"]}
    assert rows_b[("reverse dns", PUBLIC_B)]["reason"] == "gw-b.example.test, forward-confirmed"
    assert "EC2 eu-west-1" in rows_b[("cloud range", PUBLIC_B)]["reason"]
    assert rows_b[("allowlist", PUBLIC_B)]["status"] == "pass"
    # The echo requests left bound to each egress IP, never from the default address.
    assert set(nat.peers) == {ALLOWED_EGRESS, OTHER_EGRESS}
    assert (f"11.113.0.203.{ZONE}", "A") in good_dns.queries

    found = samples(gw)
    for egress in (ALLOWED_EGRESS, OTHER_EGRESS):
        for check in ("echo", "egress ip", "cloud range", "reverse dns", "blocklist", "allowlist"):
            assert check_status(found, egress, check) == 0, (egress, check)
        assert found[("fixedip_check_exit_code", (("egress", egress),))] == 0
        stamp = found[("fixedip_check_last_run_timestamp_seconds", (("egress", egress),))]
        assert stamp >= before
    info = "fixedip_check_observed_ip_info"
    assert found[(info, (("egress", ALLOWED_EGRESS), ("observed", PUBLIC_A)))] == 1
    assert found[(info, (("egress", OTHER_EGRESS), ("observed", PUBLIC_B)))] == 1


def test_a_lying_endpoint_warns_and_an_unexpected_ip_fails(
    make_gateway: Callable[..., RunningGateway],
    nat: EchoSite,
    good_dns: Zone,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="fixedip")
    gw = make_gateway(
        egress=NAT_EGRESS,
        check={
            "echo": [nat.url("/plain"), nat.url("/json"), nat.url("/lie")],
            "expect": [PUBLIC_A],  # the vendor knows only .10: .11 leaving is a failure
            "resolver": good_dns.address,
            "dnsbl": [],
            "ranges_cache": "/nonexistent",
            "timeout_s": 3,
        },
    )
    data = wait_for_checks(gw)
    found = samples(gw)
    # .10: the expected IP, but /lie reports another: a warning about that endpoint.
    assert check_status(found, ALLOWED_EGRESS, "echo") == 1
    assert check_status(found, ALLOWED_EGRESS, "egress ip") == 1
    # .11: most endpoints see 203.0.113.11, which is not expected: a failure.
    assert check_status(found, OTHER_EGRESS, "egress ip") == 2
    assert found[("fixedip_check_exit_code", (("egress", OTHER_EGRESS),))] == 2
    lies = "fixedip_check_observed_ip_info", (("egress", OTHER_EGRESS), ("observed", nat.lie_ip))
    assert found[lies] == 1
    by_egress = {e["egress"]: e for e in data["egress"]}
    assert by_egress[OTHER_EGRESS]["status"]["egress ip"] == "fail"
    lie_row = next(r for r in by_egress[ALLOWED_EGRESS]["rows"] if r["subject"].endswith("/lie"))
    assert lie_row["status"] == "warn" and nat.lie_ip in lie_row["reason"]
    # One line per failing run, no traceback.
    lines = [r.getMessage() for r in caplog.records if "check from egress" in r.getMessage()]
    assert any(m.startswith(f"check from egress {OTHER_EGRESS}: exit status 2") for m in lines)
    assert all("\n" not in m for m in lines)
    assert "Traceback" not in caplog.text


def test_the_ssrf_guard_applies_to_echo_endpoints(
    make_gateway: Callable[..., RunningGateway], nat: EchoSite, good_dns: Zone
) -> None:
    gw = make_gateway(
        egress=NAT_EGRESS,
        guard={"allow_cidrs": []},  # loopback is internal: refused like any vendor
        check={"echo": [nat.url("/plain")], "resolver": good_dns.address, "dnsbl": []},
    )
    data = wait_for_checks(gw)
    for entry in data["egress"]:
        echo = next(r for r in entry["rows"] if r["check"] == "echo")
        assert echo["status"] == "unknown" and "the guard refuses 127.0.0.1" in echo["reason"]
        assert entry["exit_code"] == 3  # the public address is unknown: could not run
    assert nat.peers == []  # nothing was sent
    found = samples(gw)
    assert check_status(found, ALLOWED_EGRESS, "egress ip") == 3


def test_without_a_check_section_there_is_no_task_and_no_checks_route(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway()
    status, body = admin_get(gw, "/checks")
    assert status == 404 and b"[check]" in body
    assert not samples(gw)


def test_a_new_configuration_applies_from_the_next_run(
    make_gateway: Callable[..., RunningGateway], nat: EchoSite, good_dns: Zone, tmp_path: Path
) -> None:
    check = {"echo": [nat.url("/plain")], "resolver": good_dns.address, "dnsbl": []}
    gw = make_gateway(egress=NAT_EGRESS, check={**check, "interval_s": 1})
    wait_for_checks(gw)
    assert check_status(samples(gw), ALLOWED_EGRESS, "echo") == 0
    lying = {**check, "echo": [nat.url("/plain"), nat.url("/json"), nat.url("/lie")]}
    new = gateway_config(tmp_path, egress=NAT_EGRESS, check={**lying, "interval_s": 1})

    def swap() -> None:  # what reload() does once the new file has loaded
        from fixedip.gateway.runtime import Runtime

        g = gw.gateway
        g.runtime = Runtime(new, previous=g.runtime, listeners=g.listener_endpoints())

    gw.call(swap)
    deadline = time.monotonic() + 20
    while check_status(samples(gw), ALLOWED_EGRESS, "echo") != 1:
        assert time.monotonic() < deadline, "the new echo list was never used"
        time.sleep(0.2)
    entry = next(e for e in wait_for_checks(gw)["egress"] if e["egress"] == ALLOWED_EGRESS)
    assert any(r["subject"] == nat.url("/lie") for r in entry["rows"])


def test_only_worker_0_runs_the_checks(tmp_path: Path, nat: EchoSite) -> None:
    config = gateway_config(tmp_path, check={"echo": [nat.url("/plain")]})

    async def checks_of(worker: int) -> object:
        from fixedip.gateway.server import Gateway

        return Gateway(config, worker=worker, workers=2).checks  # built, not started

    gw = RunningGateway(config)
    gw.thread.start()
    try:
        assert gw.run(checks_of(0)) is not None
        assert gw.run(checks_of(1)) is None  # once per host, not once per worker
    finally:
        gw.stop()


def test_close_stops_the_background_task(
    make_gateway: Callable[..., RunningGateway], nat: EchoSite, good_dns: Zone
) -> None:
    gw = make_gateway(
        egress=NAT_EGRESS,
        check={"echo": [nat.url("/plain")], "resolver": good_dns.address, "interval_s": 1},
    )
    wait_for_checks(gw)
    gw.run(gw.gateway.close())

    async def tasks_done() -> bool:
        import asyncio

        await asyncio.sleep(0.05)  # cancellation lands on the next loop iteration
        return all(task.done() for task in gw.gateway._tasks)

    assert gw.run(tasks_done())


@pytest.mark.parametrize(
    ("check", "key", "expected"),
    [
        ({"interval_s": 0}, "check.interval_s", "greater than or equal to 1"),
        ({"echo": ["ftp://example.test/"]}, "check.echo", "http:// or https://"),
        ({"resolver": "127.0.0.1:dns"}, "check.resolver", "HOST or HOST:PORT"),
        ({"expect": ["not-an-ip"]}, "check.expect", "IPv4 or IPv6 address"),
        ({"dnsbl": ["bad..zone"]}, "check.dnsbl", "DNS zone names"),
        ({"intervall_s": 60}, "check.intervall_s", "unknown key"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, check: dict[str, Any], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        gateway_config(tmp_path, check=check)
    message = str(info.value)
    assert f"fixedip.toml: {key}" in message and expected in message, message
