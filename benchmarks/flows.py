"""Records per second of `fixedip flows analyze`, against the bare loop over the same lines.

Generates flow logs into a temporary directory (removed at the end): AWS VPC Flow Logs
version 2 with a header (plain and gzip) and fixedip's JSON lines, `--lines` each
(default 1,000,000: about 110 MB of VPC log and 330 MB of JSON), shaped like real
traffic: a few thousand destinations drawn Zipf-like, every connection logged in both
directions, 1 % rejected, a few internal and metadata addresses. Then, best of
`--rounds`:

- baseline: the bare loop every Python parser pays at least (`for line in file:
  line.split()` for VPC lines, `json.loads(line)` for JSON), measured in the same run;
- fixedip: `read_input` + `FlowAnalysis` + `build_report` in-process: records/s, records
  per CPU-second, and the ratio to the baseline;
- the real `fixedip flows analyze` executable: wall time and peak RSS, against the file
  size (the analysis streams: memory must not grow with the file);
- scan: every line a new destination with `--max-keys 10000`, the capped path.

    .venv/bin/python -m benchmarks.flows [--lines N] [--rounds R] [--skip-cli]

Writes benchmarks/results/flows.json and flows.md (`--results DIR`, `--out STEM` to change).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.facts import busy_share, machine
from benchmarks.peers import REPO
from fixedip.check.flows import FlowAnalysis
from fixedip.check.flows_match import AddressSet
from fixedip.check.flows_read import read_input
from fixedip.check.flows_report import build_report

START_EPOCH = 1714564800  # 2024-05-01T12:00:00Z
DESTINATIONS = 3_000
SOURCES = 40
CLIENTS = ("billing", "reports", "sync", "mailer", "search", "ingest", "export", "auth")
EXPECT = ("52.0.0.0/8", "54.0.0.0/8", "*.vendor-a.example", "*.vendor-b.example")
SCAN_MAX_KEYS = 10_000
CLI_TIMEOUT_S = 1_800
FIXEDIP = Path(sys.executable).parent / "fixedip"
RESULTS = REPO / "benchmarks" / "results"
TIMES = "\u00d7"  # the multiplication sign, written so linters do not take it for an x


# --- generated logs -----------------------------------------------------------------


def _weights(n: int) -> list[float]:
    return [1.0 / (rank + 1) for rank in range(n)]


def _vpc_destination(rank: int) -> str:
    return f"{52 + rank % 3}.{(rank >> 8) % 256}.{rank % 256}.{(rank * 7) % 250 + 1}"


def write_vpc(path: Path, lines: int, seed: int = 1) -> None:
    """VPC Flow Logs v2 with a header: request and reply for each connection."""
    rng = random.Random(seed)
    eni = "2 123456789012 eni-0a1b2c3d4e5f60718"
    ranks = rng.choices(range(DESTINATIONS), weights=_weights(DESTINATIONS), k=lines)
    out: list[str] = [
        "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
        "bytes start end action log-status\n"
    ]
    written = 0
    with path.open("w") as f:
        for i, rank in enumerate(ranks):
            if written >= lines:
                break
            src = f"10.0.{1 + i % 2}.{i % SOURCES + 10}"
            dst = _vpc_destination(rank)
            port, proto = (443, 6) if rank % 10 else (80, 6)
            if i % 997 == 0:
                dst, port = "169.254.169.254", 80
            elif i % 499 == 0:
                dst, port = "10.0.7.21", 6379
            elif rank % 37 == 0:
                port, proto = 53, 17
            sport = 32768 + i % 28000
            start = START_EPOCH + i // 25
            action = "REJECT" if i % 100 == 0 else "ACCEPT"
            out.append(
                f"{eni} {src} {dst} {sport} {port} {proto} {3 + i % 20} {200 + (i * 37) % 9000} "
                f"{start} {start + 60} {action} OK\n"
            )
            written += 1
            if action == "ACCEPT" and written < lines:
                out.append(
                    f"{eni} {dst} {src} {port} {sport} {proto} {4 + i % 30} "
                    f"{900 + (i * 91) % 60000} {start} {start + 60} ACCEPT OK\n"
                )
                written += 1
            if len(out) >= 20_000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))


def write_scan(path: Path, lines: int) -> None:
    """Every line a new destination (a port scan, or an SSRF sweep): the capped path."""
    eni = "2 123456789012 eni-0a1b2c3d4e5f60718"
    with path.open("w") as f:
        out: list[str] = []
        for i in range(lines):
            dst = f"{3 + (i >> 24) % 200}.{(i >> 16) % 256}.{(i >> 8) % 256}.{i % 256}"
            start = START_EPOCH + i // 25
            out.append(
                f"{eni} 10.0.1.5 {dst} {40000 + i % 20000} 443 6 1 60 {start} {start + 60} "
                "REJECT OK\n"
            )
            if len(out) >= 20_000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))


def write_jsonl(path: Path, lines: int, seed: int = 2) -> None:
    """fixedip's flow log, record by record as the gateway writes it."""
    rng = random.Random(seed)
    ranks = rng.choices(range(DESTINATIONS), weights=_weights(DESTINATIONS), k=lines)
    encode = json.JSONEncoder(separators=(",", ":")).encode
    with path.open("w") as f:
        out: list[str] = []
        for i, rank in enumerate(ranks):
            when = START_EPOCH + i / 25
            stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            host = f"api{rank}.vendor-{'ab'[rank % 2]}.example"
            record: dict[str, Any] = {
                "time": stamp,
                "client": CLIENTS[i % len(CLIENTS)],
                "peer": f"10.0.2.{i % SOURCES + 10}:{32768 + i % 28000}",
                "listener": "http",
                "kind": "connect",
                "method": "CONNECT",
                "host": host,
                "port": 443,
                "resolved": _vpc_destination(rank),
                "egress": "10.0.1.5",
                "egress_public": "52.18.0.7",
                "status": 200,
                "bytes_up": 200 + (i * 37) % 9000,
                "bytes_down": 900 + (i * 91) % 60000,
                "duration_ms": 41.7,
                "decision": "allow",
                "reason": "allowed",
                "rule": "*.example:443",
            }
            if i % 997 == 0:
                record.update(
                    host="169.254.169.254",
                    port=80,
                    resolved=None,
                    egress=None,
                    egress_public=None,
                    status=403,
                    bytes_up=0,
                    bytes_down=0,
                    decision="deny",
                    reason="guard_denied",
                    rule="metadata 169.254.169.254/32",
                )
            elif i % 50 == 0:
                record.update(
                    host=f"unknown{rank}.example",
                    resolved=None,
                    status=403,
                    bytes_up=0,
                    bytes_down=0,
                    decision="deny",
                    reason="destination_not_allowed",
                    rule=None,
                )
            out.append(encode(record) + "\n")
            if len(out) >= 20_000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))


