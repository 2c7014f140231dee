"""Elastic IPs on a Lambda function's Hyperplane ENIs: find them, attach idempotently, find drift.

A VPC-attached function leaves the VPC through Hyperplane ENIs, one per (subnet, security
groups) combination, shared by every function with the same combination and described
"AWS Lambda VPC ENI-<function>-...". In a public subnet an Elastic IP on each ENI gives
the function fixed egress IPs without a NAT. Lambda replaces the ENIs when the subnets
or security groups change (and adds ENIs beyond 65,000 connections each), so the work is
to keep every current ENI carrying an EIP and to notice when one does not.

Every EIP fixedip puts on a function's ENIs is tagged `fixedip:function = <name>`
(`fixedip:allocated = true` when fixedip allocated it), so a later run reuses the same
addresses: a stale ENI's EIP moves to its replacement and the vendor's allowlist still
holds.

Only boto3 and the standard library: this module is also packaged into the
CloudFormation custom resource (`eni_resource.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LAMBDA_ENI_PREFIX = "AWS Lambda VPC ENI-"
TAG_FUNCTION = "fixedip:function"
TAG_ALLOCATED = "fixedip:allocated"


class CloudError(Exception):
    """A cloud call failed or the function cannot have EIPs; `str()` says what to do."""


@dataclass(frozen=True)
class FunctionNetwork:
    """Where a function's Hyperplane ENIs live: its subnets and its security-group set."""

    name: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]


@dataclass(frozen=True)
class LambdaEni:
    eni_id: str
    subnet_id: str
    security_group_ids: tuple[str, ...]
    private_ip: str
    description: str
    public_ip: str | None = None
    allocation_id: str | None = None  # None: no EIP (or only an ephemeral public IP)


@dataclass(frozen=True)
class ElasticIp:
    allocation_id: str
    public_ip: str
    eni_id: str | None
    association_id: str | None = None
    allocated_by_fixedip: bool = False
    function: str | None = None


@dataclass(frozen=True)
class EgressState:
    """The function's current ENIs, other Lambda ENIs in its VPC, and its tagged EIPs."""

    network: FunctionNetwork
    enis: tuple[LambdaEni, ...]
    eips: tuple[ElasticIp, ...]
    other_enis: tuple[LambdaEni, ...] = ()

    @property
    def missing(self) -> tuple[LambdaEni, ...]:
        """Current ENIs without an Elastic IP: egress from them is not fixed."""
        return tuple(e for e in self.enis if e.allocation_id is None)

    @property
    def stale(self) -> tuple[ElasticIp, ...]:
        """The function's tagged EIPs that are not on one of its current ENIs."""
        current = {e.eni_id for e in self.enis}
        return tuple(ip for ip in self.eips if ip.eni_id not in current)

    @property
    def egress_ips(self) -> tuple[str, ...]:
        return tuple(e.public_ip for e in self.enis if e.allocation_id and e.public_ip)


@dataclass(frozen=True)
class Assignment:
    """One ENI to get one EIP. `eip` None: allocate a new address."""

    eni: LambdaEni
    eip: ElasticIp | None
    reason: str

    def describe(self) -> str:
        what = (
            f"{self.eip.public_ip} ({self.eip.allocation_id})" if self.eip else "a new Elastic IP"
        )
        return f"associate {what} with {self.eni.eni_id} in {self.eni.subnet_id}: {self.reason}"


@dataclass
class Result:
    """What a run did (or, in a dry run, would do) and the egress IPs afterwards."""

    actions: list[str] = field(default_factory=list)
    egress: dict[str, str] = field(default_factory=dict)  # eni id -> public IP
    allocation_ids: list[str] = field(default_factory=list)


