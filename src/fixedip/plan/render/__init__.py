"""`fixedip render`: Terraform and CloudFormation for the planner's options.

`render(option, fmt, params)` returns the files to write (relative path → bytes). Output
is deterministic: the same option, format and parameters give the same bytes, so a
rendered directory can be committed and re-rendered without noise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fixedip.plan.render.params import RenderError, RenderParams

__all__ = ["FORMATS", "OPTION_IDS", "RenderError", "RenderParams", "Rendered", "render", "write"]

OPTION_IDS = (
    "nat-gateway",
    "fixedip-vm",
    "fixedip-ha",
    "global-accelerator",
    "eni-eips",
    "cloud-nat",
)
FORMATS = ("terraform", "cloudformation")
FILE_NAMES = {"terraform": "main.tf", "cloudformation": "template.yaml"}

# Planner options with no template, and what to do instead.
NOT_RENDERED = {
    "nat-instance": "a NAT instance is not rendered: fixedip-vm is the same shape, with a gateway",
    "vpc-endpoints": "VPC endpoints depend on the services called; create them per service",
    "function-split": "the public/private split is a code change, not infrastructure",
    "azure-nat": "Azure templates are not rendered yet",
    "fixedip-ingress": "the ingress relay runs on the gateway VM: render fixedip-vm",
    "saas-proxy": "a SaaS proxy is bought, not deployed",
    "client-rotation": "client-side rotation is code (fixedip.client.guard), not infrastructure",
}


@dataclass(frozen=True)
class Rendered:
    """The files of one render; `main` is the one printed when there is no --out."""

    files: dict[str, bytes]
    main: str


Renderer = Callable[[RenderParams], "str | Rendered"]


@dataclass(frozen=True)
class Option:
    id: str
    cloud: str
    summary: str
    renderers: dict[str, Renderer]


@functools.cache
def options() -> dict[str, Option]:
    """The renderable options by id (their modules load on first use)."""
    from fixedip.plan.render import (
        aws_accelerator,
        aws_eni,
        aws_gateway,
        aws_ha,
        aws_nat,
        gcp_nat,
    )

    options = [
        Option(
            "nat-gateway",
            "aws",
            "VPC, private subnets, a NAT Gateway with an Elastic IP per AZ",
            {"terraform": aws_nat.terraform, "cloudformation": aws_nat.cloudformation},
        ),
        Option(
            "fixedip-vm",
            "aws",
            "the fixedip gateway on a t4g instance with Elastic IPs, TLS listener only",
            {"terraform": aws_gateway.terraform, "cloudformation": aws_gateway.cloudformation},
        ),
        Option(
            "fixedip-ha",
            "aws",
            "gateways in two or more AZs with floating Elastic IPs and a small Redis",
            {"terraform": aws_ha.terraform, "cloudformation": aws_ha.cloudformation},
        ),
        Option(
            "global-accelerator",
            "aws",
            "static ingress IPs: a Global Accelerator in front of an existing ALB",
            {
                "terraform": aws_accelerator.terraform,
                "cloudformation": aws_accelerator.cloudformation,
            },
        ),
        Option(
            "eni-eips",
            "aws",
            "Elastic IPs on the function's Hyperplane ENIs (development; no NAT Gateway)",
            {"terraform": aws_eni.terraform, "cloudformation": aws_eni.cloudformation},
        ),
        Option(
            "cloud-nat",
            "gcp",
            "Cloud Router + Cloud NAT with static IPs, Cloud Run egress all-traffic",
            {"terraform": gcp_nat.terraform},
        ),
    ]
    assert tuple(option.id for option in options) == OPTION_IDS
    return {option.id: option for option in options}


def render(option: str, fmt: str, params: RenderParams) -> Rendered:
    """Render `option` in `fmt`; RenderError names what to change when that is impossible."""
    known = options()
    if option not in known:
        if option in NOT_RENDERED:
            raise RenderError(f"no template for {option!r}: {NOT_RENDERED[option]}")
        raise RenderError(f"unknown option {option!r}; expected one of: {', '.join(OPTION_IDS)}")
    if fmt not in FORMATS:
        raise RenderError(f"unknown format {fmt!r}; expected terraform or cloudformation")
    spec = known[option]
    renderer = spec.renderers.get(fmt)
    if renderer is None:
        formats = " or ".join(spec.renderers)
        raise RenderError(f"{option} ({spec.cloud.upper()}) is rendered as {formats} only")
    result = renderer(params.for_cloud(spec.cloud))
    if isinstance(result, str):
        return Rendered({FILE_NAMES[fmt]: result.encode()}, FILE_NAMES[fmt])
    return result


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write every file under `out` (created if missing); returns the paths, sorted."""
    paths = []
    for name, content in sorted(rendered.files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return paths
