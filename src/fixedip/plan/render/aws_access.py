"""Who may reach and call what around the gateway VMs: the template inputs for the
client the bootstrap writes, the security groups (only the TLS listener is exposed) and
the gateways' IAM role. Shared by `fixedip-vm` and `fixedip-ha`."""

from __future__ import annotations

from typing import Any

from fixedip.plan.render import hcl, userdata
from fixedip.plan.render.aws_network import cfn_tags
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

HTTPS_PORT = userdata.HTTPS_PORT
EGRESS_PORTS = (80, 443)  # package installs and vendors; edit to add SFTP and the like
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
DEFAULT_ALLOW = "0.0.0.0/0:443"

# --- Terraform ------------------------------------------------------------------------


def tf_inputs(params: RenderParams) -> list[hcl.Block]:
    """Variables the bootstrap reads; the token hash and allow rules can change later."""
    return [
        hcl.variable(
            "instance_type",
            {
                "description": "Gateway instance type (arm64).",
                "type": Expr("string"),
                "default": params.instance_type,
            },
        ),
        hcl.variable(
            "client_name",
            {
                "description": "The client (proxy user) the functions authenticate as.",
                "type": Expr("string"),
                "default": "functions",
                "validation": Nested(
                    {
                        "condition": Expr(
                            f'can(regex("{_tf_regex(userdata.CLIENT_NAME_PATTERN)}", '
                            "var.client_name))"
                        ),
                        "error_message": "Letters, digits, '-' and '_' only.",
                    }
                ),
            },
        ),
        hcl.variable(
            "client_token_hash",
            {
                "description": "Output of `fixedip token hash`; empty: no client yet.",
                "type": Expr("string"),
                "default": "",
                "validation": Nested(
                    {
                        "condition": Expr(
                            f'can(regex("{_tf_regex(userdata.TOKEN_HASH_PATTERN)}", '
                            "var.client_token_hash))"
                        ),
                        "error_message": "Expected the value `fixedip token hash` prints.",
                    }
                ),
            },
        ),
        hcl.variable(
            "allow",
            {
                "description": "The client's allow rules, space-separated (host:port, CIDR:port).",
                "type": Expr("string"),
                "default": DEFAULT_ALLOW,
                "validation": Nested(
                    {
                        "condition": Expr(
                            f'can(regex("{_tf_regex(userdata.ALLOW_PATTERN)}", var.allow))'
                        ),
                        "error_message": "Allow rules may not contain quotes or shell characters.",
                    }
                ),
            },
        ),
        hcl.variable(
            "client_cidrs",
            {
                "description": "Who may reach the TLS listener (3129) across the internet.",
                "type": Expr("list(string)"),
                "default": list(params.client_cidrs),
            },
        ),
    ]


def _tf_regex(pattern: str) -> str:
    return pattern.replace("\\", "\\\\")


