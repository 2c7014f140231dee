"""Reading flow logs: VPC Flow Logs with and without a header, custom field orders, gzip
found by magic bytes, standard input, NODATA/SKIPDATA, malformed and overlong lines."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixedip.check.flows import FlowAnalysis
from fixedip.check.flows_input import MAX_LINE_CHARS
from fixedip.check.flows_read import parse_gateway_time, read_input
from fixedip.check.flows_vpc import header_fields
from tests.check.flows_helpers import (
    CUSTOM,
    GATEWAY_LOG,
    MALFORMED,
    V2_HEADER,
    V2_NO_HEADER,
    analyze,
    gzip_to,
    names,
)

V2_LINE = (
    "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 52.94.236.248 49152 443 6 20 4249 "
    "1714564800 1714564860 ACCEPT OK"
)


def comparable(report: dict) -> dict:
    """The parts of a report that do not depend on the input's name or format label."""
    keys = (
        "unexpected_destinations",
        "internal_destinations",
        "top_destinations_by_bytes",
        "top_sources_by_flows",
        "rejected",
        "totals",
    )
    return {key: report[key] for key in keys}


def test_v2_with_and_without_header_give_the_same_report() -> None:
    with_header = analyze(V2_HEADER).report
    without = analyze(V2_NO_HEADER).report
    assert with_header["inputs"][0]["format"] == "vpc (header)"
    assert without["inputs"][0]["format"] == "vpc"
    assert with_header["inputs"][0]["records"] == without["inputs"][0]["records"] == 19
    assert comparable(with_header) == comparable(without)


def test_nodata_and_skipdata_records_are_counted_not_analysed() -> None:
    row = analyze(V2_HEADER).report["inputs"][0]
    assert (row["nodata"], row["skipdata"], row["malformed"]) == (1, 1, 0)
    assert row["lines"] == 22  # header + 19 records + NODATA + SKIPDATA


def test_gzip_is_recognised_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    disguised = gzip_to(V2_HEADER, tmp_path / "flows.txt")
    plain_named_gz = tmp_path / "really-plain.log.gz"
    plain_named_gz.write_bytes(V2_HEADER.read_bytes())
    expected = comparable(analyze(V2_HEADER).report)
    assert comparable(analyze(disguised).report) == expected
    assert comparable(analyze(plain_named_gz).report) == expected


def test_custom_format_is_read_in_the_order_its_header_names() -> None:
    report = analyze(CUSTOM).report
    row = report["inputs"][0]
    assert row["format"] == "vpc (custom header)"
    assert (row["records"], row["nodata"], row["malformed"]) == (4, 1, 0)
    # bytes and packets swap places in this format: 4249 + the 11230 of the reply
    vendor = next(d for d in report["top_destinations_by_bytes"] if d["host"] == "52.94.236.248")
    assert (vendor["bytes"], vendor["packets"], vendor["flows"]) == (4249 + 11230, 38, 1)
    assert "10.20.30.40:5432" in names(report["internal_destinations"])


def test_header_accepts_format_string_and_underscore_spellings(tmp_path: Path) -> None:
    assert header_fields("${srcaddr} ${dstaddr} ${dstport}") == ("srcaddr", "dstaddr", "dstport")
    assert header_fields("account_id srcaddr dstaddr") == ("account-id", "srcaddr", "dstaddr")
    assert header_fields("2 123456789012 eni-1 10.0.1.5") is None
    assert header_fields("eni-0a1b2c3d ACCEPT OK") is None  # names nothing known
    # a field AWS adds later is carried along (and ignored) beside known ones
    assert header_fields("srcaddr dstaddr quantum-flux") == ("srcaddr", "dstaddr", "quantum-flux")
    log = tmp_path / "minimal.log"
    log.write_text(
        "${start} ${dstaddr} ${dstport} ${srcaddr} ${protocol} ${bytes} ${action}\n"
        "1714564800 169.254.169.254 80 10.0.1.5 6 320 ACCEPT\n"
        "1714564810 52.94.236.248 443 10.0.1.5 6 900 ACCEPT\n"
    )
    report = analyze(log).report
    assert report["inputs"][0]["records"] == 2
    assert names(report["internal_destinations"]) == ["169.254.169.254:80"]
    # no srcport field: a record is taken as logged, never as a reply
    assert report["top_destinations_by_flows"][0]["flows"] == 1


def test_a_cloudwatch_logs_export_has_a_timestamp_before_each_record(tmp_path: Path) -> None:
    export = tmp_path / "000000.gz"
    stamped = [
        f"2024-05-01T12:{i:02d}:00.000Z {line}"
        for i, line in enumerate(V2_NO_HEADER.read_text().splitlines())
    ]
    export.write_bytes(gzip.compress(("\n".join(stamped) + "\n").encode()))
    report = analyze(export).report
    assert report["inputs"][0]["format"] == "vpc (CloudWatch export)"
    assert comparable(report) == comparable(analyze(V2_NO_HEADER).report)


