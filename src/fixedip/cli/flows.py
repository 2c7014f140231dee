"""`fixedip flows analyze`: unexpected, internal and new destinations in flow logs.

Reads AWS VPC Flow Logs (version 2 default format, with or without a header, or a custom
format named by its header line) and fixedip's own JSON-lines flow log, plain or gzip,
"-" for standard input. Exit status follows the monitoring convention: 0 nothing
unexpected, 1 something unexpected found, 2 bad input, 3 could not run.
"""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

from fixedip.check.flows import DEFAULT_MAX_KEYS, FlowAnalysis
from fixedip.check.flows_input import STDIN, InputStats
from fixedip.check.flows_match import AddressSet, parse_time
from fixedip.check.flows_read import read_input
from fixedip.check.flows_render import render_json, render_markdown, render_table
from fixedip.check.flows_report import (
    BAD_INPUT,
    COULD_NOT_RUN,
    DEFAULT_MAX_MALFORMED_PERCENT,
    build_report,
)

app = typer.Typer(
    help="Analyse flow logs: fixedip's own flow log and AWS VPC Flow Logs.",
    no_args_is_help=True,
)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(BAD_INPUT)


@app.command("analyze")
def analyze(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE",
            help="Flow logs to read: fixedip JSON lines or VPC Flow Logs, plain or gzip; "
            "'-' reads standard input.",
            show_default=False,
        ),
    ],
    expect: Annotated[
        list[str] | None,
        typer.Option(
            "--expect",
            metavar="CIDR|HOST",
            help="An expected destination: a CIDR or address (matches VPC and fixedip "
            "records), a host name or *.domain (fixedip records). Repeat, or separate "
            "with commas. Anything else is reported as unexpected.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            help="Only records from this time on: 2024-05-01T12:00:00Z, 2024-05-01, "
            "epoch seconds, or an age such as 24h or 7d.",
        ),
    ] = None,
    baseline_until: Annotated[
        str | None,
        typer.Option(
            "--baseline-until",
            metavar="TIME",
            help="Records before this time are the baseline; destinations first seen "
            "after it are reported as new. The report covers the records after it.",
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            metavar="FILE",
            help="A flow log holding the baseline (repeat for several); destinations "
            "of FILE... that it lacks are reported as new.",
        ),
    ] = None,
    local: Annotated[
        list[str] | None,
        typer.Option(
            "--local",
            metavar="CIDR",
            help="Our own addresses or CIDRs (the gateway's private IP): VPC connections "
            "to them are inbound, not destinations.",
        ),
    ] = None,
    output: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.TABLE,
    top: Annotated[
        int, typer.Option("--top", min=1, help="Rows in each top-talkers and rejected table.")
    ] = 10,
    max_keys: Annotated[
        int,
        typer.Option(
            "--max-keys",
            min=1,
            help="Most destinations (and sources, rejected groups, baseline entries) "
            "tracked; bounds memory. The report says when it is reached.",
        ),
    ] = DEFAULT_MAX_KEYS,
    max_malformed: Annotated[
        float,
        typer.Option(
            "--max-malformed",
            min=0.0,
            max=100.0,
            help="Percent of malformed lines a file may have before it counts as bad "
            "input (exit 2); a few bad lines are always tolerated and counted.",
        ),
    ] = DEFAULT_MAX_MALFORMED_PERCENT,
) -> None:
    """Report destinations outside --expect, connections to internal or metadata
    addresses, new destinations since a baseline, top talkers and rejected flows.

    Exit status: 0 nothing unexpected, 1 something unexpected found, 2 bad input
    (unreadable file, too many malformed lines, bad option), 3 could not run.
    """
    try:
        analysis = _analysis(files, expect, since, baseline_until, baseline, local, max_keys)
        inputs = _read_all(analysis, files, baseline or [])
        report = build_report(analysis, inputs, top, max_malformed)
        if output is Format.JSON:
            typer.echo(render_json(report))
        elif output is Format.MARKDOWN:
            typer.echo(render_markdown(report), nl=False)
        else:
            render_table(report, Console(highlight=False))
        sys.stdout.flush()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(COULD_NOT_RUN) from None
    except OSError as exc:  # stdout closed or full: the report could not be delivered
        _drop_stdout()
        typer.echo(f"error: could not write the report: {exc.strerror or exc}", err=True)
        raise typer.Exit(COULD_NOT_RUN) from None
    except Exception as exc:  # a bug or an exhausted machine: one line, never a traceback
        typer.echo(f"error: could not analyse the flow logs: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(COULD_NOT_RUN) from None
    for row in report["inputs"]:
        if row["error"]:
            typer.echo(f"error: {row['error']}", err=True)
        elif row["bad"]:
            typer.echo(
                f"error: {row['name']}: {row['malformed']} malformed lines of {row['lines']} "
                f"({row['records']} records read); is it a flow log?",
                err=True,
            )
    raise typer.Exit(report["exit_code"])


def _drop_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file descriptor (tests capture stdout)
        pass


def _analysis(
    files: list[str],
    expect: list[str] | None,
    since: str | None,
    baseline_until: str | None,
    baseline: list[str] | None,
    local: list[str] | None,
    max_keys: int,
) -> FlowAnalysis:
    if baseline and baseline_until:
        raise _usage_error("use either --baseline-until TIME or --baseline FILE, not both")
    if [*files, *(baseline or [])].count(STDIN) > 1:
        raise _usage_error("standard input ('-') can be read only once")
    try:
        expected = AddressSet(expect or [])
    except ValueError as exc:
        raise _usage_error(f"--expect: {exc}") from None
    try:
        ours = AddressSet(local or [])
    except ValueError as exc:
        raise _usage_error(f"--local: {exc}") from None
    if ours.names or ours.suffixes or ours.everything:
        raise _usage_error("--local takes addresses or CIDRs, not host names")
    times: dict[str, float | None] = {}
    for option, text in (("--since", since), ("--baseline-until", baseline_until)):
        try:
            times[option] = None if text is None else parse_time(text)
        except ValueError as exc:
            raise _usage_error(f"{option}: {exc}") from None
    start, until = times["--since"], times["--baseline-until"]
    if start is not None and until is not None and start >= until:
        raise _usage_error(
            "--since must be earlier than --baseline-until, or the baseline is empty"
        )
    return FlowAnalysis(
        expect=expected,
        local=ours,
        since=times["--since"],
        baseline_until=times["--baseline-until"],
        max_keys=max_keys,
    )


def _read_all(analysis: FlowAnalysis, files: list[str], baseline: list[str]) -> list[InputStats]:
    inputs: list[InputStats] = []
    if STDIN in [*files, *baseline] and sys.stdin.isatty():
        typer.echo("reading flow records from standard input (end with Ctrl-D)...", err=True)
    if baseline:
        analysis.begin_baseline_files(baseline)
        for name in baseline:
            stats = read_input(name, analysis)
            stats.name = f"{name} (baseline)"
            inputs.append(stats)
        analysis.end_baseline_files()
    for name in files:
        inputs.append(read_input(name, analysis))
    return inputs
