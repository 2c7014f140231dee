"""What the templates promise, read from the rendered files (hcl2 / YAML): the parts a
moto deployment cannot show (egress rules, subnet flags, managed policies) and the
options moto does not run (Global Accelerator, GCP)."""

from __future__ import annotations

from typing import Any

import hcl2
import pytest
import yaml

from fixedip.plan.render import RenderError, RenderParams, render

from .cases import CASES, case_id, render_case


def cfn(option: str, **params: Any) -> dict[str, Any]:
    rendered = render(option, "cloudformation", RenderParams(**params))
    return yaml.safe_load(rendered.files["template.yaml"])


def tf(option: str, **params: Any) -> dict[str, Any]:
    """Resources by (type, name), python-hcl2's view of the file."""
    doc = hcl2.loads(render(option, "terraform", RenderParams(**params)).files["main.tf"].decode())
    resources: dict[str, Any] = {}
    for entry in doc["resource"]:
        for kind, named in entry.items():
            for name, body in named.items():
                resources[(kind.strip('"'), name.strip('"'))] = body
    return resources


def resources_of(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == kind}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rendering_twice_gives_the_same_bytes(case: tuple[str, str, dict[str, Any]]) -> None:
    assert render_case(case).files == render_case(case).files


def test_subnets_never_give_instances_public_addresses() -> None:
    for option in ("nat-gateway", "fixedip-vm"):
        subnets = resources_of(cfn(option), "AWS::EC2::Subnet")
        assert all(not props.get("MapPublicIpOnLaunch", False) for props in subnets.values())
        assert tf(option)[("aws_subnet", "public")]["map_public_ip_on_launch"] is False


