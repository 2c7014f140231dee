"""`--metrics-file`: the check's result in Prometheus' text format, for node_exporter's
textfile collector (a `fixedip check --watch` sidecar next to the gateway).

The file is written to a temporary name and renamed, so the collector never reads half
of it.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from fixedip.check.report import Report

_CODES = {"pass": 0, "warn": 1, "fail": 2, "unknown": 3}


def write_metrics(path: Path, report: Report, timestamp: float) -> None:
    registry = CollectorRegistry()
    status = Gauge(
        "fixedip_check_status",
        "Result of one fixedip check row: 0 pass, 1 warn, 2 fail, 3 unknown.",
        ["check", "subject"],
        registry=registry,
    )
    for row in report.rows:
        if row.status.value in _CODES:
            status.labels(row.check, row.subject).set(_CODES[row.status.value])
    Gauge(
        "fixedip_check_exit_code",
        "Exit status of the last fixedip check: 0 ok, 1 warning, 2 failure, 3 could not run.",
        registry=registry,
    ).set(report.exit_code)
    Gauge(
        "fixedip_check_last_run_timestamp_seconds",
        "When the last fixedip check finished (Unix time).",
        registry=registry,
    ).set(timestamp)
    egress = Gauge(
        "fixedip_check_egress_ip_info",
        "An egress IP the last check ran on (the public address the internet sees).",
        ["ip"],
        registry=registry,
    )
    for ip in report.egress_ips:
        egress.labels(ip).set(1)
    write_to_textfile(str(path), registry)
