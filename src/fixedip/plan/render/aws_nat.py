"""`nat-gateway`: functions in private subnets leave through a NAT Gateway per AZ, each
with its own Elastic IPs (the fixed IPs to allowlist: `--ips` per AZ; the first is the
gateway's primary address, the others its secondary addresses).

Outputs are what the function's VPC configuration needs: the private subnets and a
security group that allows only outbound HTTPS.
"""

from __future__ import annotations

from typing import Any

from fixedip.plan.render import cfnyaml, hcl
from fixedip.plan.render.aws_network import (
    cfn_header,
    cfn_join,
    cfn_tags,
    cfn_vpc,
    tf_header,
    tf_locals,
    tf_preamble,
    tf_vpc,
)
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

OPTION = "nat-gateway"
EGRESS_PORT = 443


def _tf_nat_gateways(params: RenderParams) -> list[hcl.Block]:
    """An Elastic IP per NAT Gateway, plus `ips - 1` secondary ones each (more
    connections per destination: about 55,000 per address)."""
    count = Expr("length(local.azs)")
    extra = params.ips - 1
    gateway: dict[str, Any] = {
        "count": count,
        "allocation_id": Expr("aws_eip.nat[count.index].id"),
        "subnet_id": Expr("aws_subnet.public[count.index].id"),
    }
    blocks = [
        hcl.resource(
            "aws_eip",
            "nat",
            {
                "count": count,
                "domain": "vpc",
                "tags": {"Name": "${local.name}-nat-${count.index + 1}"},
            },
            doc="The fixed IPs: an Elastic IP per NAT Gateway (per AZ).",
        )
    ]
    if extra:
        blocks.append(
            hcl.resource(
                "aws_eip",
                "nat_secondary",
                {
                    "count": Expr(f"length(local.azs) * {extra}"),
                    "domain": "vpc",
                    "tags": {"Name": "${local.name}-nat-secondary-${count.index + 1}"},
                },
                doc=f"{extra} more per NAT Gateway, in AZ order.",
            )
        )
        gateway["secondary_allocation_ids"] = Expr(
            f"slice(aws_eip.nat_secondary[*].id, count.index * {extra}, "
            f"(count.index + 1) * {extra})"
        )
    gateway["tags"] = {"Name": "${local.name}-${count.index + 1}"}
    gateway["depends_on"] = Expr("[aws_internet_gateway.main]")
    blocks.append(hcl.resource("aws_nat_gateway", "main", gateway))
    return blocks


def terraform(params: RenderParams) -> str:
    azs = params.azs
    count = Expr("length(local.azs)")
    blocks = [
        *tf_preamble(params),
        hcl.variable(
            "function_name",
            {
                "description": "The Lambda function to attach (used in the printed command).",
                "type": Expr("string"),
                "default": params.function_name,
            },
        ),
        tf_locals(params, azs, private=True),
        *tf_vpc(params, azs, private=True),
        *_tf_nat_gateways(params),
        hcl.resource(
            "aws_route_table",
            "private",
            {
                "count": count,
                "vpc_id": Expr("aws_vpc.main.id"),
                "route": Nested(
                    {
                        "cidr_block": "0.0.0.0/0",
                        "nat_gateway_id": Expr("aws_nat_gateway.main[count.index].id"),
                    }
                ),
                "tags": {"Name": "${local.name}-private-${count.index + 1}"},
            },
        ),
        hcl.resource(
            "aws_route_table_association",
            "private",
            {
                "count": count,
                "subnet_id": Expr("aws_subnet.private[count.index].id"),
                "route_table_id": Expr("aws_route_table.private[count.index].id"),
            },
        ),
        hcl.resource(
            "aws_security_group",
            "function",
            {
                "name_prefix": "${local.name}-function-",
                "description": "Lambda functions that leave through the NAT Gateways",
                "vpc_id": Expr("aws_vpc.main.id"),
                "egress": Nested(
                    {
                        "description": "HTTPS to vendors, through the NAT Gateway",
                        "from_port": EGRESS_PORT,
                        "to_port": EGRESS_PORT,
                        "protocol": "tcp",
                        "cidr_blocks": ["0.0.0.0/0"],
                    }
                ),
            },
            comments=(
                "checkov:skip=CKV2_AWS_5:attached by the Lambda function's VPC configuration, "
                "outside this module",
            ),
        ),
        hcl.output(
            "fixed_ips",
            Expr(
                "concat(aws_eip.nat[*].public_ip, aws_eip.nat_secondary[*].public_ip)"
                if params.ips > 1
                else "aws_eip.nat[*].public_ip"
            ),
            "The addresses vendors allowlist (--ips per AZ).",
        ),
        hcl.output(
            "lambda_vpc_config",
            {
                "subnet_ids": Expr("aws_subnet.private[*].id"),
                "security_group_ids": Expr("[aws_security_group.function.id]"),
            },
            "vpc_config for aws_lambda_function.",
        ),
        hcl.output(
            "attach_command",
            "aws lambda update-function-configuration --function-name ${var.function_name} "
            '--vpc-config SubnetIds=${join(",", aws_subnet.private[*].id)},'
            "SecurityGroupIds=${aws_security_group.function.id}",
            "Attach an existing function to the private subnets.",
        ),
    ]
    return hcl.dumps(blocks, header=tf_header(params, OPTION))


