"""`fixedip-vm`: the fixedip gateway on a small Graviton instance whose Elastic IPs are
the fixed IPs.

Only the TLS listener (3129) is reachable: from `--client-cidr` (functions outside any
VPC cross the internet) and from the function security group (functions in the
private subnets). The plain listeners stay on the instance's loopback. Several fixed
IPs = secondary private addresses on the instance's network interface, one Elastic IP
each. No SSH: Session Manager (the SSM agent of Amazon Linux) gives a shell.

The builders here take an index so `fixedip-ha` (aws_ha) reuses them per gateway.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fixedip.plan.render import cfnyaml, hcl, userdata
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

OPTION = "fixedip-vm"
HTTPS_PORT = userdata.HTTPS_PORT
EGRESS_PORTS = (80, 443)  # package installs and vendors; edit to add SFTP and the like
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
ROOT_VOLUME_GB = 8
DEFAULT_ALLOW = "0.0.0.0/0:443"
FIRST_HOST = 10  # AWS reserves the first four addresses of a subnet; leave some room

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
    gateway's TLS listener out). The rule between them is separate: each names the other."""
    egress = [
        Nested(
            {
                "description": f"TCP {port} to vendors and package mirrors",
                "from_port": port,
                "to_port": port,
                "protocol": "tcp",
                "cidr_blocks": ["0.0.0.0/0"],
            }
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
                "ingress": Nested(
                    {
                        "description": "fixedip TLS listener, from the internet",
                        "from_port": HTTPS_PORT,
                        "to_port": HTTPS_PORT,
                        "protocol": "tcp",
                        "cidr_blocks": Expr("var.client_cidrs"),
                    }
                ),
                "egress": egress,
            },
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
        hcl.resource(
            "aws_vpc_security_group_ingress_rule",
            "gateway_from_function",
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


def private_ips(subnet_cidr: str, count: int) -> list[str]:
    """Fixed private addresses for a gateway: the primary, then the secondary ones.

    Chosen at render time (from the 11th address of the subnet on) so both languages
    name them without arithmetic, Elastic IPs can be pinned to each, and the in-VPC
    proxy URL is known before deployment.
    """
    network = ipaddress.ip_network(subnet_cidr)
    return [str(network.network_address + FIRST_HOST + i) for i in range(count)]


def tf_gateway(
    index: str,
    subnet: str,
    addresses: list[str],
    user_data: hcl.Heredoc,
    tags: dict[str, Any] | None = None,
    eips: int | None = None,
) -> list[hcl.Block]:
    """Instance (with `addresses`: primary, then secondary) and an Elastic IP on each of
    the first `eips` addresses (default: all) for one gateway; resource names end in
    `index` ("" for the single VM). Addresses without one are spare (floating EIPs)."""
    eips = len(addresses) if eips is None else eips
    suffix = f"_{index}" if index else ""
    label = f"${{local.name}}-gateway{index and '-' + index}"
    extra_tags = tags or {}
    instance: dict[str, Any] = {
        "ami": Expr("data.aws_ssm_parameter.al2023_arm64.value"),
        "instance_type": Expr("var.instance_type"),
        "iam_instance_profile": Expr("aws_iam_instance_profile.gateway.name"),
        "subnet_id": Expr(subnet),
        "vpc_security_group_ids": Expr("[aws_security_group.gateway.id]"),
        "private_ip": addresses[0],
    }
    if len(addresses) > 1:
        instance["secondary_private_ips"] = addresses[1:]
    instance.update(
        {
            "monitoring": True,
            "ebs_optimized": True,
            "user_data": user_data,
            "user_data_replace_on_change": True,
            "metadata_options": Nested(
                {
                    "http_endpoint": "enabled",
                    "http_tokens": "required",
                    "http_put_response_hop_limit": 1,
                }
            ),
            "root_block_device": Nested(
                {"volume_type": "gp3", "volume_size": ROOT_VOLUME_GB, "encrypted": True}
            ),
            "tags": {"Name": label, **extra_tags},
        }
    )
    return [
        hcl.resource("aws_instance", f"gateway{suffix}", instance),
        hcl.resource(
            "aws_eip",
            f"gateway{suffix}",
            {
                "count": eips,
                "domain": "vpc",
                "instance": Expr(f"aws_instance.gateway{suffix}.id"),
                "associate_with_private_ip": Expr(
                    f"{hcl.expression(addresses[:eips])}[count.index]"
                ),
                "tags": {"Name": f"{label}-${{count.index + 1}}", **extra_tags},
                "depends_on": Expr("[aws_internet_gateway.main]"),
            },
            doc="The fixed IPs of this gateway, one on each of its private addresses.",
        ),
    ]


def bootstrap_values_tf(params: RenderParams, ips: int) -> dict[str, str | Expr]:
    return {
        "NAME": params.name,
        "REGION": Expr("var.region"),
        "TLS_NAME": params.tls_name,
        "IPS": str(ips),
        "CLIENT_NAME": Expr("var.client_name"),
        "CLIENT_TOKEN_HASH": Expr("var.client_token_hash"),
        "ALLOW": Expr("var.allow"),
        "FIXEDIP_VERSION": params.fixedip_version,
    }


def terraform(params: RenderParams) -> str:
    user_data = userdata.for_terraform(bootstrap_values_tf(params, params.ips))
    addresses = private_ips(params.subnets(1)[0], params.ips)
    blocks = [
        *tf_preamble(params),
        *tf_inputs(params),
        tf_locals(params, params.azs, private=True),
        hcl.data("aws_ssm_parameter", "al2023_arm64", {"name": AMI_PARAMETER}),
        *tf_vpc(params, params.azs, private=True),
        *tf_gateway_role(),
        *tf_security_groups(),
        *tf_gateway("", "aws_subnet.public[0].id", addresses, user_data),
        *tf_outputs(["aws_eip.gateway"], addresses[0]),
    ]
    return hcl.dumps(blocks, header=tf_header(params, OPTION))


def tf_outputs(eips: list[str], private_ip: str) -> list[hcl.Block]:
    public = Expr(f"concat({', '.join(e + '[*].public_ip' for e in eips)})")
    return [
        hcl.output("fixed_ips", public, "The addresses vendors allowlist."),
        hcl.output(
            "proxy_url",
            "https://${var.client_name}:TOKEN@${" + eips[0] + "[0].public_ip}:3129",
            "FIXEDIP_URL for functions outside the VPC (TOKEN: the one behind client_token_hash).",
        ),
        hcl.output(
            "proxy_url_in_vpc",
            "https://${var.client_name}:TOKEN@" + private_ip + ":3129",
            "FIXEDIP_URL for functions in the private subnets.",
        ),
        hcl.output(
            "ca_certificate_parameter",
            "/fixedip/${local.name}/ca-pem",
            "SSM parameter holding the gateway's CA certificate (FIXEDIP_CA).",
        ),
        hcl.output(
            "lambda_vpc_config",
            {
                "subnet_ids": Expr("aws_subnet.private[*].id"),
                "security_group_ids": Expr("[aws_security_group.function.id]"),
            },
            "vpc_config for functions that reach the gateway privately.",
        ),
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


def cfn_bootstrap_values(params: RenderParams, ips: int) -> dict[str, Any]:
    return {
        "NAME": params.name,
        "REGION": {"Ref": "AWS::Region"},
        "TLS_NAME": params.tls_name,
        "IPS": str(ips),
        "CLIENT_NAME": {"Ref": "ClientName"},
        "CLIENT_TOKEN_HASH": {"Ref": "ClientTokenHash"},
        "ALLOW": {"Ref": "Allow"},
        "FIXEDIP_VERSION": params.fixedip_version,
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


def cfn_gateway(
    params: RenderParams,
    index: str,
    subnet: str,
    addresses: list[str],
    user_data: Any,
    extra_tags: list[dict[str, Any]] | None = None,
    eips: int | None = None,
) -> dict[str, Any]:
    """Instance and Elastic IPs of one gateway (`Gateway{index}...`); as `tf_gateway`,
    only the first `eips` addresses (default: all) get an Elastic IP here.

    One address: the instance names its subnet, group and private address directly and
    the Elastic IP names the instance (`InstanceId`: the forms moto honours). Several: the
    instance's network interface lists the addresses and each further Elastic IP is
    associated with its secondary address.
    """
    name = f"{params.name}-gateway{index and '-' + index}"
    tags = cfn_tags(params, name) + (extra_tags or [])
    instance_id = {"Ref": f"Gateway{index}Instance"}
    placement: dict[str, Any]
    if len(addresses) == 1:
        placement = {
            "SubnetId": {"Ref": subnet},
            "SecurityGroupIds": [{"Ref": "GatewaySecurityGroup"}],
            "PrivateIpAddress": addresses[0],
        }
    else:
        placement = {
            "NetworkInterfaces": [
                {
                    "DeviceIndex": "0",
                    "SubnetId": {"Ref": subnet},
                    "GroupSet": [{"Ref": "GatewaySecurityGroup"}],
                    "PrivateIpAddresses": [
                        {"PrivateIpAddress": address, "Primary": i == 0}
                        for i, address in enumerate(addresses)
                    ],
                }
            ]
        }
    resources: dict[str, Any] = {
        f"Gateway{index}Instance": {
            "Type": "AWS::EC2::Instance",
            "Properties": {
                "ImageId": {"Ref": "ImageId"},
                "InstanceType": {"Ref": "InstanceType"},
                "IamInstanceProfile": {"Ref": "GatewayInstanceProfile"},
                **placement,
                "Monitoring": True,
                "EbsOptimized": True,
                "MetadataOptions": {
                    "HttpEndpoint": "enabled",
                    "HttpTokens": "required",
                    "HttpPutResponseHopLimit": 1,
                },
                "BlockDeviceMappings": [
                    {
                        "DeviceName": "/dev/xvda",
                        "Ebs": {
                            "VolumeType": "gp3",
                            "VolumeSize": ROOT_VOLUME_GB,
                            "Encrypted": True,
                        },
                    }
                ],
                "UserData": user_data,
                "Tags": tags,
            },
        },
    }
    for i, address in enumerate(addresses[: len(addresses) if eips is None else eips]):
        n = i + 1
        eip: dict[str, Any] = {
            "Domain": "vpc",
            "Tags": cfn_tags(params, f"{name}-{n}") + (extra_tags or []),
        }
        if i == 0:
            eip["InstanceId"] = instance_id
        resources[f"Gateway{index}Eip{n}"] = {
            "Type": "AWS::EC2::EIP",
            "DependsOn": "InternetGatewayAttachment",
            "Properties": eip,
        }
        if i > 0:
            resources[f"Gateway{index}Eip{n}Association"] = {
                "Type": "AWS::EC2::EIPAssociation",
                "Properties": {
                    "AllocationId": {"Fn::GetAtt": [f"Gateway{index}Eip{n}", "AllocationId"]},
                    "InstanceId": instance_id,
                    "PrivateIpAddress": address,
                },
            }
    return resources


def cloudformation(params: RenderParams) -> str:
    user_data = userdata.for_cloudformation(cfn_bootstrap_values(params, params.ips))
    addresses = private_ips(params.subnets(1)[0], params.ips)
    resources = cfn_vpc(params, params.azs, private=True)
    resources.update(cfn_role(params))
    resources.update(cfn_security_groups(params))
    resources.update(cfn_gateway(params, "", "PublicSubnet1", addresses, user_data))
    eips = [f"GatewayEip{i + 1}" for i in range(params.ips)]
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"fixedip fixedip-vm: the fixedip gateway on {params.instance_type} "
        f"with {params.ips} Elastic IP(s), TLS listener only",
        "Parameters": cfn_parameters(params),
        "Resources": resources,
        "Outputs": cfn_outputs(params, eips, addresses[0]),
    }
    return cfnyaml.dumps(template, header=cfn_header(params, OPTION))


def cfn_outputs(params: RenderParams, eips: list[str], private_ip: str) -> dict[str, Any]:
    return {
        "FixedIps": {"Description": "The addresses vendors allowlist.", "Value": cfn_join(eips)},
        "ProxyUrl": {
            "Description": "FIXEDIP_URL for functions outside the VPC (TOKEN: the client's token).",
            "Value": {"Fn::Sub": "https://${ClientName}:TOKEN@${" + eips[0] + "}:3129"},
        },
        "ProxyUrlInVpc": {
            "Description": "FIXEDIP_URL for functions in the private subnets.",
            "Value": {"Fn::Sub": "https://${ClientName}:TOKEN@" + private_ip + ":3129"},
        },
        "CaCertificateParameter": {
            "Description": "SSM parameter holding the gateway's CA certificate (FIXEDIP_CA).",
            "Value": f"/fixedip/{params.name}/ca-pem",
        },
        "LambdaSubnetIds": {
            "Description": "SubnetIds for functions that reach the gateway privately.",
            "Value": cfn_join([f"PrivateSubnet{i + 1}" for i in range(params.azs)]),
        },
        "LambdaSecurityGroupId": {
            "Description": "SecurityGroupIds for those functions.",
            "Value": {"Ref": "FunctionSecurityGroup"},
        },
    }
