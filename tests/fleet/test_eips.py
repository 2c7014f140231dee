"""Floating Elastic IPs against a real moto EC2 server: one holder, taken over when the
holder dies, handed over on SIGTERM; traffic through the SDK continues meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fixedip.client import Gateway
from tests.fleet.gateways import (
    FAILOVER_TARGET_S,
    VENDOR,
    FleetAws,
    Member,
    fleet_aws,
    make_aws,
    member_config,
)
from tests.fleet.servers import MotoServer, RedisServer
from tests.fleet.test_gateways import wait_until
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, DNSServer, VendorServer
from tests.serve import FIXEDIP


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> FleetAws:
    """Two instances and one floating EIP in moto."""
    return make_aws(moto, monkeypatch, eips=1)


def start_pair(
    tmp_path: Path,
    fleet_members: Any,
    redis: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
    floating_egress: str | None = None,
) -> dict[str, Member]:
    members = {}
    for index, (name, egress) in enumerate((("gw-a", ALLOWED_EGRESS), ("gw-b", OTHER_EGRESS))):
        config = member_config(tmp_path, name, egress, redis.url, dns.port, eip_lease_s=1.5)
        config["fleet"]["aws"] = fleet_aws(moto, aws, index)
        if floating_egress is not None:  # both may bind it on loopback; only the holder should
            config["fleet"]["aws"]["private_ip"] = floating_egress
            config["egress"]["ips"].append({"bind": floating_egress, "public": aws.ips[0]})
        members[aws.instances[index]] = fleet_members(config)
    wait_until(lambda: aws.holder() in members, 10, "the floating EIP got a holder")
    return members


def test_one_member_holds_the_floating_eip_and_fixedip_ips_lists_it(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    members = start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws)
    owner = members[aws.holder() or ""]
    held = [m for m in members.values() if m.fleet()["floating_eips"]]
    assert held == [owner]
    assert owner.fleet()["floating_eips"][0]["public"] == aws.ips[0]


def test_a_killed_holders_eip_moves_to_the_survivor_and_sdk_traffic_continues(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
    both_vendor: VendorServer,
) -> None:
    members = start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws)
    dead_instance = aws.holder()
    assert dead_instance is not None
    dead = members[dead_instance]
    survivor_instance = next(i for i in members if i != dead_instance)
    gw = Gateway([dead.proxy, members[survivor_instance].proxy])
    url = f"http://{VENDOR}:{both_vendor.port}/"
    with gw.requests_session() as session:
        assert session.get(url, timeout=5).status_code == 200
        dead.kill()
        took = wait_until(
            lambda: aws.holder() == survivor_instance, FAILOVER_TARGET_S, "EIP failover"
        )
        print(f"floating EIP moved in {took:.1f} s")
        assert session.get(url, timeout=5).status_code == 200
    assert members[survivor_instance].fleet()["floating_eips"][0]["allocation"] == aws.eips[0]


def test_sigterm_hands_the_eip_to_a_peer_before_exiting(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    members = start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws)
    leaving_instance = aws.holder()
    assert leaving_instance is not None
    leaving = members[leaving_instance]
    peer_instance = next(i for i in members if i != leaving_instance)
    leaving.process.signal(signal.SIGTERM)
    assert leaving.process.wait_exit(10) == 0
    assert any("handed to gw-" in line for line in leaving.process.stderr), "\n".join(
        leaving.process.stderr
    )
    wait_until(lambda: aws.holder() == peer_instance, FAILOVER_TARGET_S, "EIP handoff")


def test_fixedip_ips_prints_every_static_and_floating_ip_of_the_fleet(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws)
    reply = subprocess.run(
        [str(FIXEDIP), "ips", "--config", str(tmp_path / "gw-a.toml"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reply.returncode == 0, reply.stderr
    data = json.loads(reply.stdout)
    assert set(data["ips"]) == {ALLOWED_EGRESS, OTHER_EGRESS, aws.ips[0]}
    kinds = {d["ip"]: d["kind"] for d in data["details"]}
    assert kinds[aws.ips[0]] == "floating" and kinds[OTHER_EGRESS] == "static"


def test_fixedip_status_shows_one_table_for_the_fleet(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    members = start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws)
    any_member = next(iter(members.values()))
    host, port = any_member.process.addresses["admin"]
    reply = subprocess.run(
        [str(FIXEDIP), "status", "--admin", f"http://{host}:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert reply.returncode == 0, reply.stdout + reply.stderr
    for text in ("gw-a", "gw-b", ALLOWED_EGRESS, OTHER_EGRESS, aws.eips[0], "floating, held"):
        assert text in reply.stdout


def test_fixedip_ips_without_redis_exits_3_and_prints_nothing(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[egress]\nips = ["127.0.0.10"]\n[fleet]\nredis = "redis://127.0.0.1:9/0"\nmember = "a"\n'
    )
    reply = subprocess.run(
        [str(FIXEDIP), "ips", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert reply.returncode == 3 and reply.stdout == ""
    assert "cannot ask Redis at redis://127.0.0.1:9/0" in reply.stderr


def test_the_floating_address_is_an_egress_ip_only_on_the_holder(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    floating = "127.0.0.12"
    members = start_pair(tmp_path, fleet_members, redis_server, dns, moto, aws, floating)

    def state_of(member: Member) -> dict[str, Any]:
        _, body = member.admin("/egress")
        return next(ip for ip in json.loads(body)["egress"] if ip["bind"] == floating)

    owner_instance = aws.holder()
    owner = members[owner_instance or ""]
    other_instance = next(i for i in members if i != owner_instance)
    other = members[other_instance]
    wait_until(lambda: state_of(owner)["state"] == "up", 5, "the holder uses the floating IP")
    assert state_of(owner)["public"] == aws.ips[0]
    assert state_of(other)["state"] == "down"
    assert "held by another fleet member" in state_of(other)["reason"]
    owner.kill()
    wait_until(lambda: aws.holder() == other_instance, FAILOVER_TARGET_S, "EIP failover")
    wait_until(lambda: state_of(other)["state"] == "up", 5, "the new holder uses it")