def test_nat_gateway_function_group_allows_only_https_out() -> None:
    (group,) = resources_of(cfn("nat-gateway"), "AWS::EC2::SecurityGroup").values()
    assert [
        (r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["SecurityGroupEgress"]
    ] == [("tcp", 443, 443)]
    (egress,) = tf("nat-gateway")[("aws_security_group", "function")]["egress"]
    assert (egress["from_port"], egress["to_port"], egress["protocol"]) == (443, 443, '"tcp"')


def test_nat_gateways_carry_the_extra_ips_as_secondary_addresses() -> None:
    template = cfn("nat-gateway", azs=2, ips=3)
    gateways = resources_of(template, "AWS::EC2::NatGateway")
    assert gateways["NatGateway2"]["SecondaryAllocationIds"] == [
        {"Fn::GetAtt": ["NatEip2Secondary2", "AllocationId"]},
        {"Fn::GetAtt": ["NatEip2Secondary3", "AllocationId"]},
    ]
    assert len(resources_of(template, "AWS::EC2::EIP")) == 6
    nat = tf("nat-gateway", azs=2, ips=3)[("aws_nat_gateway", "main")]
    assert nat["secondary_allocation_ids"] == (
        "${slice(aws_eip.nat_secondary[*].id, count.index * 2, (count.index + 1) * 2)}"
    )


def test_gateway_vm_exposes_only_the_tls_listener_and_no_ssh() -> None:
    template = cfn("fixedip-vm", client_cidrs=("198.18.0.0/15",))
    groups = resources_of(template, "AWS::EC2::SecurityGroup")
    ingress = groups["GatewaySecurityGroup"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"], r["CidrIp"]) for r in ingress] == [
        (3129, 3129, "198.18.0.0/15")
    ]
    (extra,) = resources_of(template, "AWS::EC2::SecurityGroupIngress").values()
    assert (extra["FromPort"], extra["ToPort"]) == (3129, 3129)
    egress = groups["GatewaySecurityGroup"]["SecurityGroupEgress"]
    assert sorted(r["FromPort"] for r in egress) == [80, 443]
    function_egress = groups["FunctionSecurityGroup"]["SecurityGroupEgress"]
    assert [(r["FromPort"], r["ToPort"]) for r in function_egress] == [(3129, 3129)]
    resources = tf("fixedip-vm")
    assert "ingress" not in resources[("aws_security_group", "gateway")]
    ingress = {k: v for k, v in resources.items() if k[0] == "aws_vpc_security_group_ingress_rule"}
    assert {name for _, name in ingress} == {
        "gateway_tls_from_clients",
        "gateway_tls_from_functions",
    }
    assert all((r["from_port"], r["to_port"]) == (3129, 3129) for r in ingress.values())
    egress = [v for k, v in resources.items() if k[0] == "aws_vpc_security_group_egress_rule"]
    assert sorted(r["from_port"] for r in egress) == [80, 443]


def test_gateway_vm_requires_imdsv2_and_encrypts_its_disk() -> None:
    (instance,) = resources_of(cfn("fixedip-vm"), "AWS::EC2::Instance").values()
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    body = tf("fixedip-vm")[("aws_instance", "gateway")]
    assert body["metadata_options"][0]["http_tokens"] == '"required"'
    assert body["root_block_device"][0]["encrypted"] is True


def test_gateway_vm_role_has_session_manager_and_only_its_ca_parameter() -> None:
    role = cfn("fixedip-vm", name="billing-gw")["Resources"]["GatewayRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    (statement,) = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["ssm:PutParameter"]
    assert statement["Resource"]["Fn::Sub"].endswith(":parameter/fixedip/billing-gw/*")


def test_several_ips_put_an_elastic_ip_on_each_private_address() -> None:
    template = cfn("fixedip-vm", ips=3)
    (instance,) = resources_of(template, "AWS::EC2::Instance").values()
    addresses = instance["NetworkInterfaces"][0]["PrivateIpAddresses"]
    assert addresses == [
        {"PrivateIpAddress": "10.42.0.10", "Primary": True},
        {"PrivateIpAddress": "10.42.0.11", "Primary": False},
        {"PrivateIpAddress": "10.42.0.12", "Primary": False},
    ]
    eips = resources_of(template, "AWS::EC2::EIP")
    assert len(eips) == 3
    assert eips["GatewayEip1"]["InstanceId"] == {"Ref": "GatewayInstance"}
    associations = resources_of(template, "AWS::EC2::EIPAssociation")
    assert sorted(a["PrivateIpAddress"] for a in associations.values()) == [
        "10.42.0.11",
        "10.42.0.12",
    ]
    instance_tf = tf("fixedip-vm", ips=3)[("aws_instance", "gateway")]
    assert instance_tf["secondary_private_ips"] == ['"10.42.0.11"', '"10.42.0.12"']


def test_cloud_nat_uses_only_its_reserved_addresses_and_all_traffic_egress() -> None:
    resources = tf("cloud-nat", ips=2)
    nat = resources[("google_compute_router_nat", "main")]
    assert nat["nat_ip_allocate_option"] == '"MANUAL_ONLY"'
    assert resources[("google_compute_address", "nat")]["count"] == 2
    service = resources[("google_cloud_run_v2_service", "function")]
    access = service["template"][0]["vpc_access"][0]
    assert access["egress"] == '"ALL_TRAFFIC"'
    assert "network_interfaces" in access


def test_cloud_nat_with_a_connector_routes_the_service_through_it() -> None:
    resources = tf("cloud-nat", gcp_egress="connector")
    connector = resources[("google_vpc_access_connector", "main")]
    assert connector["ip_cidr_range"] == '"10.42.255.240/28"'
    access = resources[("google_cloud_run_v2_service", "function")]["template"][0]["vpc_access"][0]
    assert access["connector"] == "${google_vpc_access_connector.main.id}"
    assert access["egress"] == '"ALL_TRAFFIC"'


def test_global_accelerator_fronts_the_alb_with_client_ip_preservation() -> None:
    group = resources_of(cfn("global-accelerator"), "AWS::GlobalAccelerator::EndpointGroup")
    (props,) = group.values()
    assert props["EndpointConfigurations"] == [
        {"EndpointId": {"Ref": "AlbArn"}, "Weight": 100, "ClientIPPreservationEnabled": True}
    ]
    endpoint = tf("global-accelerator")[("aws_globalaccelerator_endpoint_group", "alb")]
    assert endpoint["endpoint_configuration"][0]["client_ip_preservation_enabled"] is True


def test_fleet_may_associate_addresses_only_on_its_tagged_eips_and_instances() -> None:
    template = cfn("fixedip-ha", name="payments")
    role = template["Resources"]["GatewayRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    associate = [s for s in statements if "ec2:AssociateAddress" in s["Action"]]
    for statement in associate:
        assert statement["Action"] == ["ec2:AssociateAddress"]
        assert statement["Resource"] != "*"
        assert statement["Condition"]
    (tagged,) = [s for s in associate if s["Sid"] == "MoveTaggedEips"]
    assert tagged["Condition"] == {"StringEquals": {"aws:ResourceTag/fixedip:fleet": "payments"}}
    assert [r["Fn::Sub"].rsplit(":", 1)[1] for r in tagged["Resource"]] == [
        "elastic-ip/*",
        "instance/*",
    ]
    tf_role = tf("fixedip-ha", name="payments")[("aws_iam_role_policy", "gateway")]
    assert '"aws:ResourceTag/fixedip:fleet" = "${local.name}"' in tf_role["policy"]


def test_fleet_gateways_and_every_fleet_eip_carry_the_fleet_tag() -> None:
    template = cfn("fixedip-ha", ips=2, floating=2)
    fleet_tag = {"Key": "fixedip:fleet", "Value": "fixedip"}
    instances = resources_of(template, "AWS::EC2::Instance")
    assert sorted(instances) == ["Gateway1Instance", "Gateway2Instance"]
    assert all(fleet_tag in props["Tags"] for props in instances.values())
    eips = resources_of(template, "AWS::EC2::EIP")
    assert len(eips) == 2 * 2 + 2
    assert all(fleet_tag in props["Tags"] for props in eips.values())
    floating = {k: v for k, v in eips.items() if k.startswith("Floating")}
    assert len(floating) == 2
    assert not any("InstanceId" in props for props in floating.values())


def test_fleet_gateways_keep_spare_addresses_for_the_floating_eips() -> None:
    template = cfn("fixedip-ha", ips=1, floating=2)
    instance = template["Resources"]["Gateway1Instance"]["Properties"]
    addresses = [
        a["PrivateIpAddress"] for a in instance["NetworkInterfaces"][0]["PrivateIpAddresses"]
    ]
    assert addresses == ["10.42.0.10", "10.42.0.11", "10.42.0.12"]
    associated = resources_of(template, "AWS::EC2::EIPAssociation")
    assert associated == {}  # one own address: its EIP names the instance; spares stay free


def test_fleet_redis_is_encrypted_authenticated_and_reachable_only_from_the_gateways() -> None:
    template = cfn("fixedip-ha")
    (redis,) = resources_of(template, "AWS::ElastiCache::ReplicationGroup").values()
    assert redis["TransitEncryptionEnabled"] is True
    assert redis["AtRestEncryptionEnabled"] is True
    assert redis["AuthToken"] == {"Fn::Sub": "{{resolve:secretsmanager:${RedisAuthToken}}}"}
    group = template["Resources"]["RedisSecurityGroup"]["Properties"]
    (ingress,) = group["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": ["GatewaySecurityGroup", "GroupId"]}
    gateway = template["Resources"]["GatewaySecurityGroup"]["Properties"]
    assert [(r["FromPort"], r["CidrIp"]) for r in gateway["SecurityGroupIngress"]] == [
        (3129, "0.0.0.0/0")
    ]


def test_fleet_needs_two_availability_zones() -> None:
    with pytest.raises(RenderError, match="fixedip-ha needs --azs 2 or more"):
        render("fixedip-ha", "terraform", RenderParams(azs=1))
