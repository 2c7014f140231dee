"""The flow report for people (a rich table, markdown) and machines (JSON).

Each renderer takes the dict built by `flows_report.build_report`, so the three formats can
never disagree. JSON lists up to `flows_report.MAX_FINDINGS_LISTED` findings of each
kind, the human formats the first `MAX_FINDINGS_SHOWN`; both say how many there are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

MAX_FINDINGS_SHOWN = 1_000

# (report key, title, what it means)
FINDINGS = (
    (
        "unexpected_destinations",
        "Unexpected destinations",
        "not matched by --expect",
    ),
    (
        "internal_destinations",
        "Internal or metadata destinations",
        "the SSRF guard's deny list",
    ),
    (
        "new_destinations",
        "New destinations",
        "not seen in the baseline",
    ),
)
TALKERS = (
    ("top_destinations_by_bytes", "Top destinations by bytes"),
    ("top_destinations_by_flows", "Top destinations by flows"),
)
SOURCES = (
    ("top_sources_by_bytes", "Top sources by bytes"),
    ("top_sources_by_flows", "Top sources by flows"),
)
_FINDING_COLUMNS = (
    "destination",
    "flows",
    "bytes",
    "rejected",
    "first seen",
    "last seen",
    "sources",
)
_TALKER_COLUMNS = ("destination", "flows", "bytes", "rejected", "sources")
_SOURCE_COLUMNS = ("source", "flows", "bytes", "first seen", "last seen")
_REJECT_COLUMNS = ("source", "destination", "reason", "flows", "first seen", "last seen")
_INPUT_COLUMNS = ("input", "format", "records", "malformed", "nodata/skipdata", "problem")


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def human_bytes(n: int) -> str:
    """`1.5 MiB`; exact below 1 KiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_time(iso: str | None) -> str:
    """`2024-05-01 12:00:00` from the report's ISO 8601 UTC (the summary says UTC)."""
    return "-" if not iso else iso[:19].replace("T", " ")


def _dest_row(d: dict[str, Any], with_label: bool, with_times: bool) -> list[str]:
    destination = d["destination"]
    if with_label and d["internal"]:
        destination += f" ({d['internal']})"
    row = [destination, str(d["flows"]), human_bytes(d["bytes"]), str(d["rejected"])]
    if with_times:
        row += [short_time(d["first_seen"]), short_time(d["last_seen"])]
    return [*row, ", ".join(d["sources"])]


def _source_row(s: dict[str, Any]) -> list[str]:
    return [
        s["source"],
        str(s["flows"]),
        human_bytes(s["bytes"]),
        short_time(s["first_seen"]),
        short_time(s["last_seen"]),
    ]


def _reject_row(r: dict[str, Any]) -> list[str]:
    return [
        r["source"],
        r["destination"],
        r["reason"],
        str(r["flows"]),
        short_time(r["first_seen"]),
        short_time(r["last_seen"]),
    ]


def _input_row(i: dict[str, Any]) -> list[str]:
    problem = i["error"] or ("; ".join(i["examples"]) if i["malformed"] else "")
    if i["bad"] and not i["error"]:
        problem = "too many malformed lines: " + problem if i["records"] else "nothing parsed"
    return [
        i["name"],
        i["format"],
        str(i["records"]),
        str(i["malformed"]),
        f"{i['nodata']}/{i['skipdata']}",
        problem,
    ]


