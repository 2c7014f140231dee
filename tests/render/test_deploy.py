"""The CloudFormation nat-gateway and fixedip-vm templates deploy to a real moto server,
and the resources they promise are there afterwards."""

from __future__ import annotations

import ast
import base64
from typing import Any

import pytest

from fixedip.plan.render import RenderParams, render

from .conftest import MotoServer

REGION = "eu-west-1"


def deploy(moto: MotoServer, option: str, stack: str, **params: Any) -> dict[str, str]:
    """Create the stack; return its outputs. Fails unless CREATE_COMPLETE."""
    rendered = render(option, "cloudformation", RenderParams(region=REGION, **params))
    cf = moto.client("cloudformation", REGION)
    cf.create_stack(
        StackName=stack,
        TemplateBody=rendered.files["template.yaml"].decode(),
        Capabilities=["CAPABILITY_IAM"],
    )
    described = cf.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def physical_ids(moto: MotoServer, stack: str) -> dict[str, str]:
    cf = moto.client("cloudformation", REGION)
    summaries = cf.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries}


@pytest.fixture(scope="module")
def nat_stack(moto_server: MotoServer) -> dict[str, Any]:
    outputs = deploy(moto_server, "nat-gateway", "nat", azs=2, vpc_cidr="10.50.0.0/16")
    return {"outputs": outputs, "ids": physical_ids(moto_server, "nat")}


