"""The result of `fixedip check`: rows of pass / warn / fail / unknown, each with a reason.

Exit status follows the monitoring convention (Nagios and its heirs): 0 every row passed,
1 a warning or an unknown (a blocklist that refused to answer is not "clean"), 2 a
failure, 3 the check could not run (no echo endpoint answered, the gateway could not be
reached, an input file could not be read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rich.console import Console
from rich.table import Table

OK, WARNING, FAILURE, COULD_NOT_RUN = 0, 1, 2, 3


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"
    SKIP = "skip"  # the check does not apply here (e.g. --via is not a fixedip gateway)

    @property
    def exit_code(self) -> int:
        return {"pass": OK, "skip": OK, "warn": WARNING, "unknown": WARNING, "fail": FAILURE}[
            self.value
        ]


_STYLE = {"pass": "green", "warn": "yellow", "fail": "red", "unknown": "magenta", "skip": "dim"}


@dataclass(frozen=True)
class Row:
    """One finding. `check` names the test, `subject` what it was run on (an IP, an
    endpoint, a blocklist zone and IP); (check, subject) identifies a row across runs."""

    check: str
    subject: str
    status: Status
    reason: str
    data: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.subject)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.check,
            "subject": self.subject,
            "status": self.status.value,
            "reason": self.reason,
        }
        if self.data:
            out["data"] = self.data
        return out


class CheckError(Exception):
    """The check could not run at all; the message says what to do (exit status 3)."""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    egress_ips: list[str] = field(default_factory=list)  # the public IPs that were checked
    could_not_run: list[str] = field(default_factory=list)
    checked_at: str = ""

    def add(self, row: Row) -> None:
        self.rows.append(row)

    @property
    def exit_code(self) -> int:
        if self.could_not_run:
            return COULD_NOT_RUN
        return max((r.status.exit_code for r in self.rows), default=OK)

    def to_json(self) -> dict[str, Any]:
        counts = {s.value: 0 for s in Status}
        for row in self.rows:
            counts[row.status.value] += 1
        return {
            "checked_at": self.checked_at,
            "exit_code": self.exit_code,
            "egress_ips": self.egress_ips,
            "could_not_run": self.could_not_run,
            "counts": counts,
            "rows": [r.to_json() for r in self.rows],
        }

    def render(self, console: Console, title: str = "fixedip check") -> None:
        console.print(rows_table(self.rows, title))
        for reason in self.could_not_run:
            console.print(f"[red]could not run:[/] {reason}")
        console.print(f"exit status {self.exit_code}")


def rows_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for column in ("check", "subject", "status", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = _STYLE[row.status.value]
        table.add_row(row.check, row.subject, f"[{style}]{row.status.value}[/]", row.reason)
    return table


def changes(before: list[Row], after: list[Row]) -> list[dict[str, Any]]:
    """What differs between two runs: rows whose status or reason changed, new rows, and
    rows that disappeared (with status "gone")."""
    old = {r.key: r for r in before}
    new = {r.key: r for r in after}
    out: list[dict[str, Any]] = []
    for key, row in new.items():
        prev = old.get(key)
        if prev is None or (prev.status, prev.reason) != (row.status, row.reason):
            entry = row.to_json()
            entry["was"] = prev.status.value if prev else None
            out.append(entry)
    for key, row in old.items():
        if key not in new:
            out.append(
                {
                    "check": row.check,
                    "subject": row.subject,
                    "status": "gone",
                    "reason": "no longer reported",
                    "was": row.status.value,
                }
            )
    return out


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
