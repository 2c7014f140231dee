"""`fixedip render OPTION`: Terraform or CloudFormation for one of the planner's options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fixedip.plan.render import OPTION_IDS, RenderError, RenderParams, render, write
from fixedip.plan.render.params import DEFAULT_INSTANCE_TYPE

_DEFAULTS = RenderParams()


def render_command(
    option: Annotated[
        str,
        typer.Argument(help=f"The option id from `fixedip plan`: {', '.join(OPTION_IDS)}."),
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="terraform or cloudformation.")
    ] = "terraform",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the files into this directory (default: print to stdout)."),
    ] = None,
    region: Annotated[
        str, typer.Option(help="Region (default: eu-west-1 on AWS, europe-west1 on GCP).")
    ] = "",
    azs: Annotated[int, typer.Option(help="Availability zones (subnets, NAT Gateways).")] = (
        _DEFAULTS.azs
    ),
    ips: Annotated[
        int, typer.Option(help="Fixed IPs per NAT Gateway or gateway VM; Cloud NAT addresses.")
    ] = (_DEFAULTS.ips),
    floating: Annotated[
        int, typer.Option(help="fixedip-ha: Elastic IPs that move between the gateways.")
    ] = _DEFAULTS.floating,
    instance_type: Annotated[
        str, typer.Option(help="Gateway instance type (arm64 for the default image).")
    ] = DEFAULT_INSTANCE_TYPE,
    function_name: Annotated[
        str, typer.Option(help="The function (Lambda name, Cloud Run service).")
    ] = _DEFAULTS.function_name,
    name: Annotated[str, typer.Option(help="Prefix for resource names and tags.")] = (
        _DEFAULTS.name
    ),
    vpc_cidr: Annotated[str, typer.Option(help="The new VPC's private range.")] = (
        _DEFAULTS.vpc_cidr
    ),
    client_cidr: Annotated[
        list[str] | None,
        typer.Option(help="May reach the TLS listener from the internet (repeatable)."),
    ] = None,
    tls_name: Annotated[str, typer.Option(help="DNS name in the gateway's certificate.")] = (
        _DEFAULTS.tls_name
    ),
    fixedip_version: Annotated[
        str, typer.Option(help="fixedip version the gateway installs.")
    ] = _DEFAULTS.fixedip_version,
    gcp_egress: Annotated[
        str, typer.Option(help="cloud-nat: direct (Direct VPC egress) or connector.")
    ] = _DEFAULTS.gcp_egress,
) -> None:
    """Write Terraform or CloudFormation for OPTION (same inputs, same bytes).

    Examples:

      fixedip render nat-gateway --format cloudformation --azs 2

      fixedip render fixedip-vm --format terraform --ips 2 --out infra/

      fixedip render eni-eips --format cloudformation --function-name billing --out eni/
    """
    params = RenderParams(
        region=region,
        azs=azs,
        ips=ips,
        floating=floating,
        instance_type=instance_type,
        function_name=function_name,
        name=name,
        vpc_cidr=vpc_cidr,
        client_cidrs=tuple(client_cidr) if client_cidr else _DEFAULTS.client_cidrs,
        tls_name=tls_name,
        fixedip_version=fixedip_version,
        gcp_egress=gcp_egress,
    )
    try:
        rendered = render(option, fmt, params)
    except RenderError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if out is None:
        if len(rendered.files) > 1:
            typer.echo(
                f"error: {option} writes {len(rendered.files)} files (template and code): "
                "pass --out DIR",
                err=True,
            )
            raise typer.Exit(2)
        sys.stdout.write(rendered.files[rendered.main].decode())
        return
    try:
        paths = write(rendered, out)
    except OSError as exc:
        typer.echo(f"error: cannot write to {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    for path in paths:
        typer.echo(f"wrote {path}")
