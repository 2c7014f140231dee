"""The candidate architectures and how each is priced from the price table.

Every function takes the inputs and the prices and returns one `Option`; nothing here
holds a dollar figure, only quantities (hours, GB, IPs, requests) and the model's stated
assumptions below. Costs that every option of a cloud shares (internet egress, the
job's own CloudWatch calls) appear in each, so totals compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable

from fixedip.plan.model import Bill, Inputs, Option
from fixedip.plan.prices import PriceTable

# Assumptions of the model (not prices), stated where they are used.
ROOT_VOLUME_GB = 8  # an EC2 root volume for a NAT instance or the gateway
SPLIT_MEMORY_GB = 0.125  # the public half of a function split: 128 MB ...
SPLIT_DURATION_S = 0.1  # ... running 100 ms per call
ENDPOINT_SERVICES = 1  # interface endpoints: one AWS service (e.g. CloudWatch) per AZ
CLOUD_NAT_INSTANCES = 2  # Cloud NAT bills per VM; a VPC connector has at least 2
ALB_LCUS = 1  # a quiet webhook receiver stays within one load-balancer capacity unit

VPC_COLD_START = (
    "none per invocation: Lambda builds Hyperplane ENIs when the function is created or "
    "its VPC settings change, and deployments wait for them"
)
NEEDS_INGRESS = (
    " Egress only: vendors that call back need a static ingress too (global-accelerator, "
    "fixedip-ingress, or fixedip-vm / fixedip-ha which do both)."
)


def _shared(bill: Bill, inputs: Inputs) -> None:
    """Lines every option of the cloud pays: internet egress and the job's own calls."""
    if not inputs.only_cloud_apis:
        if inputs.cloud == "aws":
            bill.add("internet data transfer out", "aws_data_transfer_out_gb", inputs.egress_gb)
        elif inputs.cloud == "gcp":
            bill.add("internet egress (Premium Tier)", "gcp_internet_egress_gib", inputs.egress_gb)
    if inputs.cloud == "aws" and inputs.metrics:
        bill.add(
            "CloudWatch custom metrics (the job)", "aws_cloudwatch_metric_month", inputs.metrics
        )
        bill.add(
            "CloudWatch PutMetricData (the job)", "aws_cloudwatch_api_1000", inputs.requests / 1000
        )


def _option(
    bill: Bill,
    inputs: Inputs,
    *,
    id: str,
    name: str,
    fits: bool,
    why: str,
    complexity: str,
    reliability: str,
    cold_start: str,
    limits: str,
    wrong_when: str,
) -> Option:
    _shared(bill, inputs)
    return Option(
        id=id,
        name=name,
        breakdown=dict(bill.items),
        fits=fits,
        why=why,
        complexity=complexity,
        reliability=reliability,
        cold_start=cold_start,
        limits=limits,
        wrong_when=wrong_when,
        estimates=tuple(bill.estimates),
    )


def _nat_gateway_lines(bill: Bill, inputs: Inputs) -> int:
    """NAT Gateways, one per AZ, each with an EIP (or the existing ones); returns count."""
    n = inputs.zones
    if inputs.nat_exists:
        bill.included("NAT Gateway hours (existing)")
        extra_ips = max(0, inputs.ips - n)
    else:
        bill.hourly("NAT Gateway hours", "aws_nat_gateway_hour", n)
        extra_ips = max(inputs.ips, n)
    bill.add("NAT Gateway data processing", "aws_nat_gateway_gb", inputs.egress_gb)
    if extra_ips:
        bill.hourly("public IPv4 (Elastic IPs)", "aws_public_ipv4_hour", extra_ips)
    return n


def _cloud_nat_lines(bill: Bill, inputs: Inputs) -> None:
    if inputs.nat_exists:
        bill.included("Cloud NAT gateway (existing)")
    else:
        bill.hourly("Cloud NAT gateway", "gcp_cloud_nat_instance_hour", CLOUD_NAT_INSTANCES)
    bill.add("Cloud NAT data processing", "gcp_cloud_nat_gib", inputs.egress_gb)
    bill.hourly("Cloud NAT static IPs", "gcp_cloud_nat_ip_hour", inputs.ips)


