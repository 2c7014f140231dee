"""`cloud-nat` (GCP, Terraform): Cloud Router + Cloud NAT with manually reserved static
IPs, and a Cloud Run service whose egress is `ALL_TRAFFIC` through the VPC.

The egress setting is the classic mistake: with `PRIVATE_RANGES_ONLY` (the default)
internet traffic skips the VPC and leaves from Google's shared addresses. Direct VPC
egress is the default here (no connector VMs to pay for); `--gcp-egress connector`
renders a Serverless VPC Access connector instead, which Cloud Functions also accept
(`--vpc-connector … --egress-settings all`).
"""

from __future__ import annotations

import ipaddress

from fixedip import __version__
from fixedip.plan.render import hcl
from fixedip.plan.render.hcl import Expr, Nested
from fixedip.plan.render.params import RenderParams

OPTION = "cloud-nat"
CONNECTOR_PREFIX = 28  # Serverless VPC Access needs an unused /28


def terraform(params: RenderParams) -> str:
    subnet = params.subnets(1)[0]
    connector = params.gcp_egress == "connector"
    vpc = ipaddress.ip_network(params.vpc_cidr)
    connector_range = str(list(vpc.subnets(new_prefix=CONNECTOR_PREFIX))[-1])
    if connector:
        vpc_access = Nested(
            {"connector": Expr("google_vpc_access_connector.main.id"), "egress": "ALL_TRAFFIC"}
        )
    else:
        vpc_access = Nested(
            {
                "network_interfaces": Nested(
                    {
                        "network": Expr("google_compute_network.main.id"),
                        "subnetwork": Expr("google_compute_subnetwork.main.id"),
                    }
                ),
                "egress": "ALL_TRAFFIC",
            }
        )
    blocks = [
        hcl.Block(
            "terraform",
            (),
            {
                "required_version": ">= 1.5",
                "required_providers": Nested(
                    {"google": {"source": "hashicorp/google", "version": ">= 5.20"}}
                ),
            },
        ),
        hcl.Block(
            "provider", ("google",), {"project": Expr("var.project"), "region": Expr("var.region")}
        ),
        hcl.variable("project", {"description": "GCP project id.", "type": Expr("string")}),
        hcl.variable(
            "region",
            {"description": "GCP region.", "type": Expr("string"), "default": params.region},
        ),
        hcl.variable(
            "service_name",
            {
                "description": "The Cloud Run service.",
                "type": Expr("string"),
                "default": params.function_name,
            },
        ),
        hcl.variable(
            "image", {"description": "The service's container image.", "type": Expr("string")}
        ),
        hcl.Block(
            "locals",
            (),
            {
                "name": params.name,
                "labels": {"fixedip-name": params.name, "managed-by": "fixedip-render"},
            },
        ),
        hcl.resource(
            "google_compute_network",
            "main",
            {
                "name": Expr("local.name"),
                "auto_create_subnetworks": False,
            },
        ),
        hcl.resource(
            "google_compute_firewall",
            "deny_ingress",
            {
                "name": "${local.name}-deny-ingress",
                "network": Expr("google_compute_network.main.name"),
                "direction": "INGRESS",
                "priority": 65534,
                "source_ranges": ["0.0.0.0/0"],
                "deny": Nested({"protocol": "all"}),
                "log_config": Nested({"metadata": "INCLUDE_ALL_METADATA"}),
            },
            doc="Nothing reaches the network from outside; egress goes through Cloud NAT.",
        ),
        hcl.resource(
            "google_compute_subnetwork",
            "main",
            {
                "name": "${local.name}-${var.region}",
                "region": Expr("var.region"),
                "network": Expr("google_compute_network.main.id"),
                "ip_cidr_range": subnet,
                "private_ip_google_access": True,
                "log_config": Nested(
                    {
                        "aggregation_interval": "INTERVAL_10_MIN",
                        "flow_sampling": 0.5,
                        "metadata": "INCLUDE_ALL_METADATA",
                    }
                ),
            },
        ),
        hcl.resource(
            "google_compute_address",
            "nat",
            {
                "count": params.ips,
                "name": "${local.name}-nat-${count.index + 1}",
                "region": Expr("var.region"),
                "address_type": "EXTERNAL",
                "labels": Expr("local.labels"),
            },
            doc="The fixed IPs: reserved static addresses, used only by Cloud NAT.",
        ),
        hcl.resource(
            "google_compute_router",
            "main",
            {
                "name": Expr("local.name"),
                "region": Expr("var.region"),
                "network": Expr("google_compute_network.main.id"),
            },
        ),
        hcl.resource(
            "google_compute_router_nat",
            "main",
            {
                "name": Expr("local.name"),
                "router": Expr("google_compute_router.main.name"),
                "region": Expr("var.region"),
                "nat_ip_allocate_option": "MANUAL_ONLY",
                "nat_ips": Expr("google_compute_address.nat[*].self_link"),
                "source_subnetwork_ip_ranges_to_nat": "ALL_SUBNETWORKS_ALL_IP_RANGES",
                "enable_endpoint_independent_mapping": False,
                "log_config": Nested({"enable": True, "filter": "ERRORS_ONLY"}),
            },
            doc="MANUAL_ONLY: traffic never leaves from an address Google picked.",
        ),
    ]
    if connector:
        blocks.append(
            hcl.resource(
                "google_vpc_access_connector",
                "main",
                {
                    "name": "${local.name}-connector",
                    "region": Expr("var.region"),
                    "network": Expr("google_compute_network.main.name"),
                    "ip_cidr_range": connector_range,
                    "min_instances": 2,
                    "max_instances": 3,
                },
            )
        )
    blocks += [
        hcl.resource(
            "google_cloud_run_v2_service",
            "function",
            {
                "name": Expr("var.service_name"),
                "location": Expr("var.region"),
                "ingress": "INGRESS_TRAFFIC_ALL",
                "labels": Expr("local.labels"),
                "template": Nested(
                    {
                        "containers": Nested({"image": Expr("var.image")}),
                        "vpc_access": vpc_access,
                    }
                ),
            },
            doc="egress = ALL_TRAFFIC: every request of the service leaves through Cloud NAT.",
        ),
        hcl.output(
            "fixed_ips",
            Expr("google_compute_address.nat[*].address"),
            "The addresses vendors allowlist.",
        ),
    ]
    if connector:
        blocks.append(
            hcl.output(
                "cloud_functions_flags",
                "--vpc-connector ${google_vpc_access_connector.main.id} --egress-settings all",
                "gcloud functions deploy flags for Cloud Functions behind the same NAT.",
            )
        )
    header = (
        f"Rendered by fixedip {__version__}: {params.command_line(OPTION, 'terraform')}\n"
        "Deterministic output: the same command gives the same file. See docs/render.md."
    )
    return hcl.dumps(blocks, header=header)
