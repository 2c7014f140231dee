"""The AWS network every AWS render starts from: a VPC, public subnets behind an Internet
Gateway, optional private subnets, in Terraform and CloudFormation.

Subnet ranges are computed at render time (the VPC range cut into 16 equal parts:
public subnets first, private ones from the ninth part on), so both languages produce
the same addresses and the files stay free of CIDR arithmetic.
"""

from __future__ import annotations

from typing import Any

from fixedip import __version__
from fixedip.plan.render import hcl
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

PRIVATE_OFFSET = 8  # private subnets start at the ninth /(n+4) block of the VPC range
TAG_KEY = "fixedip:name"

# --- Terraform ------------------------------------------------------------------------


def tf_header(params: RenderParams, option: str) -> str:
    return (
        f"Rendered by fixedip {__version__}: {params.command_line(option, 'terraform')}\n"
        "Deterministic output: the same command gives the same file. See docs/render.md."
    )


def tf_preamble(
    params: RenderParams, extra_providers: dict[str, Any] | None = None
) -> list[hcl.Block]:
    providers: dict[str, Any] = {"aws": {"source": "hashicorp/aws", "version": ">= 5.40"}}
    providers.update(extra_providers or {})
    return [
        hcl.Block(
            "terraform",
            (),
            {"required_version": ">= 1.5", "required_providers": Nested(providers)},
        ),
        hcl.Block(
            "provider",
            ("aws",),
            {"region": Expr("var.region"), "default_tags": Nested({"tags": Expr("local.tags")})},
        ),
        hcl.variable(
            "region",
            {"description": "AWS region.", "type": Expr("string"), "default": params.region},
        ),
    ]


def tf_locals(params: RenderParams, azs: int, private: bool, **more: Any) -> hcl.Block:
    body: dict[str, Any] = {
        "name": params.name,
        "tags": {TAG_KEY: params.name, "managed-by": "fixedip render"},
        "azs": Expr(f"slice(data.aws_availability_zones.available.names, 0, {azs})"),
        "public_subnets": params.subnets(azs),
    }
    if private:
        body["private_subnets"] = params.subnets(PRIVATE_OFFSET + azs)[PRIVATE_OFFSET:]
    body.update(more)
    return hcl.Block("locals", (), body)


def tf_vpc(params: RenderParams, azs: int, private: bool) -> list[hcl.Block]:
    """VPC, Internet Gateway, `azs` public subnets with their route table; private
    subnets (without routes: the caller adds them) when `private`."""
    count = Expr("length(local.azs)")
    blocks = [
        hcl.data(
            "aws_availability_zones",
            "available",
            {"state": "available"},
            comments=(
                "checkov:skip=CKV_AWS_394:slice() takes the first zones by name; "
                "a zone added later does not change that choice",
            ),
        ),
        hcl.resource(
            "aws_vpc",
            "main",
            {
                "cidr_block": params.vpc_cidr,
                "enable_dns_support": True,
                "enable_dns_hostnames": True,
                "tags": {"Name": Expr("local.name")},
            },
            comments=(
                "checkov:skip=CKV2_AWS_11:VPC flow logs cost per GB; "
                "enable them where policy requires (docs/render.md)",
            ),
        ),
        hcl.resource(
            "aws_default_security_group",
            "main",
            {"vpc_id": Expr("aws_vpc.main.id")},
            doc="The default security group allows nothing (CIS 5.4).",
        ),
        hcl.resource(
            "aws_internet_gateway",
            "main",
            {"vpc_id": Expr("aws_vpc.main.id"), "tags": {"Name": Expr("local.name")}},
        ),
        hcl.resource(
            "aws_subnet",
            "public",
            {
                "count": count,
                "vpc_id": Expr("aws_vpc.main.id"),
                "cidr_block": Expr("local.public_subnets[count.index]"),
                "availability_zone": Expr("local.azs[count.index]"),
                "map_public_ip_on_launch": False,
                "tags": {"Name": "${local.name}-public-${count.index + 1}"},
            },
        ),
        hcl.resource(
            "aws_route_table",
            "public",
            {
                "vpc_id": Expr("aws_vpc.main.id"),
                "route": Nested(
                    {"cidr_block": "0.0.0.0/0", "gateway_id": Expr("aws_internet_gateway.main.id")}
                ),
                "tags": {"Name": "${local.name}-public"},
            },
        ),
        hcl.resource(
            "aws_route_table_association",
            "public",
            {
                "count": count,
                "subnet_id": Expr("aws_subnet.public[count.index].id"),
                "route_table_id": Expr("aws_route_table.public.id"),
            },
        ),
    ]
    if private:
        blocks.append(
            hcl.resource(
                "aws_subnet",
                "private",
                {
                    "count": count,
                    "vpc_id": Expr("aws_vpc.main.id"),
                    "cidr_block": Expr("local.private_subnets[count.index]"),
                    "availability_zone": Expr("local.azs[count.index]"),
                    "tags": {"Name": "${local.name}-private-${count.index + 1}"},
                },
            )
        )
    return blocks


