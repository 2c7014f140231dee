"""The result of `fixedip flows analyze` as JSON-ready data, and its exit status.

`build_report` turns a finished `FlowAnalysis` into the one dict every output format
renders (`flows_render`), so table, markdown and JSON always agree. Exit status follows
the monitoring convention: 0 nothing unexpected, 1 a finding, 2 bad input (an input
that could not be read, or more malformed lines than tolerated), 3 could not run.
"""

from __future__ import annotations

import heapq
from typing import Any

from fixedip.check.flows import FlowAnalysis
from fixedip.check.flows_input import InputStats
from fixedip.check.flows_match import format_time
from fixedip.check.flows_model import Destination, Tally

OK, UNEXPECTED, BAD_INPUT, COULD_NOT_RUN = 0, 1, 2, 3
# A file is bad input when nothing in it parsed, or when more than this many of its
# lines and more than --max-malformed percent of them are malformed.
TOLERATED_MALFORMED_LINES = 10
DEFAULT_MAX_MALFORMED_PERCENT = 1.0
# Findings listed per kind (the most flows first); `findings_total` counts them all, so a
# scan of a million fresh addresses does not become a report of a million rows.
MAX_FINDINGS_LISTED = 10_000


def build_report(
    analysis: FlowAnalysis, inputs: list[InputStats], top: int, max_malformed_percent: float
) -> dict[str, Any]:
    """The whole result as JSON-ready data; `exit_code` and `status` included."""
    dests = list(analysis.destinations.values())
    unexpected = sorted((d for d in dests if d.unexpected), key=_by_flows)
    # An internal address the operator listed in --expect is known, not a finding.
    checked = bool(analysis.expect)
    internal = sorted(
        (d for d in dests if d.internal is not None and (d.unexpected or not checked)),
        key=_by_flows,
    )
    new: list[Destination] = []
    if analysis.baseline is not None:
        baseline = analysis.baseline
        new = sorted(
            (d for d in dests if (d.host, d.port, d.protocol) not in baseline),
            key=lambda d: (d.first, d.name),
        )
    input_rows = [_input_row(stats, max_malformed_percent) for stats in inputs]
    bad = any(row["bad"] for row in input_rows)
    found = bool(unexpected or internal or new or analysis.untracked_findings)
    exit_code = BAD_INPUT if bad else (UNEXPECTED if found else OK)
    cap_hit = bool(
        analysis.untracked_records
        or analysis.untracked_sources
        or analysis.untracked_rejected
        or analysis.baseline_truncated
    )
    return {
        "status": {OK: "ok", UNEXPECTED: "unexpected", BAD_INPUT: "bad-input"}[exit_code],
        "exit_code": exit_code,
        "inputs": input_rows,
        "checks": {
            "expected": analysis.expect.text,
            "local": analysis.local.text,
            "since": format_time(analysis.since),
            "baseline_until": format_time(analysis.baseline_until),
            "baseline_files": analysis.baseline_files,
        },
        "totals": {
            "records": sum(stats.records for stats in inputs),
            "analysed": analysis.analysed,
            "before_since": analysis.before_since,
            "baseline_records": analysis.baseline_records,
            "bytes": analysis.total_bytes,
            "inbound_flows": analysis.inbound_flows,
            "inbound_bytes": analysis.inbound_bytes,
            "destinations": len(analysis.destinations),
            "sources": len(analysis.sources),
            "first": format_time(analysis.first),
            "last": format_time(analysis.last),
        },
        "cap": {
            "max_keys": analysis.max_keys,
            "hit": cap_hit,
            "untracked_records": analysis.untracked_records,
            "untracked_bytes": analysis.untracked_bytes,
            "untracked_findings": analysis.untracked_findings,
            "untracked_sources": analysis.untracked_sources,
            "untracked_rejected": analysis.untracked_rejected,
            "baseline_truncated": analysis.baseline_truncated,
        },
        "unexpected_destinations": [d.to_dict() for d in unexpected[:MAX_FINDINGS_LISTED]],
        "internal_destinations": [d.to_dict() for d in internal[:MAX_FINDINGS_LISTED]],
        "new_destinations": [d.to_dict() for d in new[:MAX_FINDINGS_LISTED]],
        "findings_total": {
            "unexpected_destinations": len(unexpected),
            "internal_destinations": len(internal),
            "new_destinations": len(new),
        },
        "top_destinations_by_bytes": [
            d.to_dict() for d in heapq.nlargest(top, dests, key=lambda d: (d.bytes, d.flows))
        ],
        "top_destinations_by_flows": [
            d.to_dict() for d in heapq.nlargest(top, dests, key=lambda d: (d.flows, d.bytes))
        ],
        "top_sources_by_bytes": _top_sources(analysis.sources, top, by_bytes=True),
        "top_sources_by_flows": _top_sources(analysis.sources, top, by_bytes=False),
        "rejected": [
            {
                "source": source,
                "destination": destination,
                "reason": reason,
                "flows": counter.flows,
                "first_seen": format_time(counter.first),
                "last_seen": format_time(counter.last),
            }
            for (source, destination, reason), counter in heapq.nlargest(
                top, analysis.rejected.items(), key=lambda item: item[1].flows
            )
        ],
        "rejected_total": sum(c.flows for c in analysis.rejected.values())
        + analysis.untracked_rejected,
        "notes": _notes(analysis, inputs, cap_hit),
    }


