"""`global-accelerator`: two static anycast IPs in front of an existing Application Load
Balancer, for vendors that deliver webhooks only to an allowlisted address.

Global Accelerator's API lives in us-west-2: deploy the CloudFormation stack there
(the endpoint group names the ALB's own region). Terraform's provider handles this.
CloudFormation has no property for the accelerator's flow logs (`aws globalaccelerator
update-accelerator-attributes` sets them); Terraform sets them. Client IP preservation
is on, so the functions behind the ALB see the vendor's address and can check it
against the vendor's published ranges.
"""

from __future__ import annotations

from typing import Any

from fixedip.plan.render import cfnyaml, hcl
from fixedip.plan.render.aws_network import cfn_header, cfn_tags, tf_header, tf_preamble
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

OPTION = "global-accelerator"
PORT = 443
ALB_ARN_PATTERN = r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:loadbalancer/app/.+$"


def terraform(params: RenderParams) -> str:
    blocks = [
        *tf_preamble(params),
        hcl.variable(
            "alb_arn",
            {
                "description": "ARN of the Application Load Balancer to front.",
                "type": Expr("string"),
            },
        ),
        hcl.variable(
            "flow_logs_bucket",
            {
                "description": "S3 bucket for the accelerator's flow logs (yours, existing).",
                "type": Expr("string"),
            },
        ),
        hcl.Block(
            "locals",
            (),
            {
                "name": params.name,
                "tags": {"fixedip:name": params.name, "managed-by": "fixedip render"},
            },
        ),
        hcl.resource(
            "aws_globalaccelerator_accelerator",
            "main",
            {
                "name": Expr("local.name"),
                "ip_address_type": "IPV4",
                "enabled": True,
                "attributes": Nested(
                    {
                        "flow_logs_enabled": True,
                        "flow_logs_s3_bucket": Expr("var.flow_logs_bucket"),
                        "flow_logs_s3_prefix": "${local.name}/",
                    }
                ),
            },
        ),
        hcl.resource(
            "aws_globalaccelerator_listener",
            "https",
            {
                "accelerator_arn": Expr("aws_globalaccelerator_accelerator.main.id"),
                "protocol": "TCP",
                "client_affinity": "SOURCE_IP",
                "port_range": Nested({"from_port": PORT, "to_port": PORT}),
            },
        ),
        hcl.resource(
            "aws_globalaccelerator_endpoint_group",
            "alb",
            {
                "listener_arn": Expr("aws_globalaccelerator_listener.https.id"),
                "endpoint_group_region": Expr("var.region"),
                "health_check_protocol": "TCP",
                "health_check_port": PORT,
                "endpoint_configuration": Nested(
                    {
                        "endpoint_id": Expr("var.alb_arn"),
                        "weight": 100,
                        "client_ip_preservation_enabled": True,
                    }
                ),
            },
        ),
        hcl.output(
            "static_ips",
            Expr("aws_globalaccelerator_accelerator.main.ip_sets[0].ip_addresses"),
            "The static ingress IPs to give the vendor.",
        ),
        hcl.output(
            "dns_name",
            Expr("aws_globalaccelerator_accelerator.main.dns_name"),
            "The accelerator's DNS name.",
        ),
    ]
    return hcl.dumps(blocks, header=tf_header(params, OPTION))


def cloudformation(params: RenderParams) -> str:
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "fixedip global-accelerator: static ingress IPs in front of an ALB "
        "(deploy this stack in us-west-2)",
        "Parameters": {
            "AlbArn": {
                "Type": "String",
                "AllowedPattern": ALB_ARN_PATTERN,
                "Description": "ARN of the Application Load Balancer to front.",
            },
            "AlbRegion": {
                "Type": "String",
                "Default": params.region,
                "Description": "The ALB's region.",
            },
        },
        "Resources": {
            "Accelerator": {
                "Type": "AWS::GlobalAccelerator::Accelerator",
                "Properties": {
                    "Name": params.name,
                    "IpAddressType": "IPV4",
                    "Enabled": True,
                    "Tags": cfn_tags(params, params.name),
                },
            },
            "HttpsListener": {
                "Type": "AWS::GlobalAccelerator::Listener",
                "Properties": {
                    "AcceleratorArn": {"Ref": "Accelerator"},
                    "Protocol": "TCP",
                    "ClientAffinity": "SOURCE_IP",
                    "PortRanges": [{"FromPort": PORT, "ToPort": PORT}],
                },
            },
            "AlbEndpointGroup": {
                "Type": "AWS::GlobalAccelerator::EndpointGroup",
                "Properties": {
                    "ListenerArn": {"Ref": "HttpsListener"},
                    "EndpointGroupRegion": {"Ref": "AlbRegion"},
                    "HealthCheckProtocol": "TCP",
                    "HealthCheckPort": PORT,
                    "EndpointConfigurations": [
                        {
                            "EndpointId": {"Ref": "AlbArn"},
                            "Weight": 100,
                            "ClientIPPreservationEnabled": True,
                        }
                    ],
                },
            },
        },
        "Outputs": {
            "StaticIps": {
                "Description": "The static ingress IPs to give the vendor.",
                "Value": {"Fn::Join": [",", {"Fn::GetAtt": ["Accelerator", "Ipv4Addresses"]}]},
            },
            "DnsName": {
                "Description": "The accelerator's DNS name.",
                "Value": {"Fn::GetAtt": ["Accelerator", "DnsName"]},
            },
        },
    }
    return cfnyaml.dumps(template, header=cfn_header(params, OPTION))
