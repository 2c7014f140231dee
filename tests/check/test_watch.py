"""`fixedip check --watch`: the first report whole, then only what changed; bounded by
--count or a signal; and --metrics-file for node_exporter's textfile collector."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.check.conftest import FIXEDIP, EchoSite, Zone, fixedip


def _args(echo_site: EchoSite, zone: Zone) -> list[str]:
    return [
        "--echo", echo_site.url("/flip"), "--echo", echo_site.url("/plain"),
        "--resolver", zone.address, "--no-dnsbl", "--ranges-cache", "/nonexistent",
    ]  # fmt: skip


def test_watch_prints_the_report_then_only_changes(echo_site: EchoSite, zone: Zone) -> None:
    zone.ptr("127.0.0.1", "localhost.example.test")
    echo_site.flip_ip = "203.0.113.98"  # /flip answers honestly once, then this
    proc = subprocess.Popen(
        [str(FIXEDIP), "check", "--format", "json", "--watch", "0.1", "--count", "4",
         *_args(echo_site, zone)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first["type"] == "report" and first["exit_code"] == 0
    stdout, _ = proc.communicate(timeout=30)
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert proc.returncode == 1  # the last run: endpoints disagree
    assert len(lines) == 1, lines  # runs 3 and 4 changed nothing: nothing printed
    change = {(c["check"], c["subject"]): c for c in lines[0]["changes"]}
    flip = change[("echo", echo_site.url("/flip"))]
    assert flip["was"] == "pass" and flip["status"] == "warn"
    assert "203.0.113.98" in flip["reason"]
    assert ("reverse dns", "127.0.0.1") not in change


def test_sigterm_stops_the_watch(echo_site: EchoSite, zone: Zone) -> None:
    proc = subprocess.Popen(
        [str(FIXEDIP), "check", "--format", "json", "--watch", "30", *_args(echo_site, zone)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["type"] == "report"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1  # the report's own status (no PTR for 127.0.0.1: warn)
    assert "Traceback" not in stderr


def test_metrics_file_in_prometheus_text_format(
    echo_site: EchoSite, zone: Zone, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "fixedip_check.prom"
    before = time.time()
    out = fixedip("check", *_args(echo_site, zone), "--metrics-file", str(metrics))
    assert out.returncode == 1  # 127.0.0.1 has no PTR in this zone
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert samples[("fixedip_check_exit_code", ())] == 1
    assert (
        samples[("fixedip_check_status", (("check", "reverse dns"), ("subject", "127.0.0.1")))] == 1
    )
    assert samples[("fixedip_check_status", (("check", "egress ip"), ("subject", "echo")))] == 0
    assert samples[("fixedip_check_egress_ip_info", (("ip", "127.0.0.1"),))] == 1
    assert samples[("fixedip_check_last_run_timestamp_seconds", ())] >= before
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind


def test_watch_table_shows_what_each_changed_row_was(echo_site: EchoSite, zone: Zone) -> None:
    out = fixedip("check", "--watch", "0.1", "--count", "2", *_args(echo_site, zone))
    assert out.returncode == 1
    first, _, changes = out.stdout.partition("changes at")
    assert "fixedip check" in first and "exit status" in first
    assert "was" in changes and "203.0.113.98" in changes  # /flip turned on the second run
