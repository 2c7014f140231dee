"""A real moto server (subprocess on 127.0.0.1) and a Lambda-in-a-VPC world built in it.

moto does not create Hyperplane ENIs, so `World.lambda_eni()` makes them the way Lambda
does: in the function's subnet, with its security groups, described
"AWS Lambda VPC ENI-<function>-<uuid>".
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

REGION = "eu-west-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto server for the session; each test resets it (`aws` fixture)."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **CREDENTIALS},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


@dataclass
class World:
    """A VPC with two public subnets, a security group and VPC-attached functions."""

    url: str
    ec2: Any
    lam: Any
    iam_role: str
    vpc_id: str = ""
    subnets: list[str] = field(default_factory=list)
    group: str = ""

    def function(
        self, name: str, subnets: list[str] | None = None, groups: list[str] | None = None
    ) -> str:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr("index.py", "def handler(event, context):\n    return 1\n")
        vpc = {"SubnetIds": subnets or self.subnets, "SecurityGroupIds": groups or [self.group]}
        self.lam.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=self.iam_role,
            Handler="index.handler",
            Code={"ZipFile": buf.getvalue()},
            VpcConfig=vpc,
        )
        return name

    def lambda_eni(self, function: str, subnet: str, groups: list[str] | None = None) -> str:
        eni = self.ec2.create_network_interface(
            SubnetId=subnet,
            Groups=groups or [self.group],
            Description=f"AWS Lambda VPC ENI-{function}-{uuid.uuid4()}",
        )
        return str(eni["NetworkInterface"]["NetworkInterfaceId"])

    def lambda_enis(self, function: str) -> list[str]:
        return [self.lambda_eni(function, subnet) for subnet in self.subnets]

    def addresses(self) -> list[dict[str, Any]]:
        return list(self.ec2.describe_addresses()["Addresses"])

    def public_ip_of(self, eni_id: str) -> str | None:
        raw = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])[
            "NetworkInterfaces"
        ]
        return (raw[0].get("Association") or {}).get("PublicIp")


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> World:
    """A fresh moto state with one VPC, two public subnets and a security group."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    ec2 = boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)
    lam = boto3.client("lambda", endpoint_url=moto_url, region_name=REGION)
    iam = boto3.client("iam", endpoint_url=moto_url, region_name=REGION)
    role = iam.create_role(RoleName="fn", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    world = World(moto_url, ec2, lam, role)
    world.vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    for index, zone in enumerate(("a", "b")):
        subnet = ec2.create_subnet(
            VpcId=world.vpc_id,
            CidrBlock=f"10.0.{index + 1}.0/24",
            AvailabilityZone=f"{REGION}{zone}",
        )
        world.subnets.append(subnet["Subnet"]["SubnetId"])
    world.group = ec2.create_security_group(GroupName="fn", Description="fn", VpcId=world.vpc_id)[
        "GroupId"
    ]
    return world
