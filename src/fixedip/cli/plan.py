"""`fixedip plan` (the cheapest architecture that gives a fixed IP) and `fixedip plan prices`."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fixedip.plan import prices as prices_mod
from fixedip.plan.model import InputError, make_inputs, notes, plan, read_inputs
from fixedip.plan.report import (
    breakdown_text,
    month_text,
    plan_document,
    plan_markdown,
    price_rows,
    prices_markdown,
    summary,
)

USAGE = 2


class Format(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"


class Cloud(StrEnum):
    aws = "aws"
    gcp = "gcp"
    azure = "azure"


class Env(StrEnum):
    dev = "dev"
    prod = "prod"


app = typer.Typer(
    help="Price the ways to give serverless code a fixed IP, cheapest fitting first.",
    invoke_without_command=True,
)

PricesOption = Annotated[
    Path | None,
    typer.Option(
        "--prices",
        help="A TOML file laid over the built-in prices: hours_per_month, and a table per "
        "key of `fixedip plan prices` with the fields to change (usd = 0.048, region, ...).",
        show_default=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE)


def _load_prices(path: Path | None) -> prices_mod.PriceTable:
    try:
        return prices_mod.load(path)
    except prices_mod.PriceError as exc:
        raise _fail(str(exc)) from None


@app.callback()
def plan_command(
    ctx: typer.Context,
    cloud: Annotated[
        Cloud | None, typer.Option(help="Where the functions run. [default: aws]")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Region (the default: the one the price table is for).")
    ] = None,
    egress_gb: Annotated[
        float | None,
        typer.Option("--egress-gb", help="Internet egress, GB per month. [default: 5]"),
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="Outbound calls per month. [default: 100000]")
    ] = None,
    ingress: Annotated[
        bool | None,
        typer.Option("--ingress/--no-ingress", help="Vendors call back (webhooks) to a static IP."),
    ] = None,
    ips: Annotated[int | None, typer.Option(help="Static IPs wanted. [default: 1]")] = None,
    azs: Annotated[
        int | None, typer.Option(help="Availability zones to cover. [default: 1 dev, 2 prod]")
    ] = None,
    env: Annotated[
        Env | None, typer.Option(help="dev or prod (prod needs HA). [default: dev]")
    ] = None,
    nat_exists: Annotated[
        bool | None,
        typer.Option("--nat-exists/--no-nat-exists", help="A NAT gateway is already paid for."),
    ] = None,
    only_cloud_apis: Annotated[
        bool | None,
        typer.Option(
            "--only-cloud-apis/--vendor-apis",
            help="The functions call only cloud-provider APIs (endpoints or a split may "
            "avoid NAT).",
        ),
    ] = None,
    metrics: Annotated[
        int | None,
        typer.Option(
            help="CloudWatch custom metrics the job publishes (each request is then one "
            "PutMetricData call), to price a metric job end to end. [default: 0]"
        ),
    ] = None,
    inputs_file: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help='A TOML file with the same names (cloud = "gcp", egress-gb = 20, ...); '
            "flags override it.",
            show_default=False,
        ),
    ] = None,
    prices_file: PricesOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Rank the architectures that give a fixed IP for these requirements, with costs.

    Each option has a stable id (nat-gateway, eni-eips, nat-instance, fixedip-vm,
    fixedip-ha, vpc-endpoints, function-split, cloud-nat, azure-nat, global-accelerator,
    fixedip-ingress, saas-proxy, client-rotation), also used by `fixedip render ID`.
    Options that fit come first, cheapest first. `fixedip plan prices` shows every price
    with its source.
    """
    if ctx.invoked_subcommand is not None:
        return
    values: dict[str, Any] = {}
    source = ""
    try:
        if inputs_file is not None:
            values.update(read_inputs(inputs_file))
            source = str(inputs_file)
            make_inputs(values, source)  # errors in the file name the file
        flags = {
            "cloud": cloud.value if cloud else None,
            "region": region,
            "egress_gb": egress_gb,
            "requests": requests,
            "ingress": ingress,
            "ips": ips,
            "azs": azs,
            "env": env.value if env else None,
            "nat_exists": nat_exists,
            "only_cloud_apis": only_cloud_apis,
            "metrics": metrics,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        if "cloud" in given and "region" not in given:
            values.pop("region", None)  # a file's region belongs to the file's cloud
        values = {k.replace("-", "_"): v for k, v in values.items()}
        values.update(given)
        inputs = make_inputs(values)
    except InputError as exc:
        raise _fail(str(exc)) from None
    table = _load_prices(prices_file)
    options = plan(inputs, table)
    advice = notes(inputs, table, options)
    if fmt is Format.json:
        typer.echo(json.dumps(plan_document(inputs, options, advice), indent=2))
    elif fmt is Format.markdown:
        typer.echo(plan_markdown(inputs, options, advice), nl=False)
    else:
        _print_plan(summary(inputs), options, advice)


def _print_plan(title: str, options: list[Any], advice: list[str]) -> None:
    console = Console()
    table = Table(title=f"fixedip plan: {title}", show_lines=True)
    for column, justify in (
        ("#", "right"),
        ("option", "left"),
        ("$/month", "right"),
        ("fits", "center"),
        ("breakdown", "left"),
        ("why", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for rank, option in enumerate(options, 1):
        star = "*" if option.estimates else ""
        table.add_row(
            str(rank),
            f"{option.name}\n[dim]{option.id}[/dim]",
            f"{option.monthly_usd:,.2f}{star}",
            "[green]yes[/green]" if option.fits else "[red]no[/red]",
            breakdown_text(option, "\n"),
            f"{option.why}\n[dim]complexity: {option.complexity}; reliability: "
            f"{option.reliability}; cold start: {option.cold_start}; limits: {option.limits}; "
            f"wrong when: {option.wrong_when}[/dim]",
        )
    console.print(table)
    if any(o.estimates for o in options):
        console.print("* includes an estimated price.")
    for note in advice:
        console.print(f"- {note}")


@app.command("prices")
def prices_command(
    prices_file: PricesOption = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
) -> None:
    """Every price the planner uses: unit, region, the date read, status and source."""
    table = _load_prices(prices_file)
    rows = price_rows(table)
    if fmt is Format.json:
        document = {
            "hours_per_month": table.hours_per_month,
            "origin": table.origin,
            "prices": rows,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    if fmt is Format.markdown:
        typer.echo(prices_markdown(table), nl=False)
        return
    out = Table(title=f"fixedip plan prices ({table.origin}; {table.hours_per_month} h/month)")
    for column in ("key", "item", "USD", "unit", "per month", "region", "read", "source"):
        out.add_column(column, overflow="fold", no_wrap=column in ("key", "USD", "read"))
    for row in rows:
        status = "" if row["status"] == "sourced" else f" [yellow]({row['status']})[/yellow]"
        out.add_row(
            row["key"],
            row["item"],
            f"{row['usd']:g}",
            row["unit"],
            month_text(row, table.hours_per_month),
            row["region"],
            row["read"],
            f"{row['source']}{status}\n[link={row['url']}]{row['url']}[/link]",
        )
    Console().print(out)
