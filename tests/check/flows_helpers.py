"""Running `fixedip flows analyze` in tests: in-process through typer's CliRunner (the
real command, fast) or as the installed executable (exit codes, stdin, closed stdout)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from click.testing import CliRunner

from fixedip.cli.app import app

FIXTURES = Path(__file__).parent / "flows_fixtures"
FIXEDIP = Path(sys.executable).parent / "fixedip"
# The whole `fixedip` command, built once (typer builds it anew on every invoke).
COMMAND = typer.main.get_command(app)
V2_HEADER = FIXTURES / "vpc_v2_header.log"
V2_NO_HEADER = FIXTURES / "vpc_v2_noheader.log"
CUSTOM = FIXTURES / "vpc_custom.log"
MALFORMED = FIXTURES / "vpc_malformed.log"
NAT_GATEWAY = FIXTURES / "vpc_nat_gateway.log"  # pkt-srcaddr/pkt-dstaddr, as on a NAT's ENI
GATEWAY_LOG = FIXTURES / "gateway_flow.jsonl"
BASELINE_END = "2024-05-01T12:30:00Z"  # every fixture has records on both sides of it


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data


def analyze(*args: str | Path, stdin: bytes | None = None) -> Run:
    """`fixedip flows analyze ARGS --format json` (unless ARGS names a format), in-process."""
    argv = ["flows", "analyze", *map(str, args)]
    if "--format" not in argv:
        argv += ["--format", "json"]
    result = CliRunner().invoke(COMMAND, argv, input=stdin, catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def run_fixedip(*args: str | Path, stdin: bytes | None = None, stdout: Any = None) -> Run:
    """The installed `fixedip` executable, as an operator or a cron job runs it."""
    done = subprocess.run(
        [str(FIXEDIP), *map(str, args)],
        input=stdin,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        check=False,
    )
    out = done.stdout.decode() if done.stdout else ""
    return Run(done.returncode, out, done.stderr.decode())


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["destination"] for item in items]


def gzip_to(source: Path, target: Path) -> Path:
    target.write_bytes(gzip.compress(source.read_bytes()))
    return target
