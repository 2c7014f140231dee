"""What `fixedip flows analyze` reports: unexpected, internal and new destinations, top
talkers and rejected flows, from VPC Flow Logs and fixedip's flow log fixtures."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fixedip.check.flows import FlowAnalysis
from fixedip.check.flows_match import AddressSet, classify_address, parse_time
from fixedip.check.flows_report import build_report
from fixedip.policy.decision import Reason
from fixedip.policy.guard import DEFAULT_DENY, Guard
from tests.check.flows_helpers import (
    BASELINE_END,
    GATEWAY_LOG,
    NAT_GATEWAY,
    V2_HEADER,
    analyze,
    names,
)

VENDORS = ("--expect", "52.94.0.0/16", "--expect", "54.239.0.0/16")
GATEWAY_EXPECT = ("--expect", "api.stripe.com,*.commercetools.com", "--expect", "hooks.slack.com")


# --- internal and metadata addresses -------------------------------------------------


def test_metadata_and_private_destinations_in_vpc_logs_are_internal() -> None:
    run = analyze(V2_HEADER, *VENDORS)
    internal = {d["destination"]: d["internal"] for d in run.report["internal_destinations"]}
    assert internal["169.254.169.254:80"] == "metadata 169.254.169.254/32"
    assert internal["[fd00:ec2::254]:80"] == "metadata fd00:ec2::254/128"
    assert internal["10.0.7.21:6379"] == "private 10.0.0.0/8"
    assert run.exit_code == 1


def test_internal_labels_come_from_the_guard_deny_list() -> None:
    labels = {label for _, label in DEFAULT_DENY}
    report = analyze(V2_HEADER).report
    for d in report["internal_destinations"]:
        label, network = d["internal"].split(" ")
        assert label in labels
        assert any(str(net) == network for net, _ in DEFAULT_DENY)


def test_the_ipv4_fast_path_agrees_with_the_guard_everywhere() -> None:
    guard, expect = Guard(), AddressSet(["52.0.0.0/8", "10.1.0.0/16", "100.64.0.1"])
    samples = [
        f"{octet}.{rest}"
        for octet in range(256)
        for rest in ("0.0.0", "255.255.255", "64.1.2", "168.1.1", "254.169.254", "18.0.1", "0.2.1")
    ]
    for network, _ in DEFAULT_DENY:
        if network.version == 4:
            low, high = int(network.network_address), int(network.broadcast_address)
            edges = (low - 1, low, high, high + 1)
            samples += [str(ipaddress.IPv4Address(v)) for v in edges if 0 <= v < 2**32]
    for text in samples:
        address = ipaddress.ip_address(text)
        verdict = guard.vet(address, 0)
        info = classify_address(text, expect, AddressSet())
        assert info is not None
        assert info.internal == (None if verdict.reason is Reason.ALLOWED else verdict.rule), text
        assert info.expected == expect.matches_address(address), text


def test_gateway_guard_refusals_are_internal_even_for_host_names() -> None:
    report = analyze(GATEWAY_LOG).report
    internal = {d["destination"]: d["internal"] for d in report["internal_destinations"]}
    # a name whose DNS answer pointed inside: only the guard's rule says where
    assert internal["internal.evil.example:443"] == "private 10.0.0.0/8"
    assert internal["169.254.169.254:80"] == "metadata 169.254.169.254/32"
    assert set(internal) == {"internal.evil.example:443", "169.254.169.254:80"}


def test_an_internal_address_listed_in_expect_is_not_a_finding() -> None:
    report = analyze(V2_HEADER, *VENDORS, "--expect", "10.0.7.21/32").report
    assert "10.0.7.21:6379" not in names(report["internal_destinations"])
    assert "10.0.7.21:6379" not in names(report["unexpected_destinations"])
    assert "169.254.169.254:80" in names(report["internal_destinations"])


# --- direction of VPC records --------------------------------------------------------


def test_replies_add_bytes_to_the_destination_without_counting_as_flows() -> None:
    report = analyze(V2_HEADER).report
    vendor = next(d for d in report["top_destinations_by_bytes"] if d["host"] == "52.94.236.248")
    assert vendor["flows"] == 2  # two connections, each logged in both directions
    assert vendor["bytes"] == 4249 + 11230 + 8120 + 52340
    assert vendor["sources"] == ["10.0.1.5"]
    dns = next(d for d in report["top_destinations_by_bytes"] if d["host"] == "8.8.8.8")
    assert (dns["destination"], dns["flows"], dns["bytes"]) == ("8.8.8.8:53/udp", 1, 64 + 128)


def test_connections_from_the_internet_to_our_private_address_are_inbound() -> None:
    report = analyze(V2_HEADER).report
    everything = names(report["top_destinations_by_flows"]) + names(report["internal_destinations"])
    assert "10.0.1.5:22" not in everything
    assert report["totals"]["inbound_flows"] == 2
    scans = [r for r in report["rejected"] if r["reason"] == "REJECT inbound"]
    assert scans == [
        {
            "source": "45.79.112.203",
            "destination": "10.0.1.5:22",
            "reason": "REJECT inbound",
            "flows": 2,
            "first_seen": "2024-05-01T12:05:00Z",
            "last_seen": "2024-05-01T12:32:30Z",
        }
    ]


def test_local_marks_our_own_address_so_functions_calling_the_gateway_are_inbound() -> None:
    without = analyze(V2_HEADER, *VENDORS).report
    assert "10.0.1.5:3128" in names(without["internal_destinations"])
    with_local = analyze(V2_HEADER, *VENDORS, "--local", "10.0.1.5").report
    assert "10.0.1.5:3128" not in names(with_local["internal_destinations"])
    assert "10.0.1.5:3128" not in names(with_local["top_destinations_by_flows"])
    assert with_local["totals"]["inbound_flows"] == without["totals"]["inbound_flows"] + 1
    assert with_local["checks"]["local"] == ["10.0.1.5"]


def test_on_a_nat_gateway_the_packet_addresses_name_the_real_destination() -> None:
    report = analyze(NAT_GATEWAY, "--expect", "52.94.0.0/16").report
    destinations = names(report["top_destinations_by_flows"])
    assert sorted(destinations) == ["45.33.32.156:25", "52.94.236.248:443"]
    assert names(report["unexpected_destinations"]) == ["45.33.32.156:25"]
    assert report["internal_destinations"] == []  # never the NAT's own 10.0.0.220
    vendor = next(d for d in report["top_destinations_by_flows"] if d["port"] == 443)
    assert vendor["sources"] == ["10.0.1.5", "10.0.0.220"]


# --- the expected set ----------------------------------------------------------------


def test_vpc_destinations_outside_the_expected_cidrs_are_unexpected() -> None:
    report = analyze(V2_HEADER, *VENDORS, "--local", "10.0.1.5").report
    assert sorted(names(report["unexpected_destinations"])) == sorted(
        [
            "140.82.112.3:443",
            "169.254.169.254:80",
            "10.0.7.21:6379",
            "[fd00:ec2::254]:80",
            "8.8.8.8:53/udp",
            "45.33.32.156:25",
        ]
    )


def test_gateway_destinations_match_names_globs_and_cidrs() -> None:
    report = analyze(GATEWAY_LOG, *GATEWAY_EXPECT).report
    unexpected = names(report["unexpected_destinations"])
    assert sorted(unexpected) == sorted(
        [
            "169.254.169.254:80",
            "internal.evil.example:443",
            "pastebin.com:443",
            "files.example.net:443",
            "api.newvendor.io:443",
        ]
    )
    assert not any("VPC" in note for note in report["notes"])  # no VPC input here
    # a CIDR matches the address a name resolved to
    by_address = analyze(GATEWAY_LOG, *GATEWAY_EXPECT, "--expect", "93.184.215.0/24").report
    assert "files.example.net:443" not in names(by_address["unexpected_destinations"])


def test_expect_takes_bracketed_ipv6_networks_too() -> None:
    expect = AddressSet(["[2600:1f18::]/32", "fd00:ec2::254"])
    assert expect.matches_address(ipaddress.ip_address("2600:1f18:243e::5"))
    assert expect.matches_address(ipaddress.ip_address("fd00:ec2::254"))
    assert not expect.matches_address(ipaddress.ip_address("2600:1f19::1"))


def test_glob_matches_subdomains_but_never_the_apex() -> None:
    expect = AddressSet(["*.commercetools.com"])
    assert expect.matches_name("api.europe-west1.gcp.commercetools.com")
    assert expect.matches_name("API.Commercetools.com.")
    assert not expect.matches_name("commercetools.com")
    assert not expect.matches_name("evilcommercetools.com")


def test_without_expect_nothing_is_unexpected_and_the_report_says_why() -> None:
    report = analyze(GATEWAY_LOG).report
    assert report["unexpected_destinations"] == []
    assert any("no --expect" in note for note in report["notes"])


def test_expect_with_names_only_warns_that_vpc_logs_have_addresses_only() -> None:
    report = analyze(V2_HEADER, "--expect", "api.stripe.com").report
    assert any("VPC Flow Logs carry addresses only" in note for note in report["notes"])
    assert len(report["unexpected_destinations"]) == report["totals"]["destinations"]


def test_nothing_unexpected_exits_0() -> None:
    run = analyze(
        GATEWAY_LOG,
        *GATEWAY_EXPECT,
        "--expect",
        "files.example.net,api.newvendor.io,pastebin.com",
        "--since",
        "2024-05-01T12:33:00Z",
    )
    assert run.report["internal_destinations"] == []
    assert run.report["unexpected_destinations"] == []
    assert (run.exit_code, run.report["status"]) == (0, "ok")


# --- time: --since and the baseline ---------------------------------------------------


def test_since_skips_earlier_records() -> None:
    report = analyze(V2_HEADER, "--since", "2024-05-01T12:30:30Z").report
    assert report["totals"]["before_since"] == 9
    assert report["totals"]["first"] == "2024-05-01T12:30:30Z"
    assert "54.239.28.85:443" not in names(report["top_destinations_by_flows"])
    epoch = analyze(V2_HEADER, "--since", "1714566630").report
    assert epoch["totals"] == report["totals"]


def test_baseline_until_reports_destinations_first_seen_after_it() -> None:
    report = analyze(GATEWAY_LOG, *GATEWAY_EXPECT, "--baseline-until", BASELINE_END).report
    assert names(report["new_destinations"]) == [
        "169.254.169.254:80",
        "internal.evil.example:443",
        "pastebin.com:443",
        "files.example.net:443",
        "api.newvendor.io:443",
    ]
    assert report["new_destinations"][0]["first_seen"] == "2024-05-01T12:31:00Z"
    # api.stripe.com was used in the baseline, then again after it: known, not new
    assert "api.stripe.com:443" not in names(report["new_destinations"])
    assert "api.stripe.com:443" in names(report["top_destinations_by_flows"])
    assert report["totals"]["baseline_records"] == 4
    assert report["totals"]["analysed"] == 7


def test_baseline_files_make_everything_they_lack_new(tmp_path: Path) -> None:
    lines = GATEWAY_LOG.read_text().splitlines()
    baseline, window = tmp_path / "last-week.jsonl", tmp_path / "today.jsonl"
    baseline.write_text("\n".join(lines[:4]) + "\n")
    window.write_text("\n".join(lines[4:]) + "\n")
    by_file = analyze(window, "--baseline", baseline).report
    by_time = analyze(GATEWAY_LOG, "--baseline-until", BASELINE_END).report
    assert names(by_file["new_destinations"]) == names(by_time["new_destinations"])
    assert by_file["checks"]["baseline_files"] == [str(baseline)]
    assert by_file["inputs"][0]["name"] == f"{baseline} (baseline)"


def test_baseline_applies_to_vpc_logs_too() -> None:
    report = analyze(V2_HEADER, "--local", "10.0.1.5", "--baseline-until", BASELINE_END).report
    new = names(report["new_destinations"])
    assert "140.82.112.3:443" in new and "169.254.169.254:80" in new
    assert "52.94.236.248:443" not in new


def test_an_empty_window_exits_0_and_says_so() -> None:
    run = analyze(V2_HEADER, "--since", "2030-01-01")
    assert (run.exit_code, run.report["totals"]["analysed"]) == (0, 0)
    assert (
        "no flow records to analyse (19 before --since, 0 in the baseline)" in run.report["notes"]
    )


def test_relative_times_count_back_from_now() -> None:
    assert parse_time("24h", now=1_000_000.0) == 1_000_000.0 - 86_400
    assert parse_time("2024-05-01") == 1714521600.0
    assert parse_time("2024-05-01T14:00:00+02:00") == 1714564800.0


# --- top talkers and rejected flows -------------------------------------------------


def test_top_talkers_by_bytes_and_by_flows() -> None:
    report = analyze(GATEWAY_LOG, "--top", "2").report
    assert names(report["top_destinations_by_bytes"]) == [
        "files.example.net:443",
        "api.europe-west1.gcp.commercetools.com:443",
    ]
    by_flows = report["top_destinations_by_flows"]
    assert by_flows[0]["destination"] == "api.stripe.com:443" and by_flows[0]["flows"] == 4
    assert len(by_flows) == 2
    sources = {s["source"]: s for s in report["top_sources_by_bytes"]}
    assert sources["billing"]["bytes"] == 2100 + 5300 + 1900 + 4100 + 640 + 120 + 3_002_000 + 2000
    assert [s["source"] for s in report["top_sources_by_flows"]] == ["billing", "reports"]


def test_rejected_flows_carry_the_gateway_reasons_and_rules() -> None:
    report = analyze(GATEWAY_LOG).report
    rejected = {(r["source"], r["destination"]): r["reason"] for r in report["rejected"]}
    assert rejected == {
        ("billing", "169.254.169.254:80"): "guard_denied (metadata 169.254.169.254/32)",
        ("billing", "internal.evil.example:443"): "guard_denied (private 10.0.0.0/8)",
        ("reports", "pastebin.com:443"): "destination_not_allowed",
        ("10.0.2.99", "api.stripe.com:443"): "auth_invalid",
    }
    assert report["rejected_total"] == 4


def test_vpc_rejects_are_listed_by_direction() -> None:
    report = analyze(V2_HEADER).report
    reasons = {(r["destination"], r["reason"]) for r in report["rejected"]}
    assert reasons == {("45.33.32.156:25", "REJECT"), ("10.0.1.5:22", "REJECT inbound")}
    smtp = next(d for d in report["top_destinations_by_flows"] if d["port"] == 25)
    assert smtp["rejected"] == 1


def test_markdown_and_table_show_the_same_findings() -> None:
    markdown = analyze(V2_HEADER, *VENDORS, "--format", "markdown")
    assert markdown.exit_code == 1
    assert "## Internal or metadata destinations" in markdown.stdout
    assert "| [fd00:ec2::254]:80 (metadata fd00:ec2::254/128) |" in markdown.stdout
    table = analyze(V2_HEADER, *VENDORS, "--format", "table")
    assert table.exit_code == 1
    assert "[fd00:ec2::254]:80" in table.stdout  # log data is never taken for markup
    assert "169.254.169.254:80" in table.stdout


def test_long_finding_lists_are_cut_in_the_human_formats_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "sweep.log"
    log.write_text(
        "".join(
            f"2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 3.0.{i >> 8}.{i % 256} "
            f"40000 443 6 1 60 {1714564800 + i} {1714564860 + i} ACCEPT OK\n"
            for i in range(1_500)
        )
    )
    data = analyze(log, *VENDORS).report
    assert data["findings_total"]["unexpected_destinations"] == 1_500
    assert len(data["unexpected_destinations"]) == 1_500
    markdown = analyze(log, *VENDORS, "--format", "markdown").stdout
    assert "findings: 1500 unexpected destinations" in markdown
    assert "and 500 more (see --format json)" in markdown
    assert markdown.count("| 3.0.") == 1_000 + 2 * 10  # the findings + two top-10 tables


# --- bounded memory -----------------------------------------------------------------


def test_the_key_cap_bounds_every_table_and_findings_keep_a_reserve() -> None:
    cap = 50
    analysis = FlowAnalysis(expect=AddressSet(["52.0.0.0/8"]), max_keys=cap)
    for i in range(5_000):  # 5000 distinct expected destinations, from 5000 sources
        host = f"52.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        assert analysis.vpc_record(
            1714564800 + i, f"10.1.{i // 256}.{i % 256}", host, 40000, 443, "6", 100, 1, True
        )
    for i in range(20):  # then SSRF attempts
        assert analysis.vpc_record(
            1714570000 + i, "10.0.1.5", "169.254.169.254", 40000, 80 + i, "6", 1, 1, False
        )
    assert len(analysis.destinations) <= 3 * cap
    assert len(analysis.sources) <= cap and len(analysis.rejected) <= cap
    report = build_report(analysis, [], top=5, max_malformed_percent=1.0)
    assert len(report["internal_destinations"]) == 20  # not hidden by the flood
    assert report["cap"]["hit"] is True
    assert report["cap"]["untracked_records"] == 5_000 - cap
    assert any("cap of 50 tracked keys" in note for note in report["notes"])
    assert report["totals"]["analysed"] == 5_020
