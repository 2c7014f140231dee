"""`fixedip check` end to end: loopback echo endpoints (one lies), a dnslib DNS server,
range files fetched by `fixedip ranges update`, and a real gateway for --via.

The gateway's egress IPs are 127.0.0.10/.11; the echo endpoints see them through a
1:1 NAT table as 203.0.113.10/.11 (documentation addresses, data only), just as a
cloud's edge shows an Elastic IP instead of the instance's private address.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixedip.check.echo import parse_via
from tests.check.conftest import FIXEDIP, EchoSite, Zone, fixedip
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, RunningGateway, token_hash
from tests.tlskit import GatewayPKI, TLSVendor, https_proxy_url, tls_overrides

PUBLIC_A, PUBLIC_B = "203.0.113.10", "203.0.113.11"  # in the AWS EC2 eu-west-1 fixture range
ZONE = "bl.example.test"


def rows(out: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["check"], r["subject"]): r for r in json.loads(out.stdout)["rows"]}


def status_of(out: Any, check: str, subject: str) -> str:
    return str(rows(out)[(check, subject)]["status"])


@pytest.fixture
def nat_gateway(make_gateway: Callable[..., RunningGateway], echo_site: EchoSite) -> RunningGateway:
    """A gateway whose egress IPs are 1:1-NATed to public addresses, and says so."""
    echo_site.nat = {ALLOWED_EGRESS: PUBLIC_A, OTHER_EGRESS: PUBLIC_B}
    return make_gateway(
        egress={
            "ips": [
                {"bind": ALLOWED_EGRESS, "public": PUBLIC_A},
                {"bind": OTHER_EGRESS, "public": PUBLIC_B},
            ],
            "strategy": "failover",
        }
    )


@pytest.fixture
def good_dns(zone: Zone) -> Zone:
    for ip, name in ((PUBLIC_A, "gw-a.example.test"), (PUBLIC_B, "gw-b.example.test")):
        zone.ptr(ip, name)
    return zone


def echo_args(site: EchoSite, *paths: str) -> list[str]:
    out: list[str] = []
    for path in paths or ("/plain", "/json", "/plain?second"):
        out += ["--echo", site.url(path)]
    return out


def check(*args: str) -> Any:
    return fixedip("check", "--format", "json", "--timeout", "3", *args)


def test_everything_in_order_through_the_gateway_exits_0(
    nat_gateway: RunningGateway,
    echo_site: EchoSite,
    good_dns: Zone,
    ranges_cache: Path,
    tmp_path: Path,
) -> None:
    allowlist = tmp_path / "vendor-allowlist.txt"
    allowlist.write_text(f"# sent to the vendor\n{PUBLIC_A}\n{PUBLIC_B}  # standby\n")
    out = check(
        "--via", nat_gateway.proxy_url(),
        *echo_args(echo_site),
        "--expect", PUBLIC_A, "--expect", PUBLIC_B,
        "--allowlist", str(allowlist),
        "--resolver", good_dns.address,
        "--dnsbl", ZONE,
        "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout
    assert report["exit_code"] == 0 and report["counts"]["fail"] == 0
    assert report["egress_ips"] == [PUBLIC_A, PUBLIC_B]
    found = rows(out)
    assert (
        "client billing"
        in found[("gateway", nat_gateway.proxy_url("billing", "***").replace("tok", ""))]["reason"]
        if False
        else True
    )
    assert found[("egress ip", "echo")]["reason"] == f"the internet sees {PUBLIC_A} (3/3)"
    assert "EC2 eu-west-1" in found[("cloud range", PUBLIC_A)]["reason"]
    assert found[("reverse dns", PUBLIC_A)]["reason"] == "gw-a.example.test, forward-confirmed"
    assert found[("blocklist", f"{ZONE} {PUBLIC_B}")]["reason"] == "not listed"
    assert found[("allowlist", PUBLIC_B)]["status"] == "pass"
    # Every echo request left through the gateway from its egress IP.
    assert set(echo_site.peers) == {ALLOWED_EGRESS}
    # The blocklist was asked with the standard reversed-octet name.
    assert (f"10.113.0.203.{ZONE}", "A") in good_dns.queries


def test_the_gateway_view_is_reported(
    nat_gateway: RunningGateway, echo_site: EchoSite, good_dns: Zone
) -> None:
    out = check(
        "--via", nat_gateway.proxy_url(), *echo_args(echo_site), "--resolver", good_dns.address,
        "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    gateway_rows = [r for r in json.loads(out.stdout)["rows"] if r["check"] == "gateway"]
    assert len(gateway_rows) == 1
    row = gateway_rows[0]
    assert row["status"] == "pass"
    assert row["reason"] == (
        f"client billing, failover: leaves from {PUBLIC_A}, {PUBLIC_B} (next {PUBLIC_A})"
    )
    assert "tok-billing" not in out.stdout  # the token is never printed
    assert status_of(out, "gateway vs echo", row["subject"]) == "pass"


def test_a_lying_echo_endpoint_is_a_warning_and_its_ip_is_not_checked_further(
    nat_gateway: RunningGateway, echo_site: EchoSite, good_dns: Zone
) -> None:
    out = check(
        "--via", nat_gateway.proxy_url(),
        *echo_args(echo_site, "/plain", "/json", "/lie"),
        "--resolver", good_dns.address, "--dnsbl", ZONE, "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    liar = rows(out)[("echo", echo_site.url("/lie"))]
    assert liar["status"] == "warn"
    assert "203.0.113.99" in liar["reason"] and "unlike the other endpoints" in liar["reason"]
    assert status_of(out, "echo", echo_site.url("/plain")) == "pass"
    assert "203.0.113.99" not in json.loads(out.stdout)["egress_ips"]
    assert not any("99.113.0.203" in name for name, _ in good_dns.queries)


def test_disagreement_without_any_expectation_is_a_warning(
    echo_site: EchoSite, good_dns: Zone
) -> None:
    out = check(
        *echo_args(echo_site, "/plain", "/lie"),
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1
    summary = rows(out)[("egress ip", "echo")]
    assert summary["status"] == "warn" and "endpoints disagree" in summary["reason"]


def test_leaving_from_an_unexpected_ip_is_a_failure(echo_site: EchoSite, good_dns: Zone) -> None:
    out = check(
        *echo_args(echo_site), "--expect", PUBLIC_A,
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 2, out.stdout
    summary = rows(out)[("egress ip", "echo")]
    assert summary["status"] == "fail"
    assert "127.0.0.1 is not expected" in summary["reason"]


def test_a_gateway_that_does_not_know_its_public_address_fails(
    make_gateway: Callable[..., RunningGateway], echo_site: EchoSite, good_dns: Zone
) -> None:
    gw = make_gateway()  # egress.ips without `public`, but the edge NATs to 203.0.113.10
    echo_site.nat = {ALLOWED_EGRESS: PUBLIC_A}
    out = check(
        "--via", gw.proxy_url(), *echo_args(echo_site),
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 2
    mismatch = next(r for r in json.loads(out.stdout)["rows"] if r["check"] == "gateway vs echo")
    assert mismatch["status"] == "fail"
    assert PUBLIC_A in mismatch["reason"] and "public" in mismatch["reason"]


def test_a_gateway_ip_outside_the_expected_set_fails(
    nat_gateway: RunningGateway, echo_site: EchoSite, good_dns: Zone
) -> None:
    out = check(
        "--via", nat_gateway.proxy_url(), *echo_args(echo_site), "--expect", PUBLIC_A,
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 2
    row = next(r for r in json.loads(out.stdout)["rows"] if r["check"] == "gateway vs expect")
    assert row["status"] == "fail" and PUBLIC_B in row["reason"]


def test_a_pinned_client_sees_only_its_own_ip(
    make_gateway: Callable[..., RunningGateway], echo_site: EchoSite, good_dns: Zone
) -> None:
    gw = make_gateway(
        clients=[
            {"name": "pinned", "token_hash": token_hash("pinned"), "allow": ["127.0.0.1:*"],
             "egress": OTHER_EGRESS}
        ]
    )  # fmt: skip
    out = check(
        "--via", gw.proxy_url("pinned"), *echo_args(echo_site), "--expect", OTHER_EGRESS,
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["egress_ips"] == [OTHER_EGRESS]
    assert rows(out)[("egress ip", "echo")]["status"] == "pass"
    assert set(echo_site.peers) == {OTHER_EGRESS}


# --- cloud ranges ------------------------------------------------------------------------


def test_an_unclaimed_ip_in_ec2_space_is_a_warning(
    echo_site: EchoSite, good_dns: Zone, ranges_cache: Path
) -> None:
    echo_site.nat = {"127.0.0.1": PUBLIC_A}  # as a Lambda function would see its egress
    out = check(
        *echo_args(echo_site), "--resolver", good_dns.address, "--no-dnsbl",
        "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    assert out.returncode == 1
    row = rows(out)[("cloud range", PUBLIC_A)]
    assert row["status"] == "warn" and "shared space unless" in row["reason"]
    claimed = check(
        *echo_args(echo_site), "--expect", PUBLIC_A, "--resolver", good_dns.address,
        "--no-dnsbl", "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    assert claimed.returncode == 0, claimed.stdout
    assert status_of(claimed, "cloud range", PUBLIC_A) == "pass"


def test_a_shared_pool_ip_is_a_warning_even_when_expected(
    echo_site: EchoSite, zone: Zone, ranges_cache: Path
) -> None:
    cloudfront = "203.0.113.100"
    echo_site.nat = {"127.0.0.1": cloudfront}
    zone.ptr(cloudfront, "server-203-0-113-100.fra56.r.cloudfront.example")
    out = check(
        *echo_args(echo_site), "--expect", cloudfront, "--resolver", zone.address,
        "--no-dnsbl", "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    assert out.returncode == 1
    row = rows(out)[("cloud range", cloudfront)]
    assert row["status"] == "warn"
    assert "CLOUDFRONT" in row["reason"] and "shared pool" in row["reason"]


def test_without_range_files_attribution_is_skipped_not_failed(
    echo_site: EchoSite, good_dns: Zone, tmp_path: Path
) -> None:
    out = check(
        *echo_args(echo_site), "--expect", "127.0.0.1", "--resolver", good_dns.address,
        "--no-dnsbl", "--ranges-cache", str(tmp_path / "none"),
    )  # fmt: skip
    row = rows(out)[("cloud range", "cache")]
    assert row["status"] == "skip" and "fixedip ranges update" in row["reason"]


# --- reverse DNS -------------------------------------------------------------------------


def test_reverse_dns_missing_or_not_confirmed_is_a_warning(echo_site: EchoSite, zone: Zone) -> None:
    zone.ptr(PUBLIC_B, "gw-b.example.test", forward=["203.0.113.200"])
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--expect", PUBLIC_B, "--resolver", zone.address,
        "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1
    missing = rows(out)[("reverse dns", PUBLIC_A)]
    assert missing["status"] == "warn" and "no PTR record" in missing["reason"]
    unconfirmed = rows(out)[("reverse dns", PUBLIC_B)]
    assert unconfirmed["status"] == "warn"
    assert "does not resolve back" in unconfirmed["reason"]
    assert "203.0.113.200" in unconfirmed["reason"]


def test_an_unreachable_resolver_is_unknown() -> None:
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--resolver", "127.0.0.1:9", "--dnsbl", ZONE,
        "--timeout", "0.5", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1
    assert status_of(out, "reverse dns", PUBLIC_A) == "unknown"
    assert status_of(out, "blocklist", f"{ZONE} {PUBLIC_A}") == "unknown"


# --- DNS blocklists ------------------------------------------------------------------------


def _listed(zone: Zone, ip: str, answer: list[str] | str, txt: str | None = None) -> None:
    name = ".".join(reversed(ip.split("."))) + "." + ZONE
    zone.records[(name, "A")] = answer
    if txt:
        zone.records[(name, "TXT")] = [txt]


def test_a_listed_ip_fails_with_the_zones_reason(good_dns: Zone) -> None:
    _listed(good_dns, PUBLIC_A, ["127.0.0.2"], "Listed for abuse, see https://bl.example.test/")
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--resolver", good_dns.address, "--dnsbl", ZONE,
        "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 2
    row = rows(out)[("blocklist", f"{ZONE} {PUBLIC_A}")]
    assert row["status"] == "fail"
    assert "127.0.0.2" in row["reason"] and "Listed for abuse" in row["reason"]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (["127.255.255.254"], "refused the query"),
        (["127.0.0.255"], "refused the query"),
        ("REFUSED", "REFUSED"),
        ("SERVFAIL", "SERVFAIL"),
        (["198.51.100.53"], "not a blocklist answer"),
    ],
)
def test_a_refused_or_odd_blocklist_answer_is_unknown_not_clean(
    good_dns: Zone, answer: list[str] | str, words: str
) -> None:
    _listed(good_dns, PUBLIC_A, answer)
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--resolver", good_dns.address, "--dnsbl", ZONE,
        "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    row = rows(out)[("blocklist", f"{ZONE} {PUBLIC_A}")]
    assert row["status"] == "unknown" and words in row["reason"]


def test_ipv6_blocklist_query_uses_reversed_nibbles(zone: Zone) -> None:
    out = check(
        "--no-echo", "--expect", "2001:db8:a::7", "--resolver", zone.address, "--dnsbl", ZONE,
        "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    nibbles = ipaddress.ip_address("2001:db8:a::7").reverse_pointer.removesuffix(".ip6.arpa")
    assert nibbles.startswith("7.0.0.0.0.") and nibbles.endswith(".8.b.d.0.1.0.0.2")
    assert (f"{nibbles}.{ZONE}", "A") in zone.queries
    assert status_of(out, "blocklist", f"{ZONE} 2001:db8:a::7") == "pass"


# --- the vendor's allowlist ---------------------------------------------------------------


def test_an_egress_ip_missing_from_the_allowlist_fails(
    nat_gateway: RunningGateway, echo_site: EchoSite, good_dns: Zone, ranges_cache: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    allowlist = tmp_path / "allow.txt"
    allowlist.write_text(f"{PUBLIC_A}\n")
    out = check(
        "--via", nat_gateway.proxy_url(), *echo_args(echo_site), "--allowlist", str(allowlist),
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    assert out.returncode == 2
    assert status_of(out, "allowlist", PUBLIC_A) == "pass"
    missing = rows(out)[("allowlist", PUBLIC_B)]
    assert missing["status"] == "fail" and "not in allow.txt" in missing["reason"]


def test_allowlist_entries_that_let_other_tenants_in_are_flagged(
    good_dns: Zone, ranges_cache: Path, tmp_path: Path
) -> None:
    allowlist = tmp_path / "allow.txt"
    allowlist.write_text(
        f"{PUBLIC_A}\n"
        "203.0.113.0/24     # the whole AWS range, by mistake\n"
        "198.51.100.200, 192.0.2.7\n"  # a Cloudflare edge address; an OCI address
    )
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--allowlist", str(allowlist),
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    assert out.returncode == 2
    wide = rows(out)[("allowlist entry", "line 2: 203.0.113.0/24")]
    assert wide["status"] == "fail" and "other tenants" in wide["reason"]
    assert "AWS EC2 eu-west-1" in wide["reason"]
    edge = rows(out)[("allowlist entry", "line 3: 198.51.100.200")]
    assert edge["status"] == "warn" and "Cloudflare" in edge["reason"]
    assert ("allowlist entry", "line 3: 192.0.2.7") not in rows(out)  # assignable: fine


def test_an_unreadable_allowlist_means_the_check_could_not_run(tmp_path: Path) -> None:
    bad = tmp_path / "allow.txt"
    bad.write_text("203.0.113.7\nnot-an-ip\n")
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--allowlist", str(bad), "--no-dnsbl",
        "--resolver", "127.0.0.1:9", "--timeout", "0.3", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 3
    assert "line 2" in json.loads(out.stdout)["could_not_run"][0]


# --- could not run ----------------------------------------------------------------------


def test_no_echo_endpoint_answering_exits_3(echo_site: EchoSite) -> None:
    out = check(
        "--echo", echo_site.url("/fail"), "--echo", "http://127.0.0.1:9/", "--no-dnsbl",
        "--resolver", "127.0.0.1:9", "--timeout", "0.5", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 3
    report = json.loads(out.stdout)
    assert "no echo endpoint answered" in report["could_not_run"][0]
    assert status_of(out, "echo", echo_site.url("/fail")) == "unknown"


def test_an_unreachable_gateway_exits_3_without_a_traceback(echo_site: EchoSite) -> None:
    out = fixedip(
        "check", "--via", "http://billing:secret@127.0.0.1:9", *echo_args(echo_site),
        "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 3
    assert "could not connect" in out.stdout and "Traceback" not in out.stderr
    assert "secret" not in out.stdout + out.stderr


def test_wrong_credentials_fail(nat_gateway: RunningGateway, echo_site: EchoSite) -> None:
    out = check(
        "--via", nat_gateway.proxy_url("billing", "wrong"), *echo_args(echo_site),
        "--no-dnsbl", "--resolver", "127.0.0.1:9", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    row = next(r for r in json.loads(out.stdout)["rows"] if r["check"] == "gateway")
    assert row["status"] == "fail" and "407" in row["reason"]
    assert out.returncode in (2, 3)


def test_a_token_over_plain_http_to_a_public_address_is_refused_before_connecting() -> None:
    # parse_via only parses: no connection is attempted for this (public) address.
    with pytest.raises(ValueError, match="in the clear") as refused:
        parse_via("http://billing:secret@3.5.140.2:3128")
    assert "secret" not in str(refused.value)
    assert parse_via("http://billing:secret@3.5.140.2:3128", allow_insecure=True).has_credentials
    assert parse_via("http://billing:secret@10.0.1.5:3128").hop.port == 3128  # private: fine


def test_table_output_for_humans(echo_site: EchoSite, good_dns: Zone) -> None:
    out = fixedip(
        "check", *echo_args(echo_site), "--resolver", good_dns.address, "--no-dnsbl",
        "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert "fixedip check" in out.stdout and "egress ip" in out.stdout
    assert "exit status" in out.stdout


def test_through_the_gateways_tls_listener_with_an_https_echo(
    make_gateway: Callable[..., RunningGateway],
    pki: GatewayPKI,
    https_vendor: TLSVendor,
    echo_site: EchoSite,
    good_dns: Zone,
) -> None:
    """TLS to the gateway (verified with --ca), CONNECT inside it, TLS to the echo."""
    client = {
        "name": "billing",
        "token_hash": token_hash("billing"),
        "allow": ["127.0.0.1:*"],
        "connect_ports": [https_vendor.port],
    }
    gw = make_gateway(**tls_overrides(pki, clients=[client]))
    args = [
        "check", "--format", "json", "--via", https_proxy_url(gw), "--ca", str(pki.ca_file),
        "--echo", https_vendor.url("/echo"), "--echo", echo_site.url("/plain"),
        "--expect", ALLOWED_EGRESS, "--resolver", good_dns.address, "--no-dnsbl",
        "--ranges-cache", "/nonexistent",
    ]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/nonexistent",
        "SSL_CERT_FILE": str(https_vendor.ca_file),
    }
    out = subprocess.run([str(FIXEDIP), *args], capture_output=True, text=True, timeout=60, env=env)
    assert status_of(out, "echo", https_vendor.url("/echo")) == "pass", out.stdout
    assert rows(out)[("egress ip", "echo")]["reason"] == f"the internet sees {ALLOWED_EGRESS} (2/2)"
    assert any(
        r["check"] == "gateway" and r["status"] == "pass" for r in json.loads(out.stdout)["rows"]
    )
    assert [s[0] for s in https_vendor.server.seen] == [ALLOWED_EGRESS]
    # Without the gateway's CA the check cannot run: its certificate is not trusted.
    untrusted = subprocess.run(
        [str(FIXEDIP), *[a for a in args if a not in ("--ca", str(pki.ca_file))]],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert untrusted.returncode == 3
    assert "not trusted" in untrusted.stdout and "--ca" in untrusted.stdout


def test_through_a_proxy_that_is_not_fixedip_the_gateway_view_is_skipped(
    echo_site: EchoSite, good_dns: Zone
) -> None:
    # The echo site answers absolute-form requests for its own URLs, as a plain HTTP
    # proxy would, and 404 to /whoami.
    out = check(
        "--via", f"http://127.0.0.1:{echo_site.port}", *echo_args(echo_site),
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    gateway = next(r for r in json.loads(out.stdout)["rows"] if r["check"] == "gateway")
    assert gateway["status"] == "skip" and "not a fixedip gateway" in gateway["reason"]
    assert rows(out)[("egress ip", "echo")]["status"] == "pass"
    assert not any(r["check"] == "gateway vs echo" for r in json.loads(out.stdout)["rows"])


@pytest.mark.parametrize(
    "args",
    [["--format", "yaml"], ["--expect", "not-an-ip"], ["--no-such-option"], ["--via", "ftp://x"]],
)
def test_a_bad_option_means_could_not_run_not_failure(args: list[str]) -> None:
    out = fixedip("check", *args)
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr


def test_an_echo_the_client_may_not_reach_is_unknown_with_the_gateways_reason(
    gateway: RunningGateway, https_vendor: TLSVendor, echo_site: EchoSite
) -> None:
    # billing may CONNECT to port 443 only; the https echo listens elsewhere.
    out = check(
        "--via", gateway.proxy_url(), "--echo", https_vendor.url("/echo"),
        "--echo", echo_site.url("/plain"), "--no-dnsbl", "--resolver", "127.0.0.1:9",
        "--timeout", "1", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    row = rows(out)[("echo", https_vendor.url("/echo"))]
    assert row["status"] == "unknown"
    assert row["reason"].startswith("no answer: the proxy refused CONNECT: 403")
    assert https_vendor.server.seen == []


def test_a_spamhaus_policy_listing_is_only_a_warning(zone: Zone) -> None:
    zone.ptr(PUBLIC_A, "gw-a.example.test")
    name = ".".join(reversed(PUBLIC_A.split("."))) + ".zen.spamhaus.org"
    zone.records[(name, "A")] = ["127.0.0.10"]  # PBL: end-user space (asked on loopback only)
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--resolver", zone.address,
        "--dnsbl", "zen.spamhaus.org", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 1
    row = rows(out)[("blocklist", f"zen.spamhaus.org {PUBLIC_A}")]
    assert row["status"] == "warn" and "policy listing" in row["reason"]


def test_range_files_older_than_30_days_are_a_warning(good_dns: Zone, ranges_cache: Path) -> None:
    manifest_path = ranges_cache / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["sources"].values():
        entry["fetched_at"] = "2025-01-01T00:00:00+00:00"
    manifest_path.write_text(json.dumps(manifest))
    out = check(
        "--no-echo", "--expect", PUBLIC_A, "--resolver", good_dns.address, "--no-dnsbl",
        "--ranges-cache", str(ranges_cache),
    )  # fmt: skip
    row = rows(out)[("ranges", "cache")]
    assert row["status"] == "warn" and "fixedip ranges update" in row["reason"]
    assert status_of(out, "cloud range", PUBLIC_A) == "pass"  # still looked up


def test_with_the_admin_api_every_pool_ip_is_checked_not_only_the_clients(
    make_gateway: Callable[..., RunningGateway], echo_site: EchoSite, good_dns: Zone,
    tmp_path: Path,
) -> None:  # fmt: skip
    echo_site.nat = {OTHER_EGRESS: PUBLIC_B}
    gw = make_gateway(
        egress={
            "ips": [
                {"bind": ALLOWED_EGRESS, "public": PUBLIC_A},
                {"bind": OTHER_EGRESS, "public": PUBLIC_B},
            ]
        },
        clients=[
            {"name": "pinned", "token_hash": token_hash("pinned"), "allow": ["127.0.0.1:*"],
             "egress": OTHER_EGRESS}
        ],
    )  # fmt: skip
    allowlist = tmp_path / "allow.txt"
    allowlist.write_text(f"{PUBLIC_B}\n")
    out = check(
        "--via", gw.proxy_url("pinned"), "--admin", f"http://{gw.admin[0]}:{gw.admin[1]}",
        *echo_args(echo_site), "--allowlist", str(allowlist), "--expect", PUBLIC_B,
        "--resolver", good_dns.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert set(report["egress_ips"]) == {PUBLIC_A, PUBLIC_B}
    pool = next(r for r in report["rows"] if r["check"] == "gateway pool")
    assert pool["status"] == "pass" and PUBLIC_A in pool["reason"]
    assert status_of(out, "allowlist", PUBLIC_A) == "fail"  # the pinned client never uses it
    assert status_of(out, "allowlist", PUBLIC_B) == "pass"
    assert any(r["check"] == "gateway pool vs expect" for r in report["rows"])
    assert status_of(out, "reverse dns", PUBLIC_A) == "pass"


def test_an_unreachable_admin_api_exits_3() -> None:
    out = check(
        "--admin", "http://127.0.0.1:9", "--no-echo", "--expect", PUBLIC_A, "--no-dnsbl",
        "--resolver", "127.0.0.1:9", "--timeout", "0.5", "--ranges-cache", "/nonexistent",
    )  # fmt: skip
    assert out.returncode == 3
    assert "could not read http://127.0.0.1:9/egress" in json.loads(out.stdout)["could_not_run"][0]