def test_concatenated_files_repeat_or_change_the_header(tmp_path: Path) -> None:
    joined = tmp_path / "joined.log"
    joined.write_text(V2_HEADER.read_text() + CUSTOM.read_text())
    row = analyze(joined).report["inputs"][0]
    assert (row["records"], row["malformed"]) == (19 + 4, 0)
    # S3 delivers one gzip member per file; `cat *.gz` makes a multi-member stream
    members = tmp_path / "members.gz"
    members.write_bytes(
        gzip.compress(V2_HEADER.read_bytes()) + gzip.compress(V2_HEADER.read_bytes())
    )
    assert analyze(members).report["inputs"][0]["records"] == 38


def test_malformed_lines_are_counted_with_examples_and_skipped() -> None:
    run = analyze(MALFORMED)
    row = run.report["inputs"][0]
    assert (row["records"], row["malformed"], row["bad"]) == (3, 6, False)
    assert row["examples"][0] == "line 2: 11 fields where the format has 14"
    assert row["examples"][1] == "line 3: a number field is not a number"
    assert row["examples"][2] == "line 4: an address field is not an IP address"
    # the good lines around the bad ones still count, including the SSRF-looking one
    assert names(run.report["internal_destinations"]) == ["169.254.169.254:80"]
    assert run.exit_code == 1


def test_an_overlong_line_is_skipped_without_being_buffered(tmp_path: Path) -> None:
    log = tmp_path / "long.log"
    with log.open("w") as out:
        out.write(V2_LINE + "\n")
        out.write("x" * (MAX_LINE_CHARS * 40) + "\n")  # 2.6 MB with no newline
        out.write(V2_LINE.replace("49152", "49153") + "\n")
        out.write("y" * (MAX_LINE_CHARS * 3))  # and one at the end, unterminated
    stats = read_input(str(log), FlowAnalysis())
    assert (stats.records, stats.malformed) == (2, 2)
    assert stats.examples[0] == f"line 2: longer than {MAX_LINE_CHARS} characters"


def test_a_last_line_without_newline_is_read(tmp_path: Path) -> None:
    log = tmp_path / "tail.log"
    log.write_text(V2_LINE + "\n" + V2_LINE)
    assert read_input(str(log), FlowAnalysis()).records == 2


def test_dash_reads_standard_input_plain_or_gzip() -> None:
    plain = analyze("-", stdin=V2_HEADER.read_bytes()).report
    packed = analyze("-", stdin=gzip.compress(V2_HEADER.read_bytes())).report
    assert plain["inputs"][0]["name"] == "-"
    assert plain["inputs"][0]["records"] == packed["inputs"][0]["records"] == 19
    assert comparable(plain) == comparable(packed)


def test_fixedip_log_is_recognised_and_local_requests_are_not_flows() -> None:
    row = analyze(GATEWAY_LOG).report["inputs"][0]
    assert row["format"] == "fixedip"
    assert (row["records"], row["not_flows"], row["malformed"]) == (11, 1, 0)


def test_fixedip_lines_that_are_not_flow_records_are_malformed(tmp_path: Path) -> None:
    log = tmp_path / "flow.jsonl"
    good = GATEWAY_LOG.read_text().splitlines()[0]
    log.write_text(
        "\n".join(
            [
                good,
                "[1, 2, 3]",
                '{"time": "yesterday", "host": "a.example", "port": 443}',
                '{"time": "2024-05-01T12:00:00Z", "host": 7, "port": 443}',
                '{"time": "2024-05-01T12:00:00Z", "host": "a.example", "port": 443, '
                '"resolved": "not-an-ip"}',
                "{truncated",
                good + " trailing",
                " " + good,
                good,
            ]
        )
    )
    stats = read_input(str(log), FlowAnalysis())
    assert (stats.records, stats.malformed) == (3, 6)  # surrounding blanks are fine


def test_gateway_times_that_are_not_dates_are_malformed(tmp_path: Path) -> None:
    log = tmp_path / "flow.jsonl"
    log.write_text(
        '{"time": "2024-13-45T99:00:00.000Z", "host": "a.example", "port": 443}\n'
        '{"time": "2024-05-01T12:00:00.000Z", "host": "a.example", "port": 443}\n'
    )
    stats = read_input(str(log), FlowAnalysis())
    assert (stats.records, stats.malformed) == (1, 1)


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00.123Z",
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.5Z",
        "2024-05-01T14:00:00+02:00",
        "2024-12-31T23:59:59.999Z",
    ],
)
def test_gateway_time_parsing_agrees_with_datetime(text: str) -> None:
    expected = datetime.fromisoformat(text).astimezone(UTC).timestamp()
    assert parse_gateway_time(text) == pytest.approx(expected, abs=1e-6)
    assert parse_gateway_time(text) == pytest.approx(expected, abs=1e-6)  # cached prefix