def _call(client: Any, operation: str, **kwargs: Any) -> Any:
    """A boto3 call whose failures become one readable `CloudError`."""
    try:
        return getattr(client, operation)(**kwargs)
    except Exception as exc:  # botocore's errors share no importable base worth requiring
        raise CloudError(f"{operation}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """AWS's error code and message, or the exception's text (no credentials, no endpoint)."""
    error = getattr(exc, "response", {}).get("Error", {})
    if error:
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}"
    return str(exc)


def function_network(lambda_client: Any, function: str) -> FunctionNetwork:
    """The function's subnets and security groups; a `CloudError` if it has no VPC."""
    config = _call(lambda_client, "get_function_configuration", FunctionName=function)
    vpc = config.get("VpcConfig") or {}
    subnets = tuple(sorted(vpc.get("SubnetIds") or ()))
    groups = tuple(sorted(vpc.get("SecurityGroupIds") or ()))
    if not subnets or not groups:
        raise CloudError(
            f"function {function} is not attached to a VPC: it has no Hyperplane ENIs to give "
            "Elastic IPs (attach it to public subnets first)"
        )
    return FunctionNetwork(config.get("FunctionName", function), subnets, groups)


def _paged(client: Any, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        paginator = client.get_paginator(operation)
        return [item for page in paginator.paginate(**kwargs) for item in page.get(key, [])]
    except Exception as exc:
        raise CloudError(f"{operation}: {_reason(exc)}") from None


def _eni(raw: dict[str, Any]) -> LambdaEni:
    association = raw.get("Association") or {}
    return LambdaEni(
        eni_id=raw["NetworkInterfaceId"],
        subnet_id=raw.get("SubnetId", ""),
        security_group_ids=tuple(sorted(g["GroupId"] for g in raw.get("Groups", []))),
        private_ip=raw.get("PrivateIpAddress", ""),
        description=raw.get("Description", ""),
        public_ip=association.get("PublicIp") or None,
        allocation_id=association.get("AllocationId") or None,
    )


def _eip(raw: dict[str, Any]) -> ElasticIp:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    return ElasticIp(
        allocation_id=raw["AllocationId"],
        public_ip=raw.get("PublicIp", ""),
        eni_id=raw.get("NetworkInterfaceId") or None,
        association_id=raw.get("AssociationId") or None,
        allocated_by_fixedip=tags.get(TAG_ALLOCATED) == "true",
        function=tags.get(TAG_FUNCTION),
    )


def tagged_eips(ec2: Any, function: str) -> tuple[ElasticIp, ...]:
    """The EIPs fixedip has put on (or allocated for) this function's ENIs."""
    raw = _call(
        ec2, "describe_addresses", Filters=[{"Name": f"tag:{TAG_FUNCTION}", "Values": [function]}]
    )
    return tuple(_eip(a) for a in raw.get("Addresses", []))


def read_state(lambda_client: Any, ec2: Any, function: str) -> EgressState:
    """The function's network, its current Lambda ENIs and its tagged EIPs (read-only)."""
    network = function_network(lambda_client, function)
    subnets = _call(ec2, "describe_subnets", SubnetIds=list(network.subnet_ids))["Subnets"]
    vpcs = sorted({s["VpcId"] for s in subnets})
    raw = _paged(
        ec2,
        "describe_network_interfaces",
        "NetworkInterfaces",
        Filters=[
            {"Name": "vpc-id", "Values": vpcs},
            {"Name": "description", "Values": [f"{LAMBDA_ENI_PREFIX}*"]},
        ],
    )
    current: list[LambdaEni] = []
    other: list[LambdaEni] = []
    for eni in sorted((_eni(r) for r in raw), key=lambda e: (e.subnet_id, e.eni_id)):
        matches = (
            eni.subnet_id in network.subnet_ids
            and eni.security_group_ids == network.security_group_ids
        )
        (current if matches else other).append(eni)
    return EgressState(network, tuple(current), tagged_eips(ec2, function), tuple(other))


def plan_attach(
    state: EgressState, explicit: list[ElasticIp] | None = None, allocate: bool = False
) -> list[Assignment]:
    """Which EIP goes on which ENI that lacks one, without calling AWS.

    Sources, in order: the addresses given explicitly (`--eip`), the function's tagged
    EIPs that sit unassociated, its tagged EIPs on stale ENIs (moved, so the allowlisted
    IP survives a subnet or security-group change), then new addresses if `allocate`.
    An ENI that already has an EIP is left alone, so a second run plans nothing.
    """
    explicit = list(explicit or [])
    current = {e.eni_id for e in state.enis}
    for eip in explicit:
        if eip.eni_id and eip.eni_id not in current and eip.function != state.network.name:
            raise CloudError(
                f"{eip.allocation_id} ({eip.public_ip}) is associated with {eip.eni_id}, "
                "which is not one of this function's ENIs: disassociate it first or pick another"
            )
    in_use = {e.allocation_id for e in state.enis if e.allocation_id}
    given = {ip.allocation_id for ip in explicit}
    stale = [ip for ip in state.stale if ip.allocation_id not in given]
    pool = [(ip, "given with --eip") for ip in explicit if ip.allocation_id not in in_use]
    pool += [(ip, "an unused address of this function") for ip in stale if ip.eni_id is None]
    pool += [(ip, f"moved from stale ENI {ip.eni_id}") for ip in stale if ip.eni_id is not None]
    assignments: list[Assignment] = []
    for eni in state.missing:
        if pool:
            eip, reason = pool.pop(0)
            assignments.append(Assignment(eni, eip, reason))
        elif allocate:
            assignments.append(Assignment(eni, None, "allocated (--allocate)"))
        else:
            lacking = len(state.missing) - len(assignments)
            raise CloudError(
                f"{lacking} ENI{'s' if lacking != 1 else ''} of {state.network.name} need an "
                "Elastic IP and none is free: pass --allocate, or --eip eipalloc-... for each"
            )
    return assignments


def describe_eips(ec2: Any, allocation_ids: list[str]) -> list[ElasticIp]:
    """The given allocation ids, in the order given (a `CloudError` for unknown ones)."""
    if not allocation_ids:
        return []
    raw = _call(ec2, "describe_addresses", AllocationIds=allocation_ids)["Addresses"]
    found = {a["AllocationId"]: _eip(a) for a in raw}
    return [found[a] for a in allocation_ids]


def attach(
    lambda_client: Any,
    ec2: Any,
    function: str,
    *,
    eips: list[str] | None = None,
    allocate: bool = False,
    dry_run: bool = False,
) -> Result:
    """Give every current ENI of `function` an Elastic IP; idempotent; `dry_run` only plans."""
    state = read_state(lambda_client, ec2, function)
    if not state.enis:
        raise CloudError(
            f"function {function} has no Hyperplane ENIs in {', '.join(state.network.subnet_ids)} "
            "yet: Lambda creates them when the function is created or its VPC settings change; "
            "wait until the function is Active and run again"
        )
    assignments = plan_attach(state, describe_eips(ec2, eips or []), allocate)
    result = Result(
        egress={e.eni_id: e.public_ip for e in state.enis if e.allocation_id and e.public_ip}
    )
    for assignment in assignments:
        result.actions.append(("would " if dry_run else "") + assignment.describe())
        if dry_run:
            continue
        eip = assignment.eip
        tags = [{"Key": TAG_FUNCTION, "Value": state.network.name}]
        if eip is None:
            tags.append({"Key": TAG_ALLOCATED, "Value": "true"})
            raw = _call(
                ec2,
                "allocate_address",
                Domain="vpc",
                TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}],
            )
            eip = ElasticIp(
                raw["AllocationId"], raw["PublicIp"], None, None, True, state.network.name
            )
        elif eip.function != state.network.name:
            _call(ec2, "create_tags", Resources=[eip.allocation_id], Tags=tags)
        _call(
            ec2,
            "associate_address",
            AllocationId=eip.allocation_id,
            NetworkInterfaceId=assignment.eni.eni_id,
            PrivateIpAddress=assignment.eni.private_ip,
            AllowReassociation=eip.eni_id is not None,
        )
        result.egress[assignment.eni.eni_id] = eip.public_ip
    if not dry_run:
        result.allocation_ids = sorted(
            ip.allocation_id for ip in tagged_eips(ec2, state.network.name)
        )
    return result


