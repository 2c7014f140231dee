"""`eni-eips` for CloudFormation ships the custom resource's code beside the template.
moto cannot run `Custom::` resources, so the packaged directory itself is run: its
handler, imported from there alone, answers a Create request against a moto server and
the function's ENIs end up with Elastic IPs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from fixedip.plan.render import RenderParams, render, write

from .conftest import MotoServer

REGION = "eu-west-1"
RUN_TIMEOUT_S = 60

# Runs inside the packaged directory: the installed fixedip package is hidden, so the
# handler must find eni.py beside itself, as it does in the Lambda zip.
RUNNER = """
import json, sys
sys.modules["fixedip"] = None
sys.path.insert(0, sys.argv[1])
import eni_resource
assert eni_resource.eni.__file__.startswith(sys.argv[1]), eni_resource.eni.__file__
eni_resource.handler(json.loads(sys.argv[2]), None)
"""


class Responses(BaseHTTPRequestHandler):
    """The pre-signed ResponseURL stand-in: records each PUT body."""

    received: list[dict[str, Any]] = []

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Responses)
    received: list[dict[str, Any]] = []
    server.RequestHandlerClass = type("R", (Responses,), {"received": received})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/response", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def package(tmp_path: Path) -> Path:
    out = tmp_path / "eni"
    write(render("eni-eips", "cloudformation", RenderParams(function_name="billing")), out)
    return out


def test_the_template_points_codeuri_at_the_packaged_directory(tmp_path: Path) -> None:
    out = package(tmp_path)
    template = yaml.safe_load((out / "template.yaml").read_text())
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    function = template["Resources"]["EipAttacher"]["Properties"]
    assert (out / function["CodeUri"]).is_dir()
    module, _, name = function["Handler"].partition(".")
    assert (out / function["CodeUri"] / f"{module}.py").exists()
    assert name == "handler"
    custom = template["Resources"]["FunctionEips"]
    assert custom["Type"] == "Custom::FunctionEips"
    assert custom["Properties"]["ServiceToken"] == {"Fn::GetAtt": ["EipAttacher", "Arn"]}


def test_the_packaged_files_are_fixedips_own_modules(tmp_path: Path) -> None:
    out = package(tmp_path)
    for name in ("eni_resource.py", "eni.py"):
        source = resources.files("fixedip.cloud").joinpath(name).read_bytes()
        assert (out / "eni_resource" / name).read_bytes() == source


def test_the_handler_policy_changes_only_addresses_tagged_for_the_function(
    tmp_path: Path,
) -> None:
    template = yaml.safe_load((package(tmp_path) / "template.yaml").read_text())
    (policy,) = template["Resources"]["EipAttacher"]["Properties"]["Policies"]
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    for sid in ("AllocateTagged", "ChangeTagged"):
        assert by_sid[sid]["Resource"]["Fn::Sub"].endswith(":elastic-ip/*")
        assert by_sid[sid]["Condition"]["StringEquals"]
    assert by_sid["ReadNetwork"]["Action"] == [
        "ec2:DescribeAddresses",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
    ]


def test_the_packaged_handler_puts_elastic_ips_on_the_functions_enis(
    tmp_path: Path, moto_server: MotoServer, response_url: tuple[str, list[dict[str, Any]]]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    lam = moto_server.client("lambda", REGION)
    iam = moto_server.client("iam", REGION)
    role = iam.create_role(RoleName=f"fn-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}")
    vpc = ec2.create_vpc(CidrBlock="10.70.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.70.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="fn", Description="fn", VpcId=vpc)["GroupId"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return 1\n")
    lam.create_function(
        FunctionName="billing",
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="index.handler",
        Code={"ZipFile": buf.getvalue()},
        VpcConfig={"SubnetIds": [subnet], "SecurityGroupIds": [group]},
    )
    eni = ec2.create_network_interface(
        SubnetId=subnet, Groups=[group], Description=f"AWS Lambda VPC ENI-billing-{uuid.uuid4()}"
    )["NetworkInterface"]["NetworkInterfaceId"]

    url, received = response_url
    event = {
        "RequestType": "Create",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/eni/1",
        "RequestId": "r-1",
        "LogicalResourceId": "FunctionEips",
        "ResourceProperties": {
            "FunctionName": "billing",
            "Region": REGION,
            "EndpointUrl": moto_server.url,
            "WaitSeconds": 0,
        },
    }
    code_dir = package(tmp_path) / "eni_resource"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    subprocess.run(
        [sys.executable, "-c", RUNNER, str(code_dir), json.dumps(event)],
        env=env,
        check=True,
        timeout=RUN_TIMEOUT_S,
        capture_output=True,
    )
    (answer,) = received
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert answer["LogicalResourceId"] == "FunctionEips"
    (described,) = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"]
    assert answer["Data"]["EgressIps"] == described["Association"]["PublicIp"]