# --- CloudFormation ---------------------------------------------------------------------


def cfn_header(params: RenderParams, option: str) -> str:
    return (
        f"Rendered by fixedip {__version__}: {params.command_line(option, 'cloudformation')}\n"
        "Deterministic output: the same command gives the same file. See docs/render.md."
    )


def cfn_tags(params: RenderParams, name: Any) -> list[dict[str, Any]]:
    return [
        {"Key": "Name", "Value": name},
        {"Key": TAG_KEY, "Value": params.name},
        {"Key": "managed-by", "Value": "fixedip render"},
    ]


def cfn_az(index: int) -> dict[str, Any]:
    return {"Fn::Select": [index, {"Fn::GetAZs": ""}]}


def cfn_vpc(params: RenderParams, azs: int, private: bool) -> dict[str, Any]:
    """Resources for the VPC, Internet Gateway, public subnets `PublicSubnet1..n` routed
    to it and, when `private`, `PrivateSubnet1..n` (routes added by the caller)."""
    name = params.name
    resources: dict[str, Any] = {
        "Vpc": {
            "Type": "AWS::EC2::VPC",
            "Properties": {
                "CidrBlock": params.vpc_cidr,
                "EnableDnsSupport": True,
                "EnableDnsHostnames": True,
                "Tags": cfn_tags(params, name),
            },
        },
        "InternetGateway": {
            "Type": "AWS::EC2::InternetGateway",
            "Properties": {"Tags": cfn_tags(params, name)},
        },
        "InternetGatewayAttachment": {
            "Type": "AWS::EC2::VPCGatewayAttachment",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "InternetGatewayId": {"Ref": "InternetGateway"},
            },
        },
        "PublicRouteTable": {
            "Type": "AWS::EC2::RouteTable",
            "Properties": {"VpcId": {"Ref": "Vpc"}, "Tags": cfn_tags(params, f"{name}-public")},
        },
        "PublicDefaultRoute": {
            "Type": "AWS::EC2::Route",
            "DependsOn": "InternetGatewayAttachment",
            "Properties": {
                "RouteTableId": {"Ref": "PublicRouteTable"},
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": {"Ref": "InternetGateway"},
            },
        },
    }
    public = params.subnets(azs)
    for i in range(azs):
        n = i + 1
        resources[f"PublicSubnet{n}"] = {
            "Type": "AWS::EC2::Subnet",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "CidrBlock": public[i],
                "AvailabilityZone": cfn_az(i),
                "MapPublicIpOnLaunch": False,
                "Tags": cfn_tags(params, f"{name}-public-{n}"),
            },
        }
        resources[f"PublicSubnet{n}RouteTableAssociation"] = {
            "Type": "AWS::EC2::SubnetRouteTableAssociation",
            "Properties": {
                "SubnetId": {"Ref": f"PublicSubnet{n}"},
                "RouteTableId": {"Ref": "PublicRouteTable"},
            },
        }
    if private:
        ranges = params.subnets(PRIVATE_OFFSET + azs)[PRIVATE_OFFSET:]
        for i in range(azs):
            n = i + 1
            resources[f"PrivateSubnet{n}"] = {
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": {"Ref": "Vpc"},
                    "CidrBlock": ranges[i],
                    "AvailabilityZone": cfn_az(i),
                    "Tags": cfn_tags(params, f"{name}-private-{n}"),
                },
            }
    return resources


def cfn_join(refs: list[str], attribute: str = "") -> dict[str, Any]:
    items: list[Any] = [{"Fn::GetAtt": [r, attribute]} if attribute else {"Ref": r} for r in refs]
    return {"Fn::Join": [",", items]}
