"""Why the fleet talks to Redis through its own small client: CPU per limiter call.

The fleet's limiter runs one Lua script per request. This measures, against one local
redis-server started here, the gateway-side CPU per EVALSHA with 50 concurrent callers
(like 50 keep-alive clients) for redis-py's asyncio client (a connection pool: one
command in flight per connection) and for `fixedip.fleet.resp` (one connection, the
commands of one loop turn in one write). Writes results/redis-client.{json,md}.

    .venv/bin/python -m benchmarks.redis_client [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as redis_py

from benchmarks.procs import Proc, free_ports
from fixedip.fleet.resp import Redis

SCRIPT = "return redis.call('INCR', KEYS[1])"
CONCURRENCY = 50
RESULTS = Path(__file__).parent / "results"


def start_redis(tmp: Path) -> tuple[Proc, int]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis_client: no redis-server (apt-get install redis-server)")
    port = free_ports(1)[0]
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--dir", str(tmp)]  # fmt: skip
    proc = Proc("redis-server", argv, tmp / "redis.out")
    proc.start()
    proc.wait_listening("127.0.0.1", port)
    return proc, port


async def _drive(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """CPU µs per call of this process, `calls` spread over CONCURRENCY callers."""
    per = calls // CONCURRENCY

    async def caller() -> None:
        for _ in range(per):
            await call()

    start = time.process_time()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    return (time.process_time() - start) / (per * CONCURRENCY) * 1e6


async def measure(port: int, calls: int, rounds: int) -> dict[str, float]:
    ours = Redis("127.0.0.1", port)
    sha = ours.script(SCRIPT)
    await ours.connect(2.0)
    theirs = redis_py.Redis(host="127.0.0.1", port=port, max_connections=CONCURRENCY)
    their_script = theirs.register_script(SCRIPT)
    try:
        results: dict[str, float] = {}
        candidates: dict[str, Callable[[], Awaitable[Any]]] = {
            "fixedip.fleet.resp": lambda: ours.run_script(sha, ["k1"], [], timeout_s=1.0),
            "redis-py asyncio": lambda: their_script(keys=["k2"]),
        }
        for name, call in candidates.items():
            await _drive(call, CONCURRENCY * 20)  # warm-up: connections, script cache
            results[name] = min([await _drive(call, calls) for _ in range(rounds)])
        return results
    finally:
        ours.close()
        await theirs.aclose()


def write(results: dict[str, float], calls: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    base = results["redis-py asyncio"]
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "concurrency": CONCURRENCY,
        "calls": calls,
        "cpu_us_per_call": results,
    }
    (RESULTS / "redis-client.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Redis client CPU per limiter call ({doc['date']}, {doc['cpus']} CPUs, "
        f"{CONCURRENCY} concurrent callers, EVALSHA)",
        "",
        "| client | CPU µs per call | ÷ redis-py |",
        "|---|---|---|",
        *(f"| {name} | {us:.1f} | {us / base:.2f}\u00d7 |" for name, us in results.items()),
        "",
    ]
    (RESULTS / "redis-client.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=50_000, help="calls per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the best is kept")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(Path(tmp))
        try:
            try:
                import uvloop

                results = uvloop.run(measure(port, args.calls, args.rounds))
            except ImportError:
                results = asyncio.run(measure(port, args.calls, args.rounds))
        finally:
            proc.stop()
    write(results, args.calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
