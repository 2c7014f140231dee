"""`fixedip-ha`: a fleet of gateways, one per AZ, that act as one identity pool.

Each gateway has its own Elastic IPs (`--ips`) and `--floating` spare private
addresses; the floating Elastic IPs belong to the fleet and are associated at run time
by whichever member holds their lease (fixedip's `[fleet.aws]`), so the set of public IPs
a vendor allowlists survives the loss of a machine. Shared state lives in a small
ElastiCache Redis (TLS in transit, AUTH token from Secrets Manager, reachable only from
the gateways). Only the TLS listener is exposed, as for `fixedip-vm`.

Least privilege: a gateway may call `ec2:AssociateAddress` only on Elastic IPs and
instances tagged `fixedip:fleet = <name>` (and network interfaces of the fleet's VPC).
"""

from __future__ import annotations

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
from fixedip.plan.render.aws_gateway import (
    bootstrap_values_tf,
    cfn_bootstrap_values,
    cfn_gateway,
    private_ips,
    tf_gateway,
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
from fixedip.plan.render.params import RenderError, RenderParams

OPTION = "fixedip-ha"
FLEET_TAG = "fixedip:fleet"
REDIS_PORT = 6379
REDIS_NODE_TYPE = "cache.t4g.micro"
REDIS_ENGINE_VERSION = "7.1"
REDIS_PASSWORD_LENGTH = 32


def _gateways(params: RenderParams) -> list[tuple[str, list[str]]]:
    """(index, private addresses) per gateway: its own first, then the spare ones."""
    if params.azs < 2:
        raise RenderError("fixedip-ha needs --azs 2 or more (one gateway per AZ)")
    subnets = params.subnets(params.azs)
    return [
        (str(n + 1), private_ips(subnets[n], params.ips + params.floating))
        for n in range(params.azs)
    ]


# --- Terraform ------------------------------------------------------------------------


def _tf_fleet_statements() -> list[dict[str, Any]]:
    arn = "arn:${data.aws_partition.current.partition}:ec2:${var.region}:"
    account = "${data.aws_caller_identity.current.account_id}:"
    return [
        {
            "Sid": "MoveTaggedEips",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": [arn + account + "elastic-ip/*", arn + account + "instance/*"],
            "Condition": {"StringEquals": {f"aws:ResourceTag/{FLEET_TAG}": "${local.name}"}},
        },
        {
            "Sid": "OntoTheFleetsInterfaces",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": arn + account + "network-interface/*",
            "Condition": {"ArnEquals": {"ec2:Vpc": Expr("aws_vpc.main.arn")}},
        },
        {
            "Sid": "ReadAddresses",
            "Effect": "Allow",
            "Action": ["ec2:DescribeAddresses"],
            "Resource": "*",
        },
        {
            "Sid": "RedisPassword",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": Expr("aws_secretsmanager_secret.redis.arn"),
        },
    ]


def _tf_redis() -> list[hcl.Block]:
    return [
        hcl.resource(
            "random_password",
            "redis",
            {"length": REDIS_PASSWORD_LENGTH, "special": False},
        ),
        hcl.resource(
            "aws_secretsmanager_secret",
            "redis",
            {
                "name_prefix": "${local.name}-redis-",
                "description": "AUTH token of the fleet's Redis",
            },
            comments=(
                "checkov:skip=CKV_AWS_149:encrypted with the AWS managed key; "
                "a customer key adds cost and a key policy to maintain",
                "checkov:skip=CKV2_AWS_57:rotating a Redis AUTH token needs a rotation "
                "function and a coordinated restart of the fleet",
            ),
        ),
        hcl.resource(
            "aws_secretsmanager_secret_version",
            "redis",
            {
                "secret_id": Expr("aws_secretsmanager_secret.redis.id"),
                "secret_string": Expr("random_password.redis.result"),
            },
        ),
        hcl.resource(
            "aws_elasticache_subnet_group",
            "fleet",
            {"name": "${local.name}-fleet", "subnet_ids": Expr("aws_subnet.private[*].id")},
        ),
        hcl.resource(
            "aws_security_group",
            "redis",
            {
                "name_prefix": "${local.name}-redis-",
                "description": "fixedip fleet Redis: from the gateways only",
                "vpc_id": Expr("aws_vpc.main.id"),
                "ingress": Nested(
                    {
                        "description": "Redis (TLS) from the gateways",
                        "from_port": REDIS_PORT,
                        "to_port": REDIS_PORT,
                        "protocol": "tcp",
                        "security_groups": Expr("[aws_security_group.gateway.id]"),
                    }
                ),
            },
        ),
        hcl.resource(
            "aws_vpc_security_group_egress_rule",
            "gateway_to_redis",
            {
                "security_group_id": Expr("aws_security_group.gateway.id"),
                "description": "fixedip fleet Redis",
                "referenced_security_group_id": Expr("aws_security_group.redis.id"),
                "ip_protocol": "tcp",
                "from_port": REDIS_PORT,
                "to_port": REDIS_PORT,
            },
        ),
        hcl.resource(
            "aws_elasticache_replication_group",
            "fleet",
            {
                "replication_group_id": "${local.name}-fleet",
                "description": "fixedip fleet state (limits, quarantines, leases)",
                "engine": "redis",
                "engine_version": REDIS_ENGINE_VERSION,
                "node_type": REDIS_NODE_TYPE,
                "num_cache_clusters": 2,
                "automatic_failover_enabled": True,
                "multi_az_enabled": True,
                "port": REDIS_PORT,
                "subnet_group_name": Expr("aws_elasticache_subnet_group.fleet.name"),
                "security_group_ids": Expr("[aws_security_group.redis.id]"),
                "at_rest_encryption_enabled": True,
                "transit_encryption_enabled": True,
                "auth_token": Expr("random_password.redis.result"),
                "auto_minor_version_upgrade": True,
                "snapshot_retention_limit": 1,
            },
            comments=(
                "checkov:skip=CKV_AWS_191:encrypted at rest with the AWS managed key; "
                "the fleet store holds counters and leases, no customer data",
            ),
            doc="A small Redis in two AZs: the fleet's limits, quarantines and EIP leases.",
        ),
    ]


def terraform(params: RenderParams) -> str:
    gateways = _gateways(params)
    # The same order in all three lists: floating EIP i goes to spare address i.
    floating_ids = 'join(" ", aws_eip.floating[*].allocation_id)'
    floating_publics = 'join(" ", aws_eip.floating[*].public_ip)'
    blocks = [
        *tf_preamble(params, {"random": {"source": "hashicorp/random", "version": ">= 3.5"}}),
        *tf_inputs(params),
        tf_locals(params, params.azs, private=True),
        hcl.data("aws_ssm_parameter", "al2023_arm64", {"name": AMI_PARAMETER}),
        *tf_vpc(params, params.azs, private=True),
        *tf_gateway_role(_tf_fleet_statements()),
        *tf_security_groups(),
        *_tf_redis(),
        hcl.resource(
            "aws_eip",
            "floating",
            {
                "count": params.floating,
                "domain": "vpc",
                "tags": {
                    "Name": "${local.name}-floating-${count.index + 1}",
                    FLEET_TAG: Expr("local.name"),
                },
            },
            comments=(
                "checkov:skip=CKV2_AWS_19:a floating address is associated at run time by "
                "the gateway that holds its lease, never by Terraform",
            ),
            doc="The fleet's floating fixed IPs: fixedip moves them to a healthy gateway.",
        ),
    ]
    for index, addresses in gateways:
        values = {
            **bootstrap_values_tf(params, params.ips),
            "REDIS_HOST": Expr("aws_elasticache_replication_group.fleet.primary_endpoint_address"),
            "REDIS_SECRET": Expr("aws_secretsmanager_secret.redis.arn"),
            "FLOATING_PRIVATE_IPS": " ".join(addresses[params.ips :]),
            "FLOATING_EIPS": Expr(floating_ids),
            "FLOATING_PUBLIC_IPS": Expr(floating_publics),
        }
        blocks += tf_gateway(
            index,
            f"aws_subnet.public[{int(index) - 1}].id",
            addresses,
            userdata.for_terraform(values),
            tags={FLEET_TAG: Expr("local.name")},
            eips=params.ips,
        )
    own = ", ".join(f"aws_eip.gateway_{index}[*].public_ip" for index, _ in gateways)
    blocks += [
        hcl.output(
            "fixed_ips",
            Expr(f"concat({own}, aws_eip.floating[*].public_ip)"),
            "Every address the fleet may leave from: give the vendor all of them.",
        ),
        hcl.output(
            "floating_ips", Expr("aws_eip.floating[*].public_ip"), "The floating addresses."
        ),
        hcl.output(
            "proxy_urls",
            [
                "https://${var.client_name}:TOKEN@${aws_eip.gateway_"
                + index
                + "[0].public_ip}:3129"
                for index, _ in gateways
            ],
            "FIXEDIP_URL (comma-separated) for functions outside the VPC.",
        ),
        hcl.output(
            "redis_endpoint",
            Expr("aws_elasticache_replication_group.fleet.primary_endpoint_address"),
            "The fleet store (TLS, AUTH token in Secrets Manager).",
        ),
        hcl.output(
            "lambda_vpc_config",
            {
                "subnet_ids": Expr("aws_subnet.private[*].id"),
                "security_group_ids": Expr("[aws_security_group.function.id]"),
            },
            "vpc_config for functions that reach the gateways privately.",
        ),
    ]
    return hcl.dumps(blocks, header=tf_header(params, OPTION))


# --- CloudFormation ---------------------------------------------------------------------


def _cfn_fleet_statements(params: RenderParams) -> list[dict[str, Any]]:
    arn = "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:"
    return [
        {
            "Sid": "MoveTaggedEips",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": [{"Fn::Sub": arn + "elastic-ip/*"}, {"Fn::Sub": arn + "instance/*"}],
            "Condition": {"StringEquals": {f"aws:ResourceTag/{FLEET_TAG}": params.name}},
        },
        {
            "Sid": "OntoTheFleetsInterfaces",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": {"Fn::Sub": arn + "network-interface/*"},
            "Condition": {"ArnEquals": {"ec2:Vpc": {"Fn::Sub": arn + "vpc/${Vpc}"}}},
        },
        {
            "Sid": "ReadAddresses",
            "Effect": "Allow",
            "Action": ["ec2:DescribeAddresses"],
            "Resource": "*",
        },
        {
            "Sid": "RedisPassword",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": {"Ref": "RedisAuthToken"},
        },
    ]


def _cfn_redis(params: RenderParams) -> dict[str, Any]:
    private = [{"Ref": f"PrivateSubnet{n + 1}"} for n in range(params.azs)]
    return {
        "RedisAuthToken": {
            "Type": "AWS::SecretsManager::Secret",
            "Properties": {
                "Description": "AUTH token of the fleet's Redis",
                "GenerateSecretString": {
                    "PasswordLength": REDIS_PASSWORD_LENGTH,
                    "ExcludePunctuation": True,
                },
                "Tags": cfn_tags(params, f"{params.name}-redis"),
            },
        },
        "RedisSubnetGroup": {
            "Type": "AWS::ElastiCache::SubnetGroup",
            "Properties": {"Description": "fixedip fleet store", "SubnetIds": private},
        },
        "RedisSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "fixedip fleet Redis: from the gateways only",
                "VpcId": {"Ref": "Vpc"},
                "SecurityGroupIngress": [
                    {
                        "Description": "Redis (TLS) from the gateways",
                        "IpProtocol": "tcp",
                        "FromPort": REDIS_PORT,
                        "ToPort": REDIS_PORT,
                        "SourceSecurityGroupId": {
                            "Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]
                        },
                    }
                ],
                # No egress: replaces the default allow-all rule.
                "SecurityGroupEgress": [
                    {"Description": "nothing", "IpProtocol": "-1", "CidrIp": "127.0.0.1/32"}
                ],
                "Tags": cfn_tags(params, f"{params.name}-redis"),
            },
        },
        "GatewayToRedisEgress": {
            "Type": "AWS::EC2::SecurityGroupEgress",
            "Properties": {
                "GroupId": {"Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]},
                "Description": "fixedip fleet Redis",
                "IpProtocol": "tcp",
                "FromPort": REDIS_PORT,
                "ToPort": REDIS_PORT,
                "DestinationSecurityGroupId": {"Fn::GetAtt": ["RedisSecurityGroup", "GroupId"]},
            },
        },
        "Redis": {
            "Type": "AWS::ElastiCache::ReplicationGroup",
            "Properties": {
                "ReplicationGroupDescription": "fixedip fleet state (limits, quarantines, leases)",
                "Engine": "redis",
                "EngineVersion": REDIS_ENGINE_VERSION,
                "CacheNodeType": REDIS_NODE_TYPE,
                "NumCacheClusters": 2,
                "AutomaticFailoverEnabled": True,
                "MultiAZEnabled": True,
                "Port": REDIS_PORT,
                "CacheSubnetGroupName": {"Ref": "RedisSubnetGroup"},
                "SecurityGroupIds": [{"Fn::GetAtt": ["RedisSecurityGroup", "GroupId"]}],
                "AtRestEncryptionEnabled": True,
                "TransitEncryptionEnabled": True,
                "AuthToken": {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthToken}}}"},
                "AutoMinorVersionUpgrade": True,
                "SnapshotRetentionLimit": 1,
                "Tags": cfn_tags(params, f"{params.name}-fleet"),
            },
        },
    }


def cloudformation(params: RenderParams) -> str:
    gateways = _gateways(params)
    fleet_tag = [{"Key": FLEET_TAG, "Value": params.name}]
    resources = cfn_vpc(params, params.azs, private=True)
    resources.update(cfn_role(params, _cfn_fleet_statements(params)))
    resources.update(cfn_security_groups(params))
    resources.update(_cfn_redis(params))
    floating = [f"FloatingEip{n + 1}" for n in range(params.floating)]
    for n, name in enumerate(floating):
        resources[name] = {
            "Type": "AWS::EC2::EIP",
            "DependsOn": "InternetGatewayAttachment",
            "Properties": {
                "Domain": "vpc",
                "Tags": cfn_tags(params, f"{params.name}-floating-{n + 1}") + fleet_tag,
            },
        }
    # The same order in all three lists: floating EIP i goes to spare address i.
    floating_ids = {"Fn::Join": [" ", [{"Fn::GetAtt": [f, "AllocationId"]} for f in floating]]}
    floating_publics = {"Fn::Join": [" ", [{"Fn::GetAtt": [f, "PublicIp"]} for f in floating]]}
    own: list[str] = []
    for index, addresses in gateways:
        values = {
            **cfn_bootstrap_values(params, params.ips),
            "REDIS_HOST": {"Fn::GetAtt": ["Redis", "PrimaryEndPoint.Address"]},
            "REDIS_SECRET": {"Ref": "RedisAuthToken"},
            "FLOATING_PRIVATE_IPS": " ".join(addresses[params.ips :]),
            "FLOATING_EIPS": floating_ids,
            "FLOATING_PUBLIC_IPS": floating_publics,
        }
        resources.update(
            cfn_gateway(
                params,
                index,
                f"PublicSubnet{index}",
                addresses,
                userdata.for_cloudformation(values),
                extra_tags=fleet_tag,
                eips=params.ips,
            )
        )
        own += [f"Gateway{index}Eip{i + 1}" for i in range(params.ips)]
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"fixedip fixedip-ha: {len(gateways)} gateways in {params.azs} AZs with "
        f"{params.ips} Elastic IP(s) each, {params.floating} floating, and the fleet's Redis",
        "Parameters": cfn_parameters(params),
        "Resources": resources,
        "Outputs": {
            "FixedIps": {
                "Description": "Every address the fleet may leave from: give the vendor all.",
                "Value": cfn_join(own + floating),
            },
            "FloatingIps": {"Description": "The floating addresses.", "Value": cfn_join(floating)},
            "ProxyUrls": {
                "Description": "FIXEDIP_URL (comma-separated) for functions outside the VPC.",
                "Value": {
                    "Fn::Join": [
                        ",",
                        [
                            {"Fn::Sub": "https://${ClientName}:TOKEN@${Gateway" + i + "Eip1}:3129"}
                            for i, _ in gateways
                        ],
                    ]
                },
            },
            "RedisEndpoint": {
                "Description": "The fleet store (TLS, AUTH token in Secrets Manager).",
                "Value": {"Fn::GetAtt": ["Redis", "PrimaryEndPoint.Address"]},
            },
            "LambdaSubnetIds": {
                "Description": "SubnetIds for functions that reach the gateways privately.",
                "Value": cfn_join([f"PrivateSubnet{n + 1}" for n in range(params.azs)]),
            },
            "LambdaSecurityGroupId": {
                "Description": "SecurityGroupIds for those functions.",
                "Value": {"Ref": "FunctionSecurityGroup"},
            },
        },
    }
    return cfnyaml.dumps(template, header=cfn_header(params, OPTION))