def _notes(analysis: FlowAnalysis, inputs: list[InputStats], cap_hit: bool) -> list[str]:
    notes = []
    if not analysis.analysed:
        notes.append(
            f"no flow records to analyse ({analysis.before_since} before --since, "
            f"{analysis.baseline_records} in the baseline)"
        )
    if not analysis.expect:
        notes.append("no --expect given: destinations are not checked against an expected set")
    elif not analysis.expect.has_networks and any(i.format.startswith("vpc") for i in inputs):
        notes.append(
            "--expect names no address or CIDR: VPC Flow Logs carry addresses only, so "
            "every VPC destination counts as unexpected"
        )
    if analysis.baseline is None:
        notes.append(
            "no baseline given (--baseline-until or --baseline): new destinations not checked"
        )
    if cap_hit:
        notes.append(
            f"the cap of {analysis.max_keys} tracked keys per table was hit: "
            f"{analysis.untracked_records} records to further destinations are in the totals "
            "but not listed; findings had a reserve of their own"
            + (
                f" and {analysis.untracked_findings} finding records still went unlisted"
                if analysis.untracked_findings
                else ""
            )
            + "; raise --max-keys to list more"
        )
    if analysis.baseline_truncated:
        notes.append(
            "the baseline held more destinations than --max-keys: some destinations "
            "reported as new may have been in the baseline"
        )
    return notes


def _by_flows(d: Destination) -> tuple[int, int, str]:
    return (-d.flows, -d.bytes, d.name)


def _top_sources(sources: dict[str, Tally], top: int, by_bytes: bool) -> list[dict[str, Any]]:
    def key(item: tuple[str, Tally]) -> tuple[int, int]:
        c = item[1]
        return (c.bytes, c.flows) if by_bytes else (c.flows, c.bytes)

    return [
        {
            "source": source,
            "flows": c.flows,
            "bytes": c.bytes,
            "first_seen": format_time(c.first),
            "last_seen": format_time(c.last),
        }
        for source, c in heapq.nlargest(top, sources.items(), key=key)
    ]


def input_is_bad(stats: InputStats, max_malformed_percent: float) -> bool:
    """Unreadable, nothing parsed, or malformed lines beyond the tolerance."""
    if stats.error is not None:
        return True
    if stats.malformed and not stats.records and not (stats.nodata or stats.skipdata):
        return True
    return (
        stats.malformed > TOLERATED_MALFORMED_LINES
        and stats.malformed * 100.0 > max_malformed_percent * max(stats.lines, 1)
    )


def _input_row(stats: InputStats, max_malformed_percent: float) -> dict[str, Any]:
    return {
        "name": stats.name,
        "format": stats.format,
        "lines": stats.lines,
        "records": stats.records,
        "malformed": stats.malformed,
        "nodata": stats.nodata,
        "skipdata": stats.skipdata,
        "not_flows": stats.not_flows,
        "error": stats.error,
        "bad": input_is_bad(stats, max_malformed_percent),
        "examples": list(stats.examples),
    }
