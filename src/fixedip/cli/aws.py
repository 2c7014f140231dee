"""`fixedip aws attach-eips|check|detach-eips`: Elastic IPs on a function's Hyperplane ENIs.

Exit codes: attach-eips and detach-eips 0 done, 1 could not complete, 2 usage; check
follows the monitoring convention: 0 no drift, 1 drift, 3 could not ask AWS.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fixedip.cloud import eni

OK, DRIFT, FAILED, UNKNOWN = 0, 1, 1, 3


class Format(StrEnum):
    table = "table"
    json = "json"


app = typer.Typer(
    help="AWS automation: Elastic IPs on a Lambda function's Hyperplane ENIs (no NAT Gateway).",
    no_args_is_help=True,
)

FunctionArg = Annotated[
    str, typer.Argument(help="The VPC-attached Lambda function (name).", show_default=False)
]
RegionOption = Annotated[
    str | None, typer.Option(help="AWS region (default: AWS_REGION / your profile's).")
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url", help="Use this endpoint for Lambda and EC2 (e.g. a moto server)."
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
]
FormatOption = Annotated[Format, typer.Option("--format", help="Output format.")]


def _clients(region: str | None, endpoint_url: str | None, code: int) -> tuple[Any, Any]:
    try:
        return eni.clients(region, endpoint_url)
    except eni.CloudError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code) from None


def _egress_table(title: str, state: eni.EgressState, planned: dict[str, str]) -> Table:
    table = Table(title=title)
    for column in ("ENI", "subnet", "private IP", "egress IP", "Elastic IP"):
        table.add_column(column)
    for item in state.enis:
        ip = planned.get(item.eni_id) or item.public_ip
        allocation = item.allocation_id or ("[yellow]planned[/yellow]" if ip else "[red]none[/red]")
        table.add_row(item.eni_id, item.subnet_id, item.private_ip, ip or "-", allocation)
    return table


@app.command("attach-eips")
def attach_eips(
    function: FunctionArg,
    allocate: Annotated[
        bool, typer.Option("--allocate", help="Allocate new Elastic IPs where none is free.")
    ] = False,
    eip: Annotated[
        list[str] | None,
        typer.Option("--eip", help="Use this allocation id (eipalloc-...); repeat for several."),
    ] = None,
    dry_run: DryRunOption = False,
    region: RegionOption = None,
    endpoint_url: EndpointOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Give each of FUNCTION's Hyperplane ENIs an Elastic IP and print the egress IPs.

    Idempotent: ENIs that have an EIP are left alone. The function's own addresses
    (tagged fixedip:function) are reused first, moving from stale ENIs so the allowlisted
    IPs survive subnet or security-group changes; then --eip, then --allocate.
    """
    lambda_client, ec2 = _clients(region, endpoint_url, FAILED)
    try:
        result = eni.attach(
            lambda_client, ec2, function, eips=list(eip or []), allocate=allocate, dry_run=dry_run
        )
        state = eni.read_state(lambda_client, ec2, function)
    except eni.CloudError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(FAILED) from None
    if fmt is Format.json:
        document = {
            "function": state.network.name,
            "dry_run": dry_run,
            "actions": result.actions,
            "egress": [{"eni": k, "ip": v} for k, v in sorted(result.egress.items())],
            "egress_ips": sorted(set(result.egress.values())),
        }
        typer.echo(json.dumps(document, indent=2))
        return
    console = Console()
    for action in result.actions or ["nothing to do: every ENI has an Elastic IP"]:
        console.print(action)
    console.print(_egress_table(f"{state.network.name}: egress IPs", state, result.egress))
    if result.egress:
        console.print("allowlist: " + ", ".join(sorted(set(result.egress.values()))))


@app.command("check")
def check(
    function: FunctionArg,
    region: RegionOption = None,
    endpoint_url: EndpointOption = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Report drift: ENIs without an Elastic IP, the function's EIPs on stale ENIs.

    Exit status: 0 every current ENI has an EIP and none is stale, 1 drift (fix with
    attach-eips), 3 AWS could not be asked.
    """
    lambda_client, ec2 = _clients(region, endpoint_url, UNKNOWN)
    try:
        state = eni.read_state(lambda_client, ec2, function)
    except eni.CloudError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(UNKNOWN) from None
    problems = [
        f"{item.eni_id} in {item.subnet_id} has no Elastic IP: its traffic leaves from no fixed IP"
        for item in state.missing
    ]
    problems += [
        f"{ip.public_ip} ({ip.allocation_id}) is "
        + (f"on stale ENI {ip.eni_id}" if ip.eni_id else "not associated (billed while idle)")
        for ip in state.stale
    ]
    if not state.enis:
        problems.append(f"no Hyperplane ENIs for {state.network.name} in its subnets yet")
    if fmt is Format.json:
        document = {
            "function": state.network.name,
            "drift": bool(problems),
            "problems": problems,
            "enis": [
                {
                    "eni": e.eni_id,
                    "subnet": e.subnet_id,
                    "public_ip": e.public_ip,
                    "allocation_id": e.allocation_id,
                }
                for e in state.enis
            ],
            "missing": [e.eni_id for e in state.missing],
            "stale": [
                {"allocation_id": ip.allocation_id, "public_ip": ip.public_ip, "eni": ip.eni_id}
                for ip in state.stale
            ],
            "egress_ips": list(state.egress_ips),
        }
        typer.echo(json.dumps(document, indent=2))
    else:
        console = Console()
        console.print(_egress_table(f"{state.network.name}: Hyperplane ENIs", state, {}))
        for problem in problems:
            console.print(f"[red]drift:[/red] {problem}")
        if not problems:
            console.print("ok: every ENI has an Elastic IP: " + ", ".join(state.egress_ips))
    raise typer.Exit(DRIFT if problems else OK)


@app.command("detach-eips")
def detach_eips(
    function: FunctionArg,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the addresses fixedip allocated (do not release).")
    ] = False,
    dry_run: DryRunOption = False,
    region: RegionOption = None,
    endpoint_url: EndpointOption = None,
) -> None:
    """Take fixedip's Elastic IPs off FUNCTION's ENIs and release those it allocated."""
    _, ec2 = _clients(region, endpoint_url, FAILED)
    try:
        result = eni.detach(ec2, function, release=not keep, dry_run=dry_run)
    except eni.CloudError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(FAILED) from None
    for action in result.actions or [f"nothing to do: no Elastic IPs tagged for {function}"]:
        typer.echo(action)