def _gateway_vm_lines(bill: Bill, inputs: Inputs, vms: int, small: bool = False) -> None:
    """fixedip (gateway or relay) VMs with their static IPs."""
    if inputs.cloud == "gcp":
        bill.hourly(f"e2-micro VM x{vms}", "gcp_e2_micro_hour", vms)
        bill.hourly("static external IPv4", "gcp_external_ip_hour", max(inputs.ips, vms))
        return
    size, key = (
        ("t4g.nano", "aws_ec2_t4g_nano_hour") if small else ("t4g.micro", "aws_ec2_t4g_micro_hour")
    )
    bill.hourly(f"EC2 {size} x{vms}", key, vms)
    bill.add(f"EBS gp3 {ROOT_VOLUME_GB} GB x{vms}", "aws_ebs_gp3_gb_month", vms * ROOT_VOLUME_GB)
    bill.hourly("public IPv4 (Elastic IPs)", "aws_public_ipv4_hour", max(inputs.ips, vms))


def nat_gateway(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    n = _nat_gateway_lines(bill, inputs)
    why = (
        f"Functions in private subnets; {n} NAT Gateway{'s' if n > 1 else ''} (one per AZ), "
        "each with an Elastic IP the vendor allowlists. Managed; one per AZ, so losing a zone "
        "loses only that zone's egress."
    )
    if inputs.nat_exists:
        why = "The NAT Gateway you have already gives a fixed IP; only traffic costs more. " + why
    return _option(
        bill,
        inputs,
        id="nat-gateway",
        name="NAT Gateway + Elastic IP",
        fits=not inputs.ingress,
        why=why + (NEEDS_INGRESS if inputs.ingress else ""),
        complexity="low: standard VPC wiring",
        reliability="high: managed, one per AZ",
        cold_start=VPC_COLD_START,
        limits="per-GB processing charge on every byte; one AZ per gateway",
        wrong_when="dev or low traffic (the hourly charge dominates), or heavy traffic "
        "(processing adds to the egress charge); vendors that call back",
    )


def eni_eips(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    n = inputs.zones
    bill.hourly("public IPv4 (Elastic IPs on Lambda ENIs)", "aws_public_ipv4_hour", n)
    why = (
        f"Elastic IPs on the function's Hyperplane ENIs ({n}: one per subnet + security-group "
        "combination) in public subnets; no NAT. `fixedip aws attach-eips` sets them up, "
        "`fixedip aws check` finds drift."
    )
    if inputs.ips != n:
        why += (
            f" The vendor allowlists {n} IP{'s' if n != 1 else ''} (one per ENI), not {inputs.ips}."
        )
    if inputs.env == "prod":
        why += (
            " Not for production: a subnet or security-group change makes new ENIs without "
            "EIPs, and egress breaks until they are attached again."
        )
    return _option(
        bill,
        inputs,
        id="eni-eips",
        name="Elastic IPs on Lambda's Hyperplane ENIs",
        fits=inputs.env == "dev" and not inputs.ingress,
        why=why + (NEEDS_INGRESS if inputs.ingress else ""),
        complexity="low to set up, needs automation to stay correct",
        reliability="low: ENIs change with subnets/security groups; drift breaks egress",
        cold_start=VPC_COLD_START,
        limits="65,000 connections per ENI (Lambda adds ENIs beyond, without EIPs); "
        "one IP per ENI, not chosen by you",
        wrong_when="production, or any change of the function's subnets or security groups",
    )


def nat_instance(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    n = inputs.zones
    bill.hourly(f"EC2 t4g.nano x{n} (fck-nat)", "aws_ec2_t4g_nano_hour", n)
    bill.add(f"EBS gp3 {ROOT_VOLUME_GB} GB x{n}", "aws_ebs_gp3_gb_month", n * ROOT_VOLUME_GB)
    bill.hourly("public IPv4 (Elastic IPs)", "aws_public_ipv4_hour", max(inputs.ips, n))
    return _option(
        bill,
        inputs,
        id="nat-instance",
        name="NAT instance (fck-nat) + Elastic IP",
        fits=not inputs.ingress,
        why=f"A NAT instance per AZ ({n}) with an Elastic IP; no per-GB processing charge."
        + (NEEDS_INGRESS if inputs.ingress else ""),
        complexity="medium: an instance per AZ to patch, replace and monitor",
        reliability="medium: an instance failure stops that AZ's egress until replaced",
        cold_start=VPC_COLD_START,
        limits="up to 5 Gbps burst on t4g.nano; EC2 internet egress capped at 5 Gbps per instance",
        wrong_when="nobody owns the instances, or traffic needs more than one instance",
    )


def fixedip_vm(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    _gateway_vm_lines(bill, inputs, 1)
    why = (
        "The fixedip gateway on one small VM with a static IP: functions use it as their "
        "HTTP/SOCKS5 proxy (in the VPC, or over its TLS listener from outside any VPC); "
        "the ingress relay receives webhooks on the same IP. Policy, SSRF guard, flow log."
    )
    if inputs.env == "prod":
        why += " One VM is a single point of failure: use fixedip-ha in production."
    return _option(
        bill,
        inputs,
        id="fixedip-vm",
        name="fixedip gateway on a small VM",
        fits=inputs.env == "dev",
        why=why,
        complexity="medium: one VM running fixedip (rendered by `fixedip render`)",
        reliability="medium: one instance",
        cold_start="none outside a VPC; one extra hop through the gateway",
        limits="one instance's bandwidth and connections",
        wrong_when="production without a second instance",
    )


def fixedip_ha(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    _gateway_vm_lines(bill, inputs, 2)
    # The fleet's shared state ([fleet] redis): ElastiCache on AWS (what `fixedip render
    # fixedip-ha` creates), a third small VM running redis-server on GCP.
    if inputs.cloud == "gcp":
        bill.hourly("fleet store: e2-micro VM (redis-server)", "gcp_e2_micro_hour", 1)
    else:
        bill.hourly("fleet store: ElastiCache cache.t4g.micro", "aws_elasticache_t4g_micro_hour", 1)
    return _option(
        bill,
        inputs,
        id="fixedip-ha",
        name="fixedip gateway on two VMs (HA)",
        fits=True,
        why="Two fixedip gateways in two zones, each with its static IP (the vendor "
        "allowlists both); the SDK fails over between them, and a small Redis lets the fleet "
        "share quarantines and limits and move floating IPs. Egress and webhook ingress on "
        "the same IPs.",
        complexity="medium: two VMs, their IPs and a small Redis",
        reliability="high: either gateway serves every client",
        cold_start="none outside a VPC; one extra hop through the gateway",
        limits="scale by adding gateways (each adds an IP to allowlist)",
        wrong_when="only cloud-provider APIs are called (no public IP needed at all)",
    )


def vpc_endpoints(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    if inputs.cloud == "gcp":
        bill.included("Private Google Access")
        why = "Private Google Access: Google APIs from private addresses, no NAT, no public IP."
    else:
        n = inputs.zones
        bill.hourly(
            f"interface endpoint x{ENDPOINT_SERVICES} service x{n} AZ",
            "aws_privatelink_endpoint_hour",
            ENDPOINT_SERVICES * n,
        )
        bill.add("interface endpoint data", "aws_privatelink_gb", inputs.egress_gb)
        why = (
            f"Interface endpoints (PrivateLink) for the AWS APIs the functions call (priced "
            f"for {ENDPOINT_SERVICES} service in {n} AZ; S3 and DynamoDB gateway endpoints "
            "are free)."
        )
    if not inputs.only_cloud_apis:
        why += " Reaches cloud-provider APIs only: a vendor needs a fixed public IP."
    return _option(
        bill,
        inputs,
        id="vpc-endpoints",
        name="VPC endpoints / Private Google Access",
        fits=inputs.only_cloud_apis,
        why=why,
        complexity="low: one endpoint per service",
        reliability="high: managed",
        cold_start=VPC_COLD_START,
        limits="cloud-provider services only",
        wrong_when="any call goes to a vendor on the internet",
    )


def function_split(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    bill.add("Lambda requests (public half)", "aws_lambda_request", inputs.requests)
    bill.add(
        "Lambda duration (public half)",
        "aws_lambda_gb_second",
        inputs.requests * SPLIT_MEMORY_GB * SPLIT_DURATION_S,
    )
    why = (
        "A second function outside the VPC calls the cloud API; the VPC function hands it "
        f"the data (priced as {int(SPLIT_MEMORY_GB * 1024)} MB for "
        f"{int(SPLIT_DURATION_S * 1000)} ms per call, before the free tier)."
    )
    if not inputs.only_cloud_apis:
        why += " The public half has no fixed IP: this only avoids NAT for cloud-provider APIs."
    return _option(
        bill,
        inputs,
        id="function-split",
        name="Public/private function split",
        fits=inputs.only_cloud_apis,
        why=why,
        complexity="medium: two functions and the invoke between them",
        reliability="high: managed services only",
        cold_start="two functions may cold-start, plus a synchronous invoke per call",
        limits="6 MB synchronous payload each way between the halves",
        wrong_when="vendor calls (no fixed IP), or payloads above 6 MB",
    )


def cloud_nat(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    _cloud_nat_lines(bill, inputs)
    connector = 2 * bill.hours * prices.usd("gcp_e2_micro_hour")
    return _option(
        bill,
        inputs,
        id="cloud-nat",
        name="Cloud NAT with manual static IPs",
        fits=not inputs.ingress,
        why="Cloud Router + Cloud NAT with manually reserved IPs; Cloud Run / Cloud Functions "
        "reach the VPC by Direct VPC egress (no connector VMs; a Serverless VPC Access "
        f"connector adds about ${connector:.2f}/month for 2 e2-micro instances) with egress "
        "set to all-traffic, or only private ranges leave through NAT."
        + (NEEDS_INGRESS if inputs.ingress else ""),
        complexity="medium: router, NAT, IPs and the egress setting",
        reliability="high: managed, regional",
        cold_start="none per request with Direct VPC egress",
        limits="egress = private-ranges-only (the default) bypasses NAT for public calls",
        wrong_when="the service's egress setting is not all-traffic; vendors that call back",
    )


def azure_nat(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    if inputs.nat_exists:
        bill.included("NAT Gateway hours (existing)")
    else:
        bill.hourly("NAT Gateway hours", "azure_nat_gateway_hour", 1)
    bill.add("NAT Gateway data processing", "azure_nat_gateway_gb", inputs.egress_gb)
    bill.hourly("public IPv4 (Standard, static)", "azure_public_ip_hour", inputs.ips)
    return _option(
        bill,
        inputs,
        id="azure-nat",
        name="Azure NAT Gateway + static public IP",
        fits=not inputs.ingress,
        why="Functions on a Premium or Flex plan integrated with a VNet whose subnet uses a "
        "NAT Gateway with static public IPs (internet egress not priced here)."
        + (NEEDS_INGRESS if inputs.ingress else ""),
        complexity="medium: VNet integration needs a Premium or Flex plan",
        reliability="high: managed",
        cold_start="none per invocation once VNet-integrated",
        limits="per-GB processing charge",
        wrong_when="a Consumption plan (no VNet integration)",
    )


def global_accelerator(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    _nat_gateway_lines(bill, inputs)
    bill.hourly("Global Accelerator fixed fee", "aws_global_accelerator_hour", 1)
    bill.hourly("Application Load Balancer hours", "aws_alb_hour", 1)
    bill.hourly(f"ALB capacity ({ALB_LCUS} LCU)", "aws_alb_lcu_hour", ALB_LCUS)
    why = (
        "Static ingress: Global Accelerator's two anycast IPs in front of an ALB that invokes "
        "the function; egress through NAT Gateway + Elastic IP. The accelerator's per-GB "
        "data-transfer premium is not priced."
    )
    if not inputs.ingress:
        why += " Not needed: nothing calls back."
    return _option(
        bill,
        inputs,
        id="global-accelerator",
        name="Global Accelerator ingress + NAT Gateway egress",
        fits=inputs.ingress,
        why=why,
        complexity="medium: accelerator, ALB, NAT",
        reliability="high: managed",
        cold_start=VPC_COLD_START,
        limits="ingress and egress leave from different IPs",
        wrong_when="no webhooks, or the vendor needs one IP for both directions",
    )


def fixedip_ingress(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    if inputs.cloud == "gcp":
        _cloud_nat_lines(bill, inputs)
        bill.hourly("relay: e2-micro VM", "gcp_e2_micro_hour", 1)
        bill.hourly("relay: static external IPv4", "gcp_external_ip_hour", 1)
        egress = "Cloud NAT"
    else:
        _nat_gateway_lines(bill, inputs)
        bill.hourly("relay: EC2 t4g.nano", "aws_ec2_t4g_nano_hour", 1)
        bill.add(f"relay: EBS gp3 {ROOT_VOLUME_GB} GB", "aws_ebs_gp3_gb_month", ROOT_VOLUME_GB)
        bill.hourly("relay: public IPv4", "aws_public_ipv4_hour", 1)
        egress = "NAT Gateway"
    why = (
        f"Keep {egress} for egress; the fixedip ingress relay on a small VM receives webhooks "
        "on its static IP, spools them durably and delivers them to the function."
    )
    if not inputs.ingress:
        why += " Not needed: nothing calls back."
    return _option(
        bill,
        inputs,
        id="fixedip-ingress",
        name=f"fixedip ingress relay + {egress} egress",
        fits=inputs.ingress,
        why=why,
        complexity="medium: one relay VM besides the NAT",
        reliability="medium: one relay (its spool keeps accepted webhooks across restarts)",
        cold_start=VPC_COLD_START if inputs.cloud == "aws" else "none per request",
        limits="ingress and egress leave from different IPs",
        wrong_when=f"no {egress} yet (fixedip-vm / fixedip-ha do both on the same IPs)",
    )


def saas_proxy(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    bill.add("QuotaGuard Static Enterprise plan", "saas_quotaguard_enterprise_month", 1)
    return _option(
        bill,
        inputs,
        id="saas-proxy",
        name="SaaS static-IP proxy (QuotaGuard Static)",
        fits=True,
        why="Two load-balanced static IPs for HTTP and SOCKS5 outbound plus an inbound proxy, "
        "nothing to run. Priced at the Enterprise plan; smaller plans exist (not priced: no "
        "dated source yet).",
        complexity="low: a proxy URL",
        reliability="high per the provider; outside your control",
        cold_start="none; one extra hop to the provider",
        limits="plan quotas on requests and bandwidth",
        wrong_when="traffic or credentials must stay in your own account",
    )


def client_rotation(inputs: Inputs, prices: PriceTable) -> Option:
    bill = Bill(prices)
    bill.included("canary + exit on block (code only)")
    return _option(
        bill,
        inputs,
        id="client-rotation",
        name="Client-side canary and rotation",
        fits=False,
        why="No fixed IP: a canary at cold start and an exit on a 403 hope the next worker "
        "lands on an unblocked shared address. Helps against reputation blocks only.",
        complexity="low: a few lines in the function",
        reliability="low: reactive, no guarantee",
        cold_start="worse: a blocked worker exits and the next one cold-starts",
        limits="cannot satisfy an allowlist",
        wrong_when="the vendor allowlists IPs",
    )


BUILDERS: dict[str, tuple[tuple[str, ...], Callable[[Inputs, PriceTable], Option]]] = {
    "nat-gateway": (("aws",), nat_gateway),
    "eni-eips": (("aws",), eni_eips),
    "nat-instance": (("aws",), nat_instance),
    "fixedip-vm": (("aws", "gcp"), fixedip_vm),
    "fixedip-ha": (("aws", "gcp"), fixedip_ha),
    "vpc-endpoints": (("aws", "gcp"), vpc_endpoints),
    "function-split": (("aws",), function_split),
    "cloud-nat": (("gcp",), cloud_nat),
    "azure-nat": (("azure",), azure_nat),
    "global-accelerator": (("aws",), global_accelerator),
    "fixedip-ingress": (("aws", "gcp"), fixedip_ingress),
    "saas-proxy": (("aws", "gcp", "azure"), saas_proxy),
    "client-rotation": (("aws", "gcp", "azure"), client_rotation),
}


def candidates(inputs: Inputs, prices: PriceTable) -> list[Option]:
    """Every option that applies to the inputs' cloud, priced (unranked)."""
    return [build(inputs, prices) for clouds, build in BUILDERS.values() if inputs.cloud in clouds]
