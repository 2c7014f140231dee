"""`eni-eips`: Elastic IPs on an existing function's Hyperplane ENIs (functions in a
public subnet; no NAT Gateway). For development: Lambda replaces the ENIs when the
function's subnets or security groups change, so the association has to be redone.

CloudFormation: a custom resource backed by a Lambda function whose code is
`fixedip.cloud.eni_resource` (with `eni.py` beside it, the layout that module expects),
written next to the template. The template uses the SAM transform so `CodeUri` can
point at that directory; `sam deploy` or `aws cloudformation package` uploads it.
Bump the `Generation` parameter to re-run the association after the ENIs changed.

Terraform: data-driven, no code. The function's VPC configuration names its subnets and
security groups; its ENIs are the Lambda ENIs there; one Elastic IP per ENI, associated
with `aws_eip_association`. Re-apply after the ENIs changed: each address keeps its
place in the list, so the allowlisted IPs stay the same.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fixedip.plan.render import Rendered, cfnyaml, hcl
from fixedip.plan.render.aws_network import cfn_header, tf_header, tf_preamble
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

OPTION = "eni-eips"
CODE_DIR = "eni_resource"
CODE_FILES = ("eni_resource.py", "eni.py")  # the handler and the logic it imports flat
LAMBDA_ENI_PREFIX = "AWS Lambda VPC ENI-"
TAG_FUNCTION = "fixedip:function"
TAG_ALLOCATED = "fixedip:allocated"
HANDLER_TIMEOUT_S = 900  # Lambda creates a function's ENIs in minutes; the handler waits
RUNTIME = "python3.12"


def _code() -> dict[str, bytes]:
    package = resources.files("fixedip.cloud")
    return {f"{CODE_DIR}/{name}": package.joinpath(name).read_bytes() for name in CODE_FILES}


def _statements(function_arn: Any, eip_arn: Any, eni_arn: Any, function: Any) -> list[Any]:
    """Least privilege for the handler: read the function and the network, and change
    only Elastic IPs tagged for this function (tags set when it allocates them)."""
    tagged = {"StringEquals": {f"aws:ResourceTag/{TAG_FUNCTION}": function}}
    return [
        {
            "Sid": "ReadFunction",
            "Effect": "Allow",
            "Action": ["lambda:GetFunctionConfiguration"],
            "Resource": function_arn,
        },
        {
            "Sid": "ReadNetwork",
            "Effect": "Allow",
            "Action": [
                "ec2:DescribeAddresses",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets",
            ],
            "Resource": "*",
        },
        {
            "Sid": "AllocateTagged",
            "Effect": "Allow",
            "Action": ["ec2:AllocateAddress", "ec2:CreateTags"],
            "Resource": eip_arn,
            "Condition": {"StringEquals": {f"aws:RequestTag/{TAG_FUNCTION}": function}},
        },
        {
            "Sid": "ChangeTagged",
            "Effect": "Allow",
            "Action": [
                "ec2:AssociateAddress",
                "ec2:DisassociateAddress",
                "ec2:ReleaseAddress",
                "ec2:DeleteTags",
            ],
            "Resource": eip_arn,
            "Condition": tagged,
        },
        {
            "Sid": "OntoTheFunctionsEnis",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": eni_arn,
        },
    ]


def cloudformation(params: RenderParams) -> Rendered:
    arn = "arn:${AWS::Partition}:SERVICE:${AWS::Region}:${AWS::AccountId}:"
    statements = _statements(
        {"Fn::Sub": arn.replace("SERVICE", "lambda") + "function:${FunctionName}"},
        {"Fn::Sub": arn.replace("SERVICE", "ec2") + "elastic-ip/*"},
        {"Fn::Sub": arn.replace("SERVICE", "ec2") + "network-interface/*"},
        {"Ref": "FunctionName"},
    )
    template: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": "fixedip eni-eips: Elastic IPs on a function's Hyperplane ENIs "
        "(package first: sam deploy, or aws cloudformation package)",
        "Parameters": {
            "FunctionName": {
                "Type": "String",
                "Default": params.function_name,
                "Description": "The VPC-attached function (in public subnets).",
            },
            "AllocationIds": {
                "Type": "CommaDelimitedList",
                "Default": "",
                "Description": "Elastic IPs to use (tag them "
                f"{TAG_FUNCTION}=FUNCTION); empty: allocate new ones.",
            },
            "Generation": {
                "Type": "String",
                "Default": "1",
                "Description": "Change to re-run the association (new ENIs).",
            },
        },
        "Conditions": {
            "AllocateNew": {"Fn::Equals": [{"Fn::Join": ["", {"Ref": "AllocationIds"}]}, ""]},
        },
        "Resources": {
            "EipAttacher": {
                "Type": "AWS::Serverless::Function",
                "Properties": {
                    "CodeUri": f"{CODE_DIR}/",
                    "Handler": "eni_resource.handler",
                    "Runtime": RUNTIME,
                    "Architectures": ["arm64"],
                    "MemorySize": 128,
                    "Timeout": HANDLER_TIMEOUT_S,
                    "Description": "fixedip: Elastic IPs on a function's Hyperplane ENIs",
                    "Policies": [{"Version": "2012-10-17", "Statement": statements}],
                    "Tags": {"fixedip:name": params.name, "managed-by": "fixedip render"},
                },
            },
            "FunctionEips": {
                "Type": "Custom::FunctionEips",
                "Properties": {
                    "ServiceToken": {"Fn::GetAtt": ["EipAttacher", "Arn"]},
                    "FunctionName": {"Ref": "FunctionName"},
                    "AllocationIds": {
                        "Fn::If": ["AllocateNew", {"Ref": "AWS::NoValue"}, {"Ref": "AllocationIds"}]
                    },
                    "Generation": {"Ref": "Generation"},
                },
            },
        },
        "Outputs": {
            "EgressIps": {
                "Description": "The function's fixed IPs (one per ENI).",
                "Value": {"Fn::GetAtt": ["FunctionEips", "EgressIps"]},
            },
            "AllocationIds": {
                "Description": "The Elastic IPs in use.",
                "Value": {"Fn::GetAtt": ["FunctionEips", "AllocationIds"]},
            },
        },
    }
    text = cfnyaml.dumps(template, header=cfn_header(params, OPTION) + "\n" + _PACKAGE_HELP)
    return Rendered({"template.yaml": text.encode(), **_code()}, "template.yaml")


_PACKAGE_HELP = """\
The custom resource's code is in eni_resource/ beside this file. Deploy with
  sam deploy --guided --template-file template.yaml