def detach(ec2: Any, function: str, *, release: bool = True, dry_run: bool = False) -> Result:
    """Take the function's tagged EIPs off its ENIs; release those fixedip allocated.

    Addresses given with `--eip` are only disassociated (and untagged): they are yours.
    Works after the function is gone, since it finds the addresses by their tag.
    """
    result = Result()
    for eip in tagged_eips(ec2, function):
        steps = []
        if eip.association_id:
            steps.append(f"disassociate {eip.public_ip} ({eip.allocation_id}) from {eip.eni_id}")
        if release and eip.allocated_by_fixedip:
            steps.append(f"release {eip.public_ip} ({eip.allocation_id})")
        else:
            steps.append(f"untag {eip.public_ip} ({eip.allocation_id})")
        result.actions.extend(("would " if dry_run else "") + step for step in steps)
        if dry_run:
            continue
        if eip.association_id:
            _call(ec2, "disassociate_address", AssociationId=eip.association_id)
        if release and eip.allocated_by_fixedip:
            _call(ec2, "release_address", AllocationId=eip.allocation_id)
        else:
            _call(
                ec2,
                "delete_tags",
                Resources=[eip.allocation_id],
                Tags=[{"Key": TAG_FUNCTION}, {"Key": TAG_ALLOCATED}],
            )
    return result


def clients(region: str | None = None, endpoint_url: str | None = None) -> tuple[Any, Any]:
    """boto3 Lambda and EC2 clients (`endpoint_url` for a moto server in tests)."""
    try:
        import boto3
    except ImportError:
        raise CloudError("fixedip aws needs boto3: pip install 'fixedip[server,aws]'") from None
    try:
        session = boto3.session.Session(region_name=region or None)
        if session.region_name is None:
            raise CloudError("no AWS region: pass --region or set AWS_REGION")
        return (
            session.client("lambda", endpoint_url=endpoint_url or None),
            session.client("ec2", endpoint_url=endpoint_url or None),
        )
    except CloudError:
        raise
    except Exception as exc:
        raise CloudError(f"cannot create AWS clients: {exc}") from None