def test_nat_gateway_stack_creates_a_vpc_with_public_and_private_subnets_per_az(
    moto_server: MotoServer, nat_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    vpc_id = nat_stack["ids"]["Vpc"]
    (vpc,) = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"]
    assert vpc["CidrBlock"] == "10.50.0.0/16"
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    by_cidr = {s["CidrBlock"]: s for s in subnets}
    assert set(by_cidr) == {"10.50.0.0/20", "10.50.16.0/20", "10.50.128.0/20", "10.50.144.0/20"}
    assert (
        by_cidr["10.50.0.0/20"]["AvailabilityZone"] != by_cidr["10.50.16.0/20"]["AvailabilityZone"]
    )
    # MapPublicIpOnLaunch: false is asserted on the template (moto ignores the property).


def test_nat_gateway_stack_has_a_nat_gateway_per_az_with_its_elastic_ip(
    moto_server: MotoServer, nat_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    ids = nat_stack["ids"]
    gateways = ec2.describe_nat_gateways(NatGatewayIds=[ids["NatGateway1"], ids["NatGateway2"]])
    public_ips = set()
    for gateway in gateways["NatGateways"]:
        assert gateway["SubnetId"] in (ids["PublicSubnet1"], ids["PublicSubnet2"])
        (address,) = gateway["NatGatewayAddresses"]
        allocation = ec2.describe_addresses(AllocationIds=[address["AllocationId"]])
        public_ips.add(allocation["Addresses"][0]["PublicIp"])
    assert len(public_ips) == 2
    assert set(nat_stack["outputs"]["FixedIps"].split(",")) == public_ips


def test_nat_gateway_stack_routes_private_subnets_through_their_nat_gateway(
    moto_server: MotoServer, nat_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    ids = nat_stack["ids"]
    for n in (1, 2):
        (table,) = ec2.describe_route_tables(RouteTableIds=[ids[f"PrivateRouteTable{n}"]])[
            "RouteTables"
        ]
        default = [r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        assert [r.get("NatGatewayId") for r in default] == [ids[f"NatGateway{n}"]]
        # moto keeps CloudFormation subnet associations apart from describe_route_tables;
        # the association resource exists and its physical id is the route table's.
        assert ids[f"PrivateSubnet{n}RouteTableAssociation"] == ids[f"PrivateRouteTable{n}"]
    (public,) = ec2.describe_route_tables(RouteTableIds=[ids["PublicRouteTable"]])["RouteTables"]
    default = [r for r in public["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
    assert [r.get("GatewayId") for r in default] == [ids["InternetGateway"]]


def test_nat_gateway_stack_outputs_the_lambda_vpc_config(
    moto_server: MotoServer, nat_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    ids, outputs = nat_stack["ids"], nat_stack["outputs"]
    assert outputs["LambdaSubnetIds"].split(",") == [ids["PrivateSubnet1"], ids["PrivateSubnet2"]]
    (group,) = ec2.describe_security_groups(GroupIds=[outputs["LambdaSecurityGroupId"]])[
        "SecurityGroups"
    ]
    assert group["VpcId"] == ids["Vpc"]
    # Its egress rule (HTTPS only) is asserted on the template: moto ignores
    # SecurityGroupEgress in CloudFormation.
    assert outputs["AttachCommand"].startswith(
        "aws lambda update-function-configuration --function-name my-function "
    )


@pytest.fixture(scope="module")
def vm_stack(moto_server: MotoServer) -> dict[str, Any]:
    outputs = deploy(moto_server, "fixedip-vm", "vm", vpc_cidr="10.60.0.0/16")
    return {"outputs": outputs, "ids": physical_ids(moto_server, "vm")}


def test_fixedip_vm_stack_runs_the_gateway_instance_with_its_elastic_ip(
    moto_server: MotoServer, vm_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    ids = vm_stack["ids"]
    (reservation,) = ec2.describe_instances(InstanceIds=[ids["GatewayInstance"]])["Reservations"]
    (instance,) = reservation["Instances"]
    assert instance["InstanceType"] == "t4g.small"
    assert instance["SubnetId"] == ids["PublicSubnet1"]
    assert "GatewayInstanceProfile" in instance["IamInstanceProfile"]["Arn"]
    (address,) = ec2.describe_addresses(PublicIps=[ids["GatewayEip1"]])["Addresses"]
    assert address["InstanceId"] == ids["GatewayInstance"]
    assert vm_stack["outputs"]["FixedIps"] == address["PublicIp"]
    assert vm_stack["outputs"]["ProxyUrl"] == f"https://functions:TOKEN@{address['PublicIp']}:3129"


def test_fixedip_vm_stack_exposes_only_the_tls_listener(
    moto_server: MotoServer, vm_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    ids = vm_stack["ids"]
    (group,) = ec2.describe_security_groups(GroupIds=[ids["GatewaySecurityGroup"]])[
        "SecurityGroups"
    ]
    ingress = ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [group["GroupId"]]}]
    )["SecurityGroupRules"]
    inbound = [r for r in ingress if not r["IsEgress"]]
    assert {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in inbound} == {("tcp", 3129, 3129)}
    sources = {r.get("CidrIpv4") or r["ReferencedGroupInfo"]["GroupId"] for r in inbound}
    assert sources == {"0.0.0.0/0", ids["FunctionSecurityGroup"]}
    # Egress (80 and 443 only) is asserted on the template: moto ignores
    # SecurityGroupEgress in CloudFormation.


def test_fixedip_vm_stack_boots_with_the_fixedip_bootstrap(
    moto_server: MotoServer, vm_stack: dict[str, Any]
) -> None:
    ec2 = moto_server.client("ec2", REGION)
    attribute = ec2.describe_instance_attribute(
        InstanceId=vm_stack["ids"]["GatewayInstance"], Attribute="userData"
    )
    script = base64.b64decode(attribute["UserData"]["Value"]).decode()
    assert script.startswith("#!/bin/bash\n")
    assert "REGION='eu-west-1'" in script
    assert "CLIENT_NAME='functions'" in script
    assert 'https = "0.0.0.0:3129"' in script
    assert "systemctl enable --now fixedip.service" in script
    assert "${" not in script, "a placeholder was left unsubstituted"


def test_fixedip_vm_stack_gives_the_gateway_role_only_its_ca_parameter(
    moto_server: MotoServer, vm_stack: dict[str, Any]
) -> None:
    iam = moto_server.client("iam", REGION)
    role = vm_stack["ids"]["GatewayRole"]
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(document, str):  # moto returns the document as a Python literal
        document = ast.literal_eval(document)
    (statement,) = document["Statement"]
    assert statement["Action"] == ["ssm:PutParameter"]
    assert statement["Resource"].endswith(":parameter/fixedip/fixedip/*")
    # The Session Manager managed policy is asserted on the template: moto does not
    # attach ManagedPolicyArns from CloudFormation.
