"""Several `fixedip serve` processes in one fleet, on loopback, always stopped."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.servers import AWS_ENV, MotoServer
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, VendorServer, token_hash
from tests.serve import ServeProcess, write_config

VENDOR = "vendor.test"
FAILOVER_TARGET_S = 10.0  # issue 13: traffic leaves from the IP again within 10 s


def member_config(
    tmp_path: Path,
    name: str,
    egress: str,
    redis_url: str,
    dns_port: int,
    destination: dict[str, Any] | None = None,
    **fleet: Any,
) -> dict[str, Any]:
    """A fleet member: its own egress IP, the shared Redis, one limited destination."""
    return {
        "listen": {"http": "127.0.0.1:0", "socks": "", "admin": "127.0.0.1:0"},
        "egress": {"ips": [egress]},
        "dns": {"servers": [f"127.0.0.1:{dns_port}"]},
        "guard": {"allow_cidrs": ["127.0.0.1/32"]},
        "log": {"flow": str(tmp_path / f"flow-{name}.jsonl")},
        "timeouts": {"connect_s": 2, "shutdown_grace_s": 1},
        "clients": [
            {"name": "billing", "token_hash": token_hash("billing"), "allow": [f"{VENDOR}:*"]}
        ],
        "destinations": [{"match": VENDOR, **(destination or {})}],
        "fleet": {
            "redis": redis_url,
            "member": name,
            "heartbeat_s": 0.2,
            "member_ttl_s": 1.0,
            **fleet,
        },
    }


@dataclass
class FleetAws:
    """Two instances and the fleet's floating EIPs in a moto server."""

    ec2: Any  # a boto3 EC2 client for moto
    instances: list[str]
    eips: list[str]  # allocation ids, in `floating_eips` order
    ips: list[str]  # their public IPs, in the same order

    def holders(self) -> dict[str, str | None]:
        """Allocation id -> the instance it is associated with in moto (None: none)."""
        found = self.ec2.describe_addresses(AllocationIds=self.eips)["Addresses"]
        return {a["AllocationId"]: a.get("InstanceId") or None for a in found}

    def holder(self, index: int = 0) -> str | None:
        """The instance floating EIP `index` is associated with, if any."""
        return self.holders()[self.eips[index]]


def make_aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, eips: int) -> FleetAws:
    """Two instances and `eips` Elastic IPs in moto; the members (started after this)
    get moto's credentials from the environment."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    ec2 = moto.ec2()
    reply = ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2)
    allocated = [ec2.allocate_address(Domain="vpc") for _ in range(eips)]
    return FleetAws(
        ec2=ec2,
        instances=[i["InstanceId"] for i in reply["Instances"]],
        eips=[e["AllocationId"] for e in allocated],
        ips=[e["PublicIp"] for e in allocated],
    )


def fleet_aws(moto: MotoServer, aws: FleetAws, index: int, **keys: Any) -> dict[str, Any]:
    """The `[fleet.aws]` section of the member on instance `index`, with every floating
    EIP; `keys` adds `private_ip(s)`."""
    return {
        "region": "eu-west-1",
        "endpoint_url": moto.url,
        "instance_id": aws.instances[index],
        "floating_eips": aws.eips,
        **keys,
    }


class Member:
    def __init__(self, process: ServeProcess) -> None:
        self.process = process

    @property
    def proxy(self) -> str:
        return self.process.proxy_url("billing")

    def admin(self, path: str) -> tuple[int, str]:
        host, port = self.process.addresses["admin"]
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def fleet(self) -> dict[str, Any]:
        status, body = self.admin("/egress")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)["fleet"]
        return data

    def kill(self) -> None:
        os.kill(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(5)


@pytest.fixture
def fleet_members(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Member]]:
    started: list[ServeProcess] = []

    def start(data: dict[str, Any]) -> Member:
        path = tmp_path / f"{data['fleet']['member']}.toml"
        write_config(path, data)
        process = ServeProcess(["--config", str(path)], tmp_path)
        started.append(process)
        return Member(process.wait_announced())

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def both_vendor() -> Iterator[VendorServer]:
    """A stub vendor that answers 200 to both members' egress IPs."""
    server = VendorServer({ALLOWED_EGRESS, OTHER_EGRESS})
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()
