"""`fixedip flows analyze` end to end: a log written by a real gateway, the installed
executable's exit codes (0 ok, 1 unexpected, 2 bad input, 3 could not run), standard
input, and the key cap on a generated large file."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import requests

from fixedip.check.flows import FlowAnalysis
from fixedip.check.flows_match import AddressSet
from fixedip.check.flows_read import read_input
from fixedip.check.flows_report import build_report
from tests.check.flows_helpers import (
    GATEWAY_LOG,
    V2_HEADER,
    V2_NO_HEADER,
    analyze,
    names,
    run_fixedip,
)
from tests.helpers import TOKENS, basic, read_flow_log, token_hash


def test_a_real_gateway_log_shows_the_refused_ssrf_attempts(
    make_gateway, dns, vendor, tmp_path: Path
) -> None:
    # Data only: the gateway refuses these before connecting, inside a loopback-only netns.
    dns.table["vendor.test"] = ["127.0.0.1"]
    dns.table["metadata.evil.test"] = ["169.254.169.254"]
    dns.table["pastebin.example"] = ["127.0.0.1"]
    gw = make_gateway(
        dns={"servers": [f"127.0.0.1:{dns.port}"]},
        clients=[
            {
                "name": "billing",
                "token_hash": token_hash("billing"),
                "allow": ["vendor.test:*", "*.evil.test:*", "169.254.169.254:*"],
                "connect_ports": [vendor.port],
            }
        ],
    )
    proxies = {"http": gw.proxy_url()}
    ok = requests.get(f"http://vendor.test:{vendor.port}/ok", proxies=proxies, timeout=5)
    assert ok.status_code == 200
    tunnelled = connect_and_get(gw, f"vendor.test:{vendor.port}")
    assert tunnelled.startswith(b"HTTP/1.1 200")
    for url in (
        "http://metadata.evil.test/latest/meta-data/iam/",  # DNS points at the metadata service
        "http://169.254.169.254/latest/api/token",
        "http://pastebin.example/raw/x",  # not in the allow rules
    ):
        assert requests.get(url, proxies=proxies, timeout=5).status_code == 403
    bad_token = {"http": gw.proxy_url("billing", "wrong")}
    assert requests.get("http://vendor.test/", proxies=bad_token, timeout=5).status_code == 407
    log = tmp_path / "flow.jsonl"
    assert len(read_flow_log(log, 6)) == 6

    run = run_fixedip("flows", "analyze", log, "--expect", "vendor.test", "--format", "json")
    assert run.exit_code == 1, run.stderr
    report = run.report
    assert report["inputs"][0]["format"] == "fixedip"
    internal = {d["destination"]: d["internal"] for d in report["internal_destinations"]}
    assert internal == {
        "metadata.evil.test:80": "metadata 169.254.169.254/32",
        "169.254.169.254:80": "metadata 169.254.169.254/32",
    }
    assert sorted(names(report["unexpected_destinations"])) == [
        "169.254.169.254:80",
        "metadata.evil.test:80",
        "pastebin.example:80",
    ]
    reasons = {(r["destination"], r["reason"]) for r in report["rejected"]}
    assert ("metadata.evil.test:80", "guard_denied (metadata 169.254.169.254/32)") in reasons
    assert ("pastebin.example:80", "destination_not_allowed") in reasons
    assert any(reason.startswith("auth_invalid") for _, reason in reasons)
    vendor_row = next(d for d in report["top_destinations_by_bytes"] if d["host"] == "vendor.test")
    assert vendor_row["addresses"] == ["127.0.0.1"]
    assert vendor_row["flows"] == 2  # the forwarded request and the tunnel
    assert vendor_row["bytes"] > len(tunnelled)
    assert TOKENS["billing"] not in run.stdout


def connect_and_get(gw, target: str) -> bytes:
    """A CONNECT tunnel through the gateway, one GET inside it; the bytes that came back."""
    auth = basic("billing", TOKENS["billing"])
    with socket.create_connection(gw.http, timeout=5) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(f"GET /t HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        body = b""
        while chunk := s.recv(65536):
            body += chunk
    return body


def test_exit_0_when_everything_is_expected() -> None:
    run = run_fixedip(
        "flows",
        "analyze",
        V2_NO_HEADER,
        "--local",
        "10.0.1.5",
        "--expect",
        "52.94.0.0/16,54.239.0.0/16,140.82.112.0/20,8.8.8.8,45.33.32.156",
        "--expect",
        "169.254.169.254,10.0.7.21,fd00:ec2::254",
    )
    assert run.exit_code == 0, run.stdout + run.stderr
    assert "status: ok (exit 0)" in run.stdout


def test_exit_1_and_a_table_when_something_unexpected_is_found() -> None:
    run = run_fixedip("flows", "analyze", V2_HEADER, "--expect", "52.94.0.0/16")
    assert run.exit_code == 1
    assert "Unexpected destinations" in run.stdout
    assert "169.254.169.254:80 (metadata 169.254.169.254/32)" in run.stdout


def test_exit_2_for_a_missing_file_but_the_others_are_still_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    run = run_fixedip("flows", "analyze", missing, V2_HEADER, "--format", "json")
    assert run.exit_code == 2
    assert f"error: {missing}: No such file or directory" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.report["status"] == "bad-input"
    assert "169.254.169.254:80" in names(run.report["internal_destinations"])


def test_exit_2_for_a_file_that_is_not_a_flow_log(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"meeting notes line {i}\n" for i in range(200)))
    run = run_fixedip("flows", "analyze", text)
    assert run.exit_code == 2
    assert f"error: {text}: 200 malformed lines of 200 (0 records read)" in run.stderr


def test_a_few_malformed_lines_are_tolerated_too_many_are_bad_input(tmp_path: Path) -> None:
    good = V2_NO_HEADER.read_text().splitlines()
    log = tmp_path / "mixed.log"
    log.write_text("\n".join(good * 3 + ["garbage"] * 12) + "\n")  # 57 good, 12 bad
    assert analyze(log).exit_code == 2
    assert analyze(log, "--max-malformed", "20").exit_code == 1  # 12 of 69 lines = 17 %
    log.write_text("\n".join(good * 3 + ["garbage"] * 10) + "\n")  # up to 10 always pass
    assert analyze(log).exit_code == 1


def test_exit_2_for_a_truncated_gzip_file_after_reading_what_it_could(tmp_path: Path) -> None:
    whole = gzip.compress(V2_HEADER.read_bytes() * 3000)  # 7 MB: more than one chunk
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    run = analyze(cut)
    assert run.exit_code == 2
    row = run.report["inputs"][0]
    assert row["error"].startswith(f"{cut}: broken gzip data after line ")
    assert row["records"] > 0


def test_exit_2_for_gzip_magic_on_something_else_and_for_a_directory(tmp_path: Path) -> None:
    fake = tmp_path / "fake.log"
    fake.write_bytes(b"\x1f\x8b not gzip at all")
    run = analyze(fake, tmp_path)
    assert run.exit_code == 2
    errors = [row["error"] for row in run.report["inputs"]]
    assert errors[0].startswith(f"{fake}: broken gzip data at the start: ")
    assert errors[1] == f"{tmp_path}: Is a directory"


def test_exit_2_for_bad_options() -> None:
    cases = [
        (("--since", "last tuesday"), "error: --since: 'last tuesday' is not a time"),
        (("--expect", "10.0.0.0/33"), "error: --expect: '10.0.0.0/33' is not a valid"),
        (("--expect", "bad..name"), "error: --expect: 'bad..name' has an empty label"),
        (("--expect", "api.stripe.com:443"), "error: --expect: 'api.stripe.com:443' is not a"),
        (("--local", "*"), "error: --local takes addresses or CIDRs"),
        (
            ("--since", "2024-05-02", "--baseline-until", "2024-05-01"),
            "error: --since must be earlier than --baseline-until",
        ),
        (("--local", "gateway.internal"), "error: --local takes addresses or CIDRs"),
        (
            ("--baseline-until", "2024-05-01", "--baseline", str(GATEWAY_LOG)),
            "error: use either --baseline-until TIME or --baseline FILE",
        ),
    ]
    for options, message in cases:
        run = analyze(V2_HEADER, *options)
        assert run.exit_code == 2, options
        assert run.stderr.startswith(message), (options, run.stderr)


def test_exit_3_when_the_report_cannot_be_written() -> None:
    with open("/dev/full", "wb") as full:
        run = run_fixedip("flows", "analyze", V2_HEADER, "--format", "json", stdout=full)
    assert run.exit_code == 3
    assert run.stderr.strip() == "error: could not write the report: No space left on device"


def test_standard_input_through_a_pipe() -> None:
    data = gzip.compress(GATEWAY_LOG.read_bytes())
    run = run_fixedip("flows", "analyze", "-", "--format", "json", stdin=data)
    assert run.exit_code == 1
    assert run.report["inputs"][0]["records"] == 11


def test_help_explains_the_exit_codes() -> None:
    run = run_fixedip("flows", "analyze", "--help")
    assert run.exit_code == 0
    assert "0 nothing" in run.stdout and "3 could not run" in run.stdout


def test_a_large_generated_file_is_analysed_within_the_key_cap(tmp_path: Path) -> None:
    cap, count = 200, 30_000
    log = tmp_path / "large.log.gz"
    with gzip.open(log, "wt") as out:
        for i in range(count):  # every line a new source and a new destination
            out.write(
                f"2 123456789012 eni-0a1b2c3d4e5f60718 10.{i % 7}.{(i >> 8) % 256}.{i % 256} "
                f"52.{i >> 16}.{(i >> 8) % 256}.{i % 256} {40000 + i % 20000} 443 6 3 "
                f"{100 + i % 900} {1714564800 + i} {1714564860 + i} "
                f"{'REJECT' if i % 3 == 0 else 'ACCEPT'} OK\n"
            )
        out.write(
            "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 169.254.169.254 49188 80 6 4 320 "
            "1714600000 1714600060 ACCEPT OK\n"
        )
    analysis = FlowAnalysis(
        expect=AddressSet(["52.0.0.0/8"]), baseline_until=1714564800 + count // 2, max_keys=cap
    )
    stats = read_input(str(log), analysis)
    assert stats.records == count + 1
    assert len(analysis.destinations) <= 3 * cap  # ordinary traffic + two findings reserves
    assert len(analysis.sources) <= cap
    assert len(analysis.rejected) <= cap
    assert analysis.baseline is not None and len(analysis.baseline) <= cap
    report = build_report(analysis, [stats], top=10, max_malformed_percent=1.0)
    assert report["cap"]["hit"] and report["cap"]["baseline_truncated"]
    tracked = sum(d.flows for d in analysis.destinations.values())
    assert tracked + report["cap"]["untracked_records"] == report["totals"]["analysed"]
    assert "169.254.169.254:80" in names(report["internal_destinations"])