or
  aws cloudformation package --template-file template.yaml --s3-bucket BUCKET \\
    --output-template-file packaged.yaml
  aws cloudformation deploy --template-file packaged.yaml --stack-name fixedip-eips \\
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND"""


def terraform(params: RenderParams) -> str:
    blocks = [
        *tf_preamble(params),
        hcl.variable(
            "function_name",
            {
                "description": "The VPC-attached function (in public subnets).",
                "type": Expr("string"),
                "default": params.function_name,
            },
        ),
        hcl.Block(
            "locals",
            (),
            {
                "tags": {"fixedip:name": params.name, "managed-by": "fixedip render"},
                "eni_ids": Expr("sort(data.aws_network_interfaces.function.ids)"),
            },
        ),
        hcl.data("aws_lambda_function", "target", {"function_name": Expr("var.function_name")}),
        hcl.data(
            "aws_network_interfaces",
            "function",
            {
                "filter": [
                    Nested({"name": "description", "values": [f"{LAMBDA_ENI_PREFIX}*"]}),
                    Nested(
                        {
                            "name": "subnet-id",
                            "values": Expr(
                                "data.aws_lambda_function.target.vpc_config[0].subnet_ids"
                            ),
                        }
                    ),
                    Nested(
                        {
                            "name": "group-id",
                            "values": Expr(
                                "data.aws_lambda_function.target.vpc_config[0].security_group_ids"
                            ),
                        }
                    ),
                ],
            },
            doc="The function's Hyperplane ENIs: Lambda ENIs in its subnets with its groups.",
        ),
        hcl.resource(
            "aws_eip",
            "function",
            {
                "count": Expr("length(local.eni_ids)"),
                "domain": "vpc",
                "tags": {
                    TAG_FUNCTION: Expr("var.function_name"),
                    TAG_ALLOCATED: "true",
                    "Name": "${var.function_name}-${count.index + 1}",
                },
            },
            comments=(
                "checkov:skip=CKV2_AWS_19:associated with the function's Hyperplane ENIs "
                "by aws_eip_association below; there is no instance",
            ),
            doc="Tagged as `fixedip aws attach-eips` tags them, so `fixedip aws check` sees them.",
        ),
        hcl.resource(
            "aws_eip_association",
            "function",
            {
                "count": Expr("length(local.eni_ids)"),
                "allocation_id": Expr("aws_eip.function[count.index].id"),
                "network_interface_id": Expr("local.eni_ids[count.index]"),
            },
        ),
        hcl.output(
            "fixed_ips",
            Expr("aws_eip.function[*].public_ip"),
            "The function's fixed IPs (one per ENI).",
        ),
    ]
    return hcl.dumps(blocks, header=tf_header(params, OPTION))
