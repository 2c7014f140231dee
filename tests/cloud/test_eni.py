"""fixedip.cloud.eni against a real moto server: attach idempotently, drift, dry run, detach."""

from __future__ import annotations

import pytest

from fixedip.cloud import eni
from tests.cloud.conftest import World


def attach(world: World, function: str, **kwargs: object) -> eni.Result:
    return eni.attach(world.lam, world.ec2, function, **kwargs)  # type: ignore[arg-type]


def state(world: World, function: str) -> eni.EgressState:
    return eni.read_state(world.lam, world.ec2, function)


def test_allocate_gives_every_hyperplane_eni_a_tagged_elastic_ip(aws: World) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    result = attach(aws, "billing", allocate=True)
    assert sorted(result.egress) == sorted(enis)
    for eni_id, public_ip in result.egress.items():
        assert aws.public_ip_of(eni_id) == public_ip
    addresses = aws.addresses()
    assert len(addresses) == 2
    for address in addresses:
        tags = {t["Key"]: t["Value"] for t in address["Tags"]}
        assert tags == {"fixedip:function": "billing", "fixedip:allocated": "true"}
    assert sorted(result.allocation_ids) == sorted(a["AllocationId"] for a in addresses)


def test_second_run_changes_nothing(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    first = attach(aws, "billing", allocate=True)
    second = attach(aws, "billing", allocate=True)
    assert second.actions == []
    assert second.egress == first.egress
    assert len(aws.addresses()) == 2


def test_dry_run_plans_but_changes_nothing(aws: World) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    result = attach(aws, "billing", allocate=True, dry_run=True)
    assert len(result.actions) == 2
    assert all(a.startswith("would associate a new Elastic IP with eni-") for a in result.actions)
    assert aws.addresses() == []
    assert all(aws.public_ip_of(e) is None for e in enis)


def test_given_allocation_ids_are_used_and_tagged_but_not_marked_as_allocated(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    mine = [aws.ec2.allocate_address(Domain="vpc") for _ in range(2)]
    result = attach(aws, "billing", eips=[m["AllocationId"] for m in mine])
    assert sorted(result.egress.values()) == sorted(m["PublicIp"] for m in mine)
    for address in aws.addresses():
        assert {t["Key"]: t["Value"] for t in address["Tags"]} == {"fixedip:function": "billing"}


def test_without_a_source_of_addresses_it_says_what_to_pass(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    with pytest.raises(eni.CloudError, match=r"2 ENIs of billing need an Elastic IP.*--allocate"):
        attach(aws, "billing")
    assert aws.addresses() == []


def test_an_address_on_someone_elses_interface_is_refused(aws: World) -> None:
    aws.function("billing")
    aws.lambda_enis("billing")
    other = aws.ec2.create_network_interface(SubnetId=aws.subnets[0], Description="a server")
    taken = aws.ec2.allocate_address(Domain="vpc")
    aws.ec2.associate_address(
        AllocationId=taken["AllocationId"],
        NetworkInterfaceId=other["NetworkInterface"]["NetworkInterfaceId"],
    )
    with pytest.raises(eni.CloudError, match="disassociate it first"):
        attach(aws, "billing", eips=[taken["AllocationId"]], allocate=True)


def test_security_group_change_is_drift_and_attach_moves_the_same_ips(aws: World) -> None:
    aws.function("billing")
    old = aws.lambda_enis("billing")
    before = attach(aws, "billing", allocate=True)
    assert not state(aws, "billing").missing and not state(aws, "billing").stale
    # Lambda makes new ENIs for the new (subnet, security groups) combination.
    new_group = aws.ec2.create_security_group(GroupName="fn2", Description="x", VpcId=aws.vpc_id)
    group = new_group["GroupId"]
    aws.lam.update_function_configuration(
        FunctionName="billing", VpcConfig={"SubnetIds": aws.subnets, "SecurityGroupIds": [group]}
    )
    new = [aws.lambda_eni("billing", subnet, [group]) for subnet in aws.subnets]
    drift = state(aws, "billing")
    assert sorted(e.eni_id for e in drift.missing) == sorted(new)
    assert sorted(ip.eni_id for ip in drift.stale) == sorted(old)
    after = attach(aws, "billing")  # no --allocate needed: the stale addresses move
    assert sorted(after.egress) == sorted(new)
    assert sorted(after.egress.values()) == sorted(before.egress.values())
    assert len(aws.addresses()) == 2
    healed = state(aws, "billing")
    assert not healed.missing and not healed.stale


def test_enis_shared_with_another_function_count_and_other_combinations_do_not(aws: World) -> None:
    aws.function("billing")
    shared = aws.lambda_eni("reports", aws.subnets[0])  # same subnet + group: shared by Lambda
    other_group = aws.ec2.create_security_group(GroupName="o", Description="o", VpcId=aws.vpc_id)
    foreign = aws.lambda_eni("reports", aws.subnets[1], [other_group["GroupId"]])
    current = state(aws, "billing")
    assert [e.eni_id for e in current.enis] == [shared]
    assert [e.eni_id for e in current.other_enis] == [foreign]


def test_function_without_enis_yet_is_a_clear_error(aws: World) -> None:
    aws.function("billing")
    with pytest.raises(eni.CloudError, match="has no Hyperplane ENIs"):
        attach(aws, "billing", allocate=True)


def test_function_outside_a_vpc_is_a_clear_error(aws: World) -> None:
    aws.lam.create_function(
        FunctionName="public",
        Runtime="python3.12",
        Role=aws.iam_role,
        Handler="index.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
    )
    with pytest.raises(eni.CloudError, match="not attached to a VPC"):
        state(aws, "public")


def test_unknown_function_error_carries_the_aws_code(aws: World) -> None:
    with pytest.raises(
        eni.CloudError, match="get_function_configuration: ResourceNotFoundException"
    ):
        state(aws, "nope")


def test_detach_releases_what_fixedip_allocated_and_untags_the_rest(aws: World) -> None:
    aws.function("billing")
    enis = aws.lambda_enis("billing")
    mine = aws.ec2.allocate_address(Domain="vpc")
    attach(aws, "billing", eips=[mine["AllocationId"]], allocate=True)
    dry = eni.detach(aws.ec2, "billing", dry_run=True)
    assert dry.actions and all(a.startswith("would ") for a in dry.actions)
    assert len(aws.addresses()) == 2
    eni.detach(aws.ec2, "billing")
    remaining = aws.addresses()
    assert [a["AllocationId"] for a in remaining] == [mine["AllocationId"]]
    assert not remaining[0].get("Tags") and not remaining[0].get("NetworkInterfaceId")
    assert all(aws.public_ip_of(e) is None for e in enis)


def test_an_address_already_on_one_of_the_functions_enis_is_accepted(aws: World) -> None:
    aws.function("billing")
    first, second = aws.lambda_enis("billing")
    manual = aws.ec2.allocate_address(Domain="vpc")
    aws.ec2.associate_address(AllocationId=manual["AllocationId"], NetworkInterfaceId=first)
    result = attach(aws, "billing", eips=[manual["AllocationId"]], allocate=True)
    assert result.egress[first] == manual["PublicIp"]
    assert len(result.actions) == 1 and second in result.actions[0]
