"""Top-level typer application: wires the command groups together."""

from __future__ import annotations

import typer

from fixedip import __version__
from fixedip.cli import aws as aws_cmd
from fixedip.cli import check as check_cmd
from fixedip.cli import config as config_cmd
from fixedip.cli import flows as flows_cmd
from fixedip.cli import ingress as ingress_cmd
from fixedip.cli import ips as ips_cmd
from fixedip.cli import plan as plan_cmd
from fixedip.cli import render as render_cmd
from fixedip.cli import serve as serve_cmd
from fixedip.cli import status as status_cmd
from fixedip.cli import suggest as suggest_cmd
from fixedip.cli import tls as tls_cmd
from fixedip.cli import token as token_cmd

app = typer.Typer(
    name="fixedip",
    help=(
        "A fixed, allowlistable egress IP for code that has none.\n\n"
        "Run `fixedip serve` for the offline demo, or `fixedip config example > fixedip.toml` "
        "to start a real configuration."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("serve")(serve_cmd.serve)
app.command("status")(status_cmd.status)
app.command("ips")(ips_cmd.ips)
app.command("check", cls=check_cmd.MonitoringCommand)(check_cmd.check)
app.add_typer(check_cmd.ranges_app, name="ranges")
app.add_typer(config_cmd.app, name="config")
app.add_typer(flows_cmd.app, name="flows")
app.add_typer(ingress_cmd.app, name="ingress")
app.add_typer(plan_cmd.app, name="plan")
app.add_typer(aws_cmd.app, name="aws")
app.command("render")(render_cmd.render_command)
app.add_typer(tls_cmd.app, name="tls")
app.add_typer(token_cmd.app, name="token")
app.add_typer(suggest_cmd.app, name="suggest")


@app.command()
def version() -> None:
    """Print the fixedip version."""
    typer.echo(__version__)
