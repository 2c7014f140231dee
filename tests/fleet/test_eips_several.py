"""Several floating EIPs per member (`[fleet.aws] private_ips`), against a real moto EC2
server: each held EIP on its own private address, at most one EIP per address, and the
addresses in egress.ips usable only while they carry their EIP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.gateways import (
    FAILOVER_TARGET_S,
    FleetAws,
    Member,
    fleet_aws,
    make_aws,
    member_config,
)
from tests.fleet.servers import MotoServer, RedisServer
from tests.fleet.test_gateways import wait_until
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, DNSServer
from tests.serve import FIXEDIP

FLOATING = ["127.0.0.12", "127.0.0.13"]  # each member's addresses for floating EIPs


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> FleetAws:
    """Two instances and two floating EIPs in moto; moto records the requests it gets."""
    moto.record()
    return make_aws(moto, monkeypatch, eips=2)


def start(
    tmp_path: Path,
    fleet_members: Any,
    redis: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
    index: int,
    aws_keys: dict[str, Any],
    floating_egress: bool = False,
) -> Member:
    name, egress = (("gw-a", ALLOWED_EGRESS), ("gw-b", OTHER_EGRESS))[index]
    config = member_config(tmp_path, name, egress, redis.url, dns.port, eip_lease_s=1.5)
    config["fleet"]["aws"] = fleet_aws(moto, aws, index, **aws_keys)
    if floating_egress:  # EIP i leaves from address i: the pairing private_ips keeps
        for bind, public in zip(FLOATING, aws.ips, strict=True):
            config["egress"]["ips"].append({"bind": bind, "public": public})
    member: Member = fleet_members(config)
    return member


def egress_state(member: Member, bind: str) -> dict[str, Any]:
    _, body = member.admin("/egress")
    found: dict[str, Any] = next(ip for ip in json.loads(body)["egress"] if ip["bind"] == bind)
    return found


def test_a_member_holds_several_eips_each_on_its_own_private_address(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    """Two members share two EIPs; when one dies the survivor holds both, each associated
    with its own private address (the AssociateAddress calls moto received say so), and
    both addresses leave as their EIPs there."""
    keys = {"private_ips": FLOATING}
    args = (tmp_path, fleet_members, redis_server, dns, moto, aws)
    members = [start(*args, i, keys, floating_egress=True) for i in (0, 1)]
    by_instance = dict(zip(aws.instances, members, strict=True))
    wait_until(lambda: all(aws.holders().values()), 10, "both EIPs got a holder")
    victim = by_instance[aws.holder(0) or ""]
    survivor_instance = next(i for i, m in by_instance.items() if m is not victim)
    survivor = by_instance[survivor_instance]
    victim.kill()
    wait_until(
        lambda: set(aws.holders().values()) == {survivor_instance},
        FAILOVER_TARGET_S,
        "the survivor holds both EIPs",
    )

    held = survivor.fleet()["floating_eips"]
    assert sorted(e["allocation"] for e in held) == sorted(aws.eips)
    placed = {e["allocation"]: e["private_ip"] for e in held}
    assert placed == dict(zip(aws.eips, FLOATING, strict=True))  # EIP i on address i

    calls = [c for c in moto.requests("AssociateAddress") if c["InstanceId"] == survivor_instance]
    latest = {c["AllocationId"]: c["PrivateIpAddress"] for c in calls}
    assert latest == placed
    assert all(c["AllowReassociation"] == "true" for c in calls)

    for bind, public in zip(FLOATING, aws.ips, strict=True):
        wait_until(
            lambda bind=bind: egress_state(survivor, bind)["state"] == "up",
            5,
            f"{bind} leaves as its EIP on the survivor",
        )
        assert egress_state(survivor, bind)["public"] == public


def test_a_member_never_holds_more_eips_than_it_has_addresses(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    """Alone with one address (`private_ip`, the one-address form) a member holds one of
    the two EIPs and leaves the other free; a member that joins with room takes it."""
    args = (tmp_path, fleet_members, redis_server, dns, moto, aws)
    alone = start(*args, 0, {"private_ip": FLOATING[0]}, floating_egress=False)
    wait_until(lambda: len(alone.fleet()["floating_eips"]) == 1, 10, "one EIP taken")
    (taken,) = alone.fleet()["floating_eips"]
    assert taken["private_ip"] == FLOATING[0]
    free = next(a for a in aws.eips if a != taken["allocation"])
    for _ in range(3):  # ticks go by (eip_lease_s 1.5: a tick each 0.5 s)
        wait_until(lambda: alone.fleet()["floating_eips"] == [taken], 2, "still one EIP")
    assert aws.holders()[free] is None
    assert all(c["AllocationId"] != free for c in moto.requests("AssociateAddress"))

    other = start(*args, 1, {"private_ips": FLOATING}, floating_egress=False)
    wait_until(lambda: aws.holders()[free] == aws.instances[1], FAILOVER_TARGET_S, "the free EIP")
    # The member records the EIP once EC2 has answered its association: a moment later.
    wait_until(lambda: other.fleet()["floating_eips"] != [], 5, "the member's record of it")
    assert [e["allocation"] for e in other.fleet()["floating_eips"]] == [free]
    assert alone.fleet()["floating_eips"] == [taken]


def test_fixedip_ips_says_which_member_and_address_carry_each_floating_ip(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    args = (tmp_path, fleet_members, redis_server, dns, moto, aws)
    start(*args, 0, {"private_ips": FLOATING})
    wait_until(lambda: set(aws.holders().values()) == {aws.instances[0]}, 10, "both held")
    reply = subprocess.run(
        [str(FIXEDIP), "ips", "--config", str(tmp_path / "gw-a.toml"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert reply.returncode == 0, reply.stderr
    details = {d["ip"]: d for d in json.loads(reply.stdout)["details"]}
    for public, address in zip(aws.ips, FLOATING, strict=True):
        assert details[public]["kind"] == "floating"
        assert details[public]["member"] == "gw-a"
        assert details[public]["private_ip"] == address
    table = subprocess.run(
        [str(FIXEDIP), "ips", "--config", str(tmp_path / "gw-a.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert table.returncode == 0, table.stderr
    assert FLOATING[0] in table.stdout and FLOATING[1] in table.stdout


def test_sigterm_hands_every_held_eip_to_a_peer_with_free_addresses(
    tmp_path: Path,
    fleet_members: Any,
    redis_server: RedisServer,
    dns: DNSServer,
    moto: MotoServer,
    aws: FleetAws,
) -> None:
    """The first member takes both EIPs alone; on SIGTERM it names the peer (two free
    addresses) for both, and the peer associates both with its own instance."""
    args = (tmp_path, fleet_members, redis_server, dns, moto, aws)
    leaving = start(*args, 0, {"private_ips": FLOATING})
    wait_until(lambda: set(aws.holders().values()) == {aws.instances[0]}, 10, "both held")
    peer = start(*args, 1, {"private_ips": FLOATING})
    wait_until(lambda: leaving.fleet()["members"] == 2, 10, "the peer joined")
    leaving.process.signal(signal.SIGTERM)
    assert leaving.process.wait_exit(10) == 0
    handed = [line for line in leaving.process.stderr if "handed to gw-b" in line]
    assert len(handed) == 2, "\n".join(leaving.process.stderr)
    wait_until(
        lambda: set(aws.holders().values()) == {aws.instances[1]},
        FAILOVER_TARGET_S,
        "the peer holds both EIPs",
    )
    wait_until(lambda: len(peer.fleet()["floating_eips"]) == 2, 5, "the peer reports both")
    assert {e["private_ip"] for e in peer.fleet()["floating_eips"]} == set(FLOATING)
