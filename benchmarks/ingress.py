"""The webhook relay under load: durable acknowledgements per second, their latency, and
delivery throughput. Runnable alone: `.venv/bin/python -m benchmarks.ingress`.

Everything runs on loopback with ports chosen at start and files in a temporary
directory (removed at the end); every process started here is stopped here by PID.

1. A target (an aiohttp app in its own process, counting what it receives) stands in
   for the function. Baseline: wrk POSTs 1 KiB bodies straight to it.
2. `fixedip ingress serve` relays to that target: wrk POSTs the same bodies to the relay.
   Each 200 follows a commit of the SQLite spool (WAL, synchronous=FULL, group commit),
   while the relay is delivering at the same time.
3. After the load stops, the backlog drains; delivery throughput is every webhook the
   target got from the relay over the time from the first request to the last delivery.

Results: benchmarks/results/NAME.json and NAME.md (default NAME: ingress).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import facts
from benchmarks.load import parse_wrk
from benchmarks.peers import HOST, REPO, say
from benchmarks.procs import Proc, free_ports

BODY_BYTES = 1024
TARGET_ACKS_S = 2000
DRAIN_TIMEOUT_S = 120.0
WRK_TIMEOUT_S = 5


def _target_main(port: int) -> None:
    """The stand-in function: 200 to every request, GET /count says how many POSTs."""
    from aiohttp import web

    count = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(text="ok")

    async def counter(request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    app = web.Application()
    app.router.add_get("/count", counter)
    app.router.add_post("/{tail:.*}", hook)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def _count(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/count", timeout=5) as answer:
        return int(json.load(answer)["count"])


def _wrk(tmp: Path, url: str, duration_s: int, connections: int) -> dict[str, Any]:
    import subprocess

    script = tmp / "post.lua"
    body = ('{"type":"bench","pad":"' + "x" * (BODY_BYTES - 25) + '"}')[:BODY_BYTES]
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30)
    res = parse_wrk(out.stdout)
    if out.returncode != 0 or "req_s" not in res:
        raise RuntimeError(f"wrk failed: {(out.stderr or out.stdout).strip()[-300:]}")
    res["command"] = " ".join(argv)
    return res


def run(duration_s: int, connections: int, tmp: Path) -> dict[str, Any]:
    target_port, relay_port = free_ports(2)
    procs: list[Proc] = []
    try:
        target = Proc(
            "target",
            [sys.executable, "-m", "benchmarks.ingress", "--serve-target", str(target_port)],
            tmp / "target.log",
        )
        target.start(cwd=REPO)
        procs.append(target)
        target.wait_listening(HOST, target_port)
        config = tmp / "relay.toml"
        config.write_text(
            '[listen]\nadmin = ""\n'
            f'[log]\nflow = "{tmp / "flow.jsonl"}"\nlevel = "warning"\n'
            f'[ingress]\nlisten = "{HOST}:{relay_port}"\nspool = "{tmp / "spool.db"}"\n'
            f"max_spool_records = 10000000\nmax_spool_bytes = {8 << 30}\n"
            f'[[ingress.routes]]\npath = "/hooks/bench"\ntarget = "http://{HOST}:{target_port}/fn"\n'
            "concurrency = 64\n"
        )
        relay = Proc(
            "relay",
            [str(REPO / ".venv" / "bin" / "fixedip"), "ingress", "serve", "--config", str(config)],
            tmp / "relay.log",
        )
        relay.start(cwd=tmp)
        procs.append(relay)
        relay.wait_listening(HOST, relay_port)

        say(f"baseline: wrk POST {BODY_BYTES} B straight to the target, {duration_s} s")
        direct = _wrk(tmp, f"http://{HOST}:{target_port}/fn", duration_s, connections)
        before = _count(target_port)

        say(f"relay: wrk POST {BODY_BYTES} B to fixedip ingress, {duration_s} s")
        cpu0 = relay.cpu()
        started = time.monotonic()
        relayed = _wrk(tmp, f"http://{HOST}:{relay_port}/hooks/bench", duration_s, connections)
        load_s = time.monotonic() - started
        relay_cpu_s = relay.cpu() - cpu0
        during = _count(target_port) - before
        acked = relayed.get("requests", 0) - relayed.get("bad_responses", 0)

        say(f"draining: {acked - during} webhooks still to deliver")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        delivered = during
        while time.monotonic() < deadline:
            delivered = _count(target_port) - before
            if delivered >= acked:
                break
            time.sleep(0.05)
        total_s = time.monotonic() - started
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {
        "direct": direct,
        "relay": relayed,
        "acked": acked,
        "acks_per_s": round(acked / load_s, 1),
        "relay_cpu_s": round(relay_cpu_s, 2),
        "acks_per_relay_cpu_s": round(acked / relay_cpu_s, 1) if relay_cpu_s > 0 else None,
        "delivered_during_load": during,
        "delivered_total": delivered,
        "all_delivered": delivered >= acked,
        "delivery_per_s": round(delivered / total_s, 1),
        "drain_s": round(total_s - load_s, 2),
    }


def markdown(doc: dict[str, Any]) -> str:
    r = doc["result"]
    relay, direct = r["relay"], r["direct"]
    m = doc["machine"]
    lines = [
        "# fixedip ingress relay benchmark",
        "",
        f"{doc['date']} · commit `{m.get('commit', '?')[:10]}` · {m.get('nproc')} CPUs "
        f"({m.get('cpu_model')}) · {doc['settings']['duration_s']} s per run, "
        f"{doc['settings']['connections']} connections, {BODY_BYTES} B bodies",
        "",
        "| | requests/s | p50 | p99 | non-2xx |",
        "|---|---|---|---|---|",
        f"| target directly (baseline) | {direct['req_s']:,.0f} | {direct.get('p50_ms', 0):.2f} ms "
        f"| {direct.get('p99_ms', 0):.2f} ms | {direct.get('bad_responses', 0)} |",
        f"| **fixedip ingress** (200 after a durable commit) | {r['acks_per_s']:,.0f} "
        f"| {relay.get('p50_ms', 0):.2f} ms | {relay.get('p99_ms', 0):.2f} ms "
        f"| {relay.get('bad_responses', 0)} |",
        "",
        f"- Acknowledged: {r['acked']:,} webhooks, {r['acks_per_s']:,.0f}/s "
        f"({r['acks_per_s'] / direct['req_s']:.2f}x the direct rate; target "
        f"{TARGET_ACKS_S:,}/s: {'met' if r['acks_per_s'] >= TARGET_ACKS_S else 'not met'}), "
        f"{r['acks_per_relay_cpu_s'] or 0:,.0f} per relay CPU-second.",
        f"- Delivered: {r['delivered_during_load']:,} while the load ran, all "
        f"{r['delivered_total']:,} {r['drain_s']} s after it stopped "
        f"({'every acknowledged webhook' if r['all_delivered'] else 'NOT every webhook'}); "
        f"delivery throughput {r['delivery_per_s']:,.0f}/s.",
        "- Spool: SQLite WAL, synchronous=FULL; one writer commits a batch per fsync and "
        "answers each request after its batch's commit. wrk, the relay and the target share "
        "the machine's CPUs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingress", description=__doc__)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--name", default="ingress", help="write results/NAME.{json,md}")
    p.add_argument("--serve-target", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_target:
        _target_main(args.serve_target)
        return 0
    with tempfile.TemporaryDirectory(prefix="fixedip-ingress-bench-") as tmp:
        result = run(args.duration, args.connections, Path(tmp))
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": facts.machine(),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "body_bytes": BODY_BYTES,
        },
        "result": result,
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
