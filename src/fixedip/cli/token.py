"""`fixedip token new|hash`: tokens are shown once and stored only as salted hashes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from fixedip.config import client_name_problem
from fixedip.policy.tokens import hash_token, new_token

app = typer.Typer(help="Create client tokens and their hashes.", no_args_is_help=True)


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="The client name (the proxy user name).")],
) -> None:
    """Print a fresh token for client NAME and the config lines to paste."""
    problem = client_name_problem(name)
    if problem:
        typer.echo(f"error: client name {name!r}: {problem}", err=True)
        raise typer.Exit(2)
    token = new_token()
    typer.echo(f"token for {name} (shown once; give it to the function, keep it secret):")
    typer.echo(f"  {token}")
    typer.echo("")
    typer.echo("add to the gateway's configuration:")
    typer.echo("")
    typer.echo("[[clients]]")
    typer.echo(f'name = "{name}"')
    typer.echo(f'token_hash = "{hash_token(token)}"')
    typer.echo('allow = ["api.vendor.example:443"]   # where this client may go')
    typer.echo("")
    typer.echo("the function uses it as:")
    typer.echo(f"  HTTPS_PROXY=http://{name}:{token}@GATEWAY:3128")


@app.command("hash")
def hash_(
    token: str | None = typer.Argument(
        None,
        help="The token; omit it to read it from standard input (keeps it out of shell history).",
    ),
) -> None:
    """Print only the token_hash value for TOKEN, on one line."""
    if token is None:
        token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        typer.echo("error: empty token (pass it as an argument or on standard input)", err=True)
        raise typer.Exit(2)
    typer.echo(hash_token(token))