def gzip_copy(source: Path, target: Path) -> None:
    with source.open("rb") as src, gzip.open(target, "wb", compresslevel=6) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)


# --- measurements -------------------------------------------------------------------


def best_of(rounds: int, run: Callable[[], int]) -> dict[str, float]:
    """Run `rounds` times; the fastest round's records, wall and CPU seconds."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        records = run()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if not best or wall < best["wall_s"]:
            best = {"records": records, "wall_s": wall, "cpu_s": cpu}
    best["records_s"] = best["records"] / best["wall_s"]
    best["records_cpu_s"] = best["records"] / max(best["cpu_s"], 1e-9)
    return best


def bare_split(path: Path) -> int:
    with path.open("rb") as probe:
        packed = probe.read(2) == b"\x1f\x8b"
    count = 0
    with (gzip.open if packed else open)(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line.split()
            count += 1
    return count


def bare_json(path: Path) -> int:
    loads = json.loads
    count = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            loads(line)
            count += 1
    return count


def fixedip_analysis(path: Path, max_keys: int = 100_000) -> int:
    analysis = FlowAnalysis(expect=AddressSet(EXPECT), max_keys=max_keys)
    stats = read_input(str(path), analysis)
    if stats.error or stats.malformed:
        raise RuntimeError(f"{path}: {stats.error or stats.examples}")
    build_report(analysis, [stats], top=10, max_malformed_percent=1.0)
    return stats.records


def run_cli(path: Path, *options: str) -> dict[str, Any]:
    """The real executable: wall time, exit code and peak RSS (from wait4)."""
    argv = [str(FIXEDIP), "flows", "analyze", str(path), "--format", "json"]
    argv += ["--expect", ",".join(EXPECT), *options]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + CLI_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "stderr": stderr.strip()[:500],
    }


# --- the run ------------------------------------------------------------------------


def measure(lines: int, rounds: int, skip_cli: bool, workdir: Path) -> list[dict[str, Any]]:
    vpc, vpc_gz, jsonl, scan = (
        workdir / "vpc.log",
        workdir / "vpc.log.gz",
        workdir / "flow.jsonl",
        workdir / "scan.log",
    )
    print(f"generating {lines:,} lines per log in {workdir} ...", flush=True)
    write_vpc(vpc, lines)
    gzip_copy(vpc, vpc_gz)
    write_jsonl(jsonl, lines)
    write_scan(scan, min(lines, 200_000))
    scenarios = [
        ("VPC Flow Logs v2", vpc, bare_split, fixedip_analysis, ()),
        ("VPC Flow Logs v2, gzip", vpc_gz, bare_split, fixedip_analysis, ()),
        ("fixedip flow log (JSON lines)", jsonl, bare_json, fixedip_analysis, ()),
        (
            f"scan: every line a new destination, --max-keys {SCAN_MAX_KEYS:,}",
            scan,
            bare_split,
            lambda p: fixedip_analysis(p, SCAN_MAX_KEYS),
            ("--max-keys", str(SCAN_MAX_KEYS)),
        ),
    ]
    results = []
    for name, path, bare, ours, cli_options in scenarios:
        print(f"{name}: measuring ...", flush=True)
        baseline = best_of(rounds, lambda path=path, bare=bare: bare(path))
        fixedip = best_of(rounds, lambda path=path, ours=ours: ours(path))
        entry: dict[str, Any] = {
            "scenario": name,
            "file_bytes": path.stat().st_size,
            "records": fixedip["records"],
            "baseline": baseline,
            "fixedip": fixedip,
            "ratio": fixedip["records_s"] / baseline["records_s"],
        }
        if not skip_cli:
            entry["cli"] = run_cli(path, *cli_options)
        results.append(entry)
        print(
            f"  baseline {baseline['records_s']:,.0f} rec/s, fixedip {fixedip['records_s']:,.0f}"
            f" rec/s ({entry['ratio']:.2f}x)",
            flush=True,
        )
    return results


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def markdown(run: dict[str, Any]) -> str:
    m = run["machine"]
    out = [
        f"# fixedip flows analyze: records per second, {run['when']}",
        "",
        f"Machine: {m['nproc']} {TIMES} {m['cpu_model']}, Python {m['python']}, commit "
        f"`{m['commit'][:12]}`; CPUs {run['busy_before'] * 100:.0f} % busy with other work "
        "before the run (a shared machine depresses every number; records per CPU-second "
        "is the steadier figure).",
        "",
        f"Method: {run['lines']:,} generated lines per log, best of {run['rounds']} rounds "
        "in-process (`read_input` + `FlowAnalysis` + `build_report`, with --expect CIDRs "
        "and globs). Baseline: the bare loop over the same file (`line.split()` for VPC "
        "lines, `json.loads` for JSON), measured in the same run. CLI: the real "
        "`fixedip flows analyze FILE --expect ... --format json`, once, with its peak RSS.",
        "",
        "| scenario | file | baseline rec/s | fixedip rec/s | ÷ baseline | fixedip rec per CPU-s "
        "| CLI wall | CLI peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in run["results"]:
        cli = r.get("cli")
        wall = f"{cli['wall_s']:.1f} s" if cli else "—"
        rss = _mb(cli["peak_rss_bytes"]) if cli else "—"
        if cli and cli["exit_code"] not in (0, 1):
            wall += f" (exit {cli['exit_code']})"
        out.append(
            f"| {r['scenario']} | {_mb(r['file_bytes'])} | {r['baseline']['records_s']:,.0f} "
            f"| {r['fixedip']['records_s']:,.0f} | {r['ratio']:.2f}{TIMES} "
            f"| {r['fixedip']['records_cpu_s']:,.0f} | {wall} | {rss} |"
        )
    idle = run.get("cli_empty_log")
    floor = f" (the same command on an empty log: {_mb(idle['peak_rss_bytes'])})" if idle else ""
    out += [
        "",
        "Peak RSS includes the interpreter and its imports"
        + floor
        + "; it stays flat as files grow because lines are read a 1 MiB chunk at a time "
        "and every table is capped (`--max-keys`).",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines per generated log")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario; best kept")
    parser.add_argument("--skip-cli", action="store_true", help="no executable runs")
    parser.add_argument("--out", default="flows", help="result file stem")
    parser.add_argument("--results", type=Path, default=RESULTS, help="result directory")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate the logs")
    args = parser.parse_args(argv)
    if args.lines < 1_000 or args.rounds < 1:
        parser.error("--lines must be at least 1000 and --rounds at least 1")
    busy = busy_share(1.0)
    with tempfile.TemporaryDirectory(prefix="fixedip-flows-bench-", dir=args.workdir) as tmp:
        results = measure(args.lines, args.rounds, args.skip_cli, Path(tmp))
        empty = Path(tmp) / "empty.log"
        empty.touch()
        idle = None if args.skip_cli else run_cli(empty)
    run = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "busy_before": busy,
        "lines": args.lines,
        "rounds": args.rounds,
        "results": results,
        "cli_empty_log": idle,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.out}.json").write_text(json.dumps(run, indent=2) + "\n")
    text = markdown(run)
    (args.results / f"{args.out}.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