def tf_gateway_role(extra_statements: list[dict[str, Any]] | None = None) -> list[hcl.Block]:
    """The gateways' role: Session Manager, publish the CA certificate, and whatever
    `extra_statements` add (the fleet's)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "PublishCaCertificate",
            "Effect": "Allow",
            "Action": ["ssm:PutParameter"],
            "Resource": "arn:${data.aws_partition.current.partition}:ssm:${var.region}:"
            "${data.aws_caller_identity.current.account_id}:parameter/fixedip/${local.name}/*",
        },
        *(extra_statements or []),
    ]
    blocks = [
        hcl.data("aws_partition", "current", {}),
        hcl.data("aws_caller_identity", "current", {}),
        hcl.resource(
            "aws_iam_role",
            "gateway",
            {
                "name_prefix": "${local.name}-gateway-",
                "assume_role_policy": Expr(
                    "jsonencode("
                    + _hcl_json(
                        {
                            "Version": "2012-10-17",
                            "Statement": [
                                {
                                    "Effect": "Allow",
                                    "Action": "sts:AssumeRole",
                                    "Principal": {"Service": "ec2.amazonaws.com"},
                                }
                            ],
                        }
                    )
                    + ")"
                ),
            },
        ),
        hcl.resource(
            "aws_iam_role_policy_attachment",
            "ssm_core",
            {
                "role": Expr("aws_iam_role.gateway.name"),
                "policy_arn": "arn:${data.aws_partition.current.partition}:iam::aws:policy/"
                "AmazonSSMManagedInstanceCore",
            },
            doc="Session Manager instead of SSH: no port 22 anywhere.",
        ),
        hcl.resource(
            "aws_iam_role_policy",
            "gateway",
            {
                "name": "fixedip-gateway",
                "role": Expr("aws_iam_role.gateway.id"),
                "policy": Expr(
                    "jsonencode("
                    + _hcl_json({"Version": "2012-10-17", "Statement": statements})
                    + ")"
                ),
            },
        ),
        hcl.resource(
            "aws_iam_instance_profile",
            "gateway",
            {"name_prefix": "${local.name}-gateway-", "role": Expr("aws_iam_role.gateway.name")},
        ),
    ]
    return blocks


def _hcl_json(value: Any) -> str:
    """An HCL object/tuple expression (for jsonencode) from Python data."""
    return hcl.expression(value, depth=1)


def tf_security_groups() -> list[hcl.Block]:
    """The gateway's group (TLS listener in, web out) and the functions' group (only the
    gateway's TLS listener out).

    The gateway's rules are separate resources, none inline: Terraform's inline rules
    own the whole rule set of a group and would delete the rules other resources add
    (the one from the functions' group, and the fleet's rule to its Redis)."""
    rules: list[hcl.Block] = [
        hcl.resource(
            "aws_vpc_security_group_ingress_rule",
            "gateway_tls_from_clients",
            {
                "for_each": Expr("toset(var.client_cidrs)"),
                "security_group_id": Expr("aws_security_group.gateway.id"),
                "description": "fixedip TLS listener, from the internet",
                "cidr_ipv4": Expr("each.value"),
                "ip_protocol": "tcp",
                "from_port": HTTPS_PORT,
                "to_port": HTTPS_PORT,
            },
        ),
        hcl.resource(
            "aws_vpc_security_group_ingress_rule",
            "gateway_tls_from_functions",
            {
                "security_group_id": Expr("aws_security_group.gateway.id"),
                "description": "fixedip TLS listener, from functions in the VPC",
                "referenced_security_group_id": Expr("aws_security_group.function.id"),
                "ip_protocol": "tcp",
                "from_port": HTTPS_PORT,
                "to_port": HTTPS_PORT,
            },
        ),
    ]
    rules += [
        hcl.resource(
            "aws_vpc_security_group_egress_rule",
            f"gateway_tcp_{port}",
            {
                "security_group_id": Expr("aws_security_group.gateway.id"),
                "description": f"TCP {port} to vendors and package mirrors",
                "cidr_ipv4": "0.0.0.0/0",
                "ip_protocol": "tcp",
                "from_port": port,
                "to_port": port,
            },
        )
        for port in EGRESS_PORTS
    ]
    return [
        hcl.resource(
            "aws_security_group",
            "gateway",
            {
                "name_prefix": "${local.name}-gateway-",
                "description": "fixedip gateway: the TLS listener only",
                "vpc_id": Expr("aws_vpc.main.id"),
            },
            doc="No inline rules: they are the aws_vpc_security_group_*_rule resources below.",
        ),
        hcl.resource(
            "aws_security_group",
            "function",
            {
                "name_prefix": "${local.name}-function-",
                "description": "Functions in the private subnets: only the gateway",
                "vpc_id": Expr("aws_vpc.main.id"),
                "egress": Nested(
                    {
                        "description": "fixedip TLS listener",
                        "from_port": HTTPS_PORT,
                        "to_port": HTTPS_PORT,
                        "protocol": "tcp",
                        "security_groups": Expr("[aws_security_group.gateway.id]"),
                    }
                ),
            },
            comments=(
                "checkov:skip=CKV2_AWS_5:attached by the function's VPC configuration, "
                "outside this module",
            ),
        ),
        *rules,
    ]


# --- CloudFormation ---------------------------------------------------------------------


def cfn_parameters(params: RenderParams) -> dict[str, Any]:
    return {
        "ImageId": {
            "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
            "Default": AMI_PARAMETER,
            "Description": "Amazon Linux 2023 (arm64) image, from its public SSM parameter.",
        },
        "InstanceType": {
            "Type": "String",
            "Default": params.instance_type,
            "Description": "Gateway instance type (arm64).",
        },
        "ClientName": {
            "Type": "String",
            "Default": "functions",
            "AllowedPattern": userdata.CLIENT_NAME_PATTERN,
            "Description": "The client (proxy user) the functions authenticate as.",
        },
        "ClientTokenHash": {
            "Type": "String",
            "Default": "",
            "NoEcho": True,
            "AllowedPattern": userdata.TOKEN_HASH_PATTERN,
            "Description": "Output of `fixedip token hash`; empty: no client yet.",
        },
        "Allow": {
            "Type": "String",
            "Default": DEFAULT_ALLOW,
            "AllowedPattern": userdata.ALLOW_PATTERN,
            "Description": "The client's allow rules, space-separated.",
        },
    }


def cfn_role(
    params: RenderParams, fleet_statements: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    statements = [
        {
            "Sid": "PublishCaCertificate",
            "Effect": "Allow",
            "Action": ["ssm:PutParameter"],
            "Resource": {
                "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:"
                f"parameter/fixedip/{params.name}/*"
            },
        },
        *(fleet_statements or []),
    ]
    return {
        "GatewayRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                        }
                    ],
                },
                "ManagedPolicyArns": [
                    {
                        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/"
                        "AmazonSSMManagedInstanceCore"
                    }
                ],
                "Policies": [
                    {
                        "PolicyName": "fixedip-gateway",
                        "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                    }
                ],
                "Tags": cfn_tags(params, f"{params.name}-gateway"),
            },
        },
        "GatewayInstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [{"Ref": "GatewayRole"}]},
        },
    }


def cfn_security_groups(params: RenderParams) -> dict[str, Any]:
    """As `tf_security_groups`. The functions' egress is inline (which also removes the
    default allow-all egress rule); the gateway's ingress from them is a separate rule."""
    return {
        "GatewaySecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "fixedip gateway: the TLS listener only",
                "VpcId": {"Ref": "Vpc"},
                "SecurityGroupIngress": [
                    {
                        "Description": "fixedip TLS listener, from the internet",
                        "IpProtocol": "tcp",
                        "FromPort": HTTPS_PORT,
                        "ToPort": HTTPS_PORT,
                        "CidrIp": cidr,
                    }
                    for cidr in params.client_cidrs
                ],
                "SecurityGroupEgress": [
                    {
                        "Description": f"TCP {port} to vendors and package mirrors",
                        "IpProtocol": "tcp",
                        "FromPort": port,
                        "ToPort": port,
                        "CidrIp": "0.0.0.0/0",
                    }
                    for port in EGRESS_PORTS
                ],
                "Tags": cfn_tags(params, f"{params.name}-gateway"),
            },
        },
        "FunctionSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Functions in the private subnets: only the gateway",
                "VpcId": {"Ref": "Vpc"},
                "SecurityGroupEgress": [
                    {
                        "Description": "fixedip TLS listener",
                        "IpProtocol": "tcp",
                        "FromPort": HTTPS_PORT,
                        "ToPort": HTTPS_PORT,
                        "DestinationSecurityGroupId": {
                            "Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]
                        },
                    }
                ],
                "Tags": cfn_tags(params, f"{params.name}-function"),
            },
        },
        "GatewayIngressFromFunctions": {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Properties": {
                "GroupId": {"Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]},
                "Description": "fixedip TLS listener, from functions in the VPC",
                "IpProtocol": "tcp",
                "FromPort": HTTPS_PORT,
                "ToPort": HTTPS_PORT,
                "SourceSecurityGroupId": {"Fn::GetAtt": ["FunctionSecurityGroup", "GroupId"]},
            },
        },
    }