def _summary(report: dict[str, Any]) -> list[str]:
    totals, checks = report["totals"], report["checks"]
    lines = [
        f"status: {report['status']} (exit {report['exit_code']})",
        f"{totals['analysed']} records analysed of {totals['records']} read "
        f"({short_time(totals['first'])} to {short_time(totals['last'])} UTC); "
        f"{totals['destinations']} destinations, {totals['sources']} sources, "
        f"{human_bytes(totals['bytes'])}",
    ]
    if totals["before_since"]:
        lines.append(f"{totals['before_since']} records before --since {checks['since']} skipped")
    if checks["baseline_until"] or checks["baseline_files"]:
        where = (
            f"before {checks['baseline_until']}"
            if checks["baseline_until"]
            else "in " + ", ".join(checks["baseline_files"])
        )
        lines.append(f"baseline: {totals['baseline_records']} records {where}")
    if totals["inbound_flows"] or totals["inbound_bytes"]:
        lines.append(
            f"inbound (to our own addresses, not destinations): {totals['inbound_flows']} "
            f"flows, {human_bytes(totals['inbound_bytes'])}"
        )
    totals = report["findings_total"]
    counts = ", ".join(
        f"{totals[key]} {title.lower()}" for key, title, _ in FINDINGS if totals[key]
    )
    lines.append(f"findings: {counts or 'none'}; {report['rejected_total']} rejected flows")
    return lines


def _sections(
    report: dict[str, Any],
) -> list[tuple[str, tuple[str, ...], list[list[str]], str | None]]:
    """(title, columns, rows, footnote) for every non-empty section, in display order."""
    out: list[tuple[str, tuple[str, ...], list[list[str]], str | None]] = []
    inputs = report["inputs"]
    if any(
        i["malformed"] or i["error"] or i["bad"] or i["nodata"] or i["skipdata"] for i in inputs
    ):
        out.append(("Inputs", _INPUT_COLUMNS, [_input_row(i) for i in inputs], None))
    for key, title, meaning in FINDINGS:
        items = report[key]
        if not items:
            continue
        shown = items[:MAX_FINDINGS_SHOWN]
        more = report["findings_total"][key] - len(shown)
        note = f"and {more} more (see --format json)" if more else None
        label = key == "internal_destinations"
        rows = [_dest_row(d, with_label=label, with_times=True) for d in shown]
        out.append((f"{title} ({meaning})", _FINDING_COLUMNS, rows, note))
    for key, title in TALKERS:
        if report[key]:
            rows = [_dest_row(d, with_label=True, with_times=False) for d in report[key]]
            out.append((title, _TALKER_COLUMNS, rows, None))
    for key, title in SOURCES:
        if report[key]:
            out.append((title, _SOURCE_COLUMNS, [_source_row(s) for s in report[key]], None))
    if report["rejected"]:
        rows = [_reject_row(r) for r in report["rejected"]]
        shown = sum(r["flows"] for r in report["rejected"])
        more = report["rejected_total"] - shown
        note = f"and {more} more rejected flows in smaller groups" if more > 0 else None
        out.append(("Rejected flows", _REJECT_COLUMNS, rows, note))
    return out


def render_table(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables, findings first."""
    style = {0: "green", 1: "yellow", 2: "red"}.get(report["exit_code"], "red")
    summary = _summary(report)
    # Cells hold log data ("[fd00:ec2::254]:80"): printed as Text, never parsed as markup.
    console.print(Text(f"fixedip flows: {summary[0]}", style=f"bold {style}"))
    for line in summary[1:]:
        console.print(Text(line))
    for title, columns, rows, note in _sections(report):
        table = Table(title=escape(title), title_justify="left", show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
        if note:
            console.print(Text(f"  {note}"))
    for note in report["notes"]:
        console.print(Text(f"note: {note}"))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as GitHub-flavoured markdown (a CI summary, a ticket)."""
    summary = _summary(report)
    out = ["# fixedip flows analyze", "", f"**{summary[0]}**", ""]
    out += [f"- {line}" for line in summary[1:]]
    cell: Callable[[str], str] = _md_cell
    for title, columns, rows, note in _sections(report):
        out += ["", f"## {title}", ""]
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "|".join("---" for _ in columns) + "|")
        out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        if note:
            out += ["", note]
    if report["notes"]:
        out += ["", "## Notes", ""]
        out += [f"- {note}" for note in report["notes"]]
    return "\n".join(out) + "\n"