def cloudformation(params: RenderParams) -> str:
    azs = params.azs
    resources = cfn_vpc(params, azs, private=True)
    eips: list[str] = []
    for i in range(azs):
        n = i + 1
        resources[f"NatEip{n}"] = {
            "Type": "AWS::EC2::EIP",
            "DependsOn": "InternetGatewayAttachment",
            "Properties": {"Domain": "vpc", "Tags": cfn_tags(params, f"{params.name}-nat-{n}")},
        }
        gateway: dict[str, Any] = {
            "AllocationId": {"Fn::GetAtt": [f"NatEip{n}", "AllocationId"]},
            "SubnetId": {"Ref": f"PublicSubnet{n}"},
        }
        secondary = [f"NatEip{n}Secondary{k}" for k in range(2, params.ips + 1)]
        for k, name in enumerate(secondary, start=2):
            resources[name] = {
                "Type": "AWS::EC2::EIP",
                "DependsOn": "InternetGatewayAttachment",
                "Properties": {
                    "Domain": "vpc",
                    "Tags": cfn_tags(params, f"{params.name}-nat-{n}-{k}"),
                },
            }
        if secondary:
            gateway["SecondaryAllocationIds"] = [
                {"Fn::GetAtt": [name, "AllocationId"]} for name in secondary
            ]
        gateway["Tags"] = cfn_tags(params, f"{params.name}-{n}")
        eips += [f"NatEip{n}", *secondary]
        resources[f"NatGateway{n}"] = {"Type": "AWS::EC2::NatGateway", "Properties": gateway}
        resources[f"PrivateRouteTable{n}"] = {
            "Type": "AWS::EC2::RouteTable",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "Tags": cfn_tags(params, f"{params.name}-private-{n}"),
            },
        }
        resources[f"PrivateDefaultRoute{n}"] = {
            "Type": "AWS::EC2::Route",
            "Properties": {
                "RouteTableId": {"Ref": f"PrivateRouteTable{n}"},
                "DestinationCidrBlock": "0.0.0.0/0",
                "NatGatewayId": {"Ref": f"NatGateway{n}"},
            },
        }
        resources[f"PrivateSubnet{n}RouteTableAssociation"] = {
            "Type": "AWS::EC2::SubnetRouteTableAssociation",
            "Properties": {
                "SubnetId": {"Ref": f"PrivateSubnet{n}"},
                "RouteTableId": {"Ref": f"PrivateRouteTable{n}"},
            },
        }
    resources["FunctionSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": "Lambda functions that leave through the NAT Gateways",
            "VpcId": {"Ref": "Vpc"},
            "SecurityGroupEgress": [
                {
                    "Description": "HTTPS to vendors, through the NAT Gateway",
                    "IpProtocol": "tcp",
                    "FromPort": EGRESS_PORT,
                    "ToPort": EGRESS_PORT,
                    "CidrIp": "0.0.0.0/0",
                }
            ],
            "Tags": cfn_tags(params, f"{params.name}-function"),
        },
    }
    private_subnets = [f"PrivateSubnet{i + 1}" for i in range(azs)]
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            f"fixedip nat-gateway: private subnets in {azs} AZ(s) leaving through a NAT "
            "Gateway with an Elastic IP per AZ"
        ),
        "Parameters": {
            "FunctionName": {
                "Type": "String",
                "Default": params.function_name,
                "Description": "The Lambda function to attach (used in the printed command).",
            }
        },
        "Resources": resources,
        "Outputs": {
            "FixedIps": {
                "Description": "The addresses vendors allowlist (--ips per AZ).",
                "Value": cfn_join(eips),
            },
            "LambdaSubnetIds": {
                "Description": "SubnetIds for the function's VpcConfig.",
                "Value": cfn_join(private_subnets),
            },
            "LambdaSecurityGroupId": {
                "Description": "SecurityGroupIds for the function's VpcConfig.",
                "Value": {"Ref": "FunctionSecurityGroup"},
            },
            "AttachCommand": {
                "Description": "Attach an existing function to the private subnets.",
                "Value": {
                    "Fn::Sub": [
                        "aws lambda update-function-configuration --function-name "
                        "${FunctionName} --vpc-config SubnetIds=${Subnets},"
                        "SecurityGroupIds=${FunctionSecurityGroup}",
                        {"Subnets": cfn_join(private_subnets)},
                    ]
                },
            },
        },
    }
    return cfnyaml.dumps(template, header=cfn_header(params, OPTION))
