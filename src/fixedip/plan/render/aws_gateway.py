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
from fixedip.plan.render.aws_access import (
    AMI_PARAMETER,
    cfn_parameters,
    cfn_role,
    cfn_security_groups,
    tf_gateway_role,
    tf_inputs,
    tf_security_groups,
)
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
ROOT_VOLUME_GB = 8
FIRST_HOST = 10  # AWS reserves the first four addresses of a subnet; leave some room

# --- Terraform ------------------------------------------------------------------------


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
