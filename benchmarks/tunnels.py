"""Idle CONNECT tunnels: open N, hold them, measure the proxy's memory, then use each one.

One asyncio client holds every tunnel (N sockets here, 2N in the proxy), so the
benchmark raises its own RLIMIT_NOFILE soft limit to the hard limit before it starts
anything; the proxies inherit that limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

from benchmarks.peers import HOST, SMALL_BODY, SMALL_PATH, Origin, Peer, say

OPEN_CONCURRENCY = 100
USE_CONCURRENCY = 200
STEP_TIMEOUT_S = 10.0

Tunnel = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open(peer: Peer, origin: Origin) -> Tunnel:
    reader, writer = await asyncio.open_connection(HOST, peer.port, limit=2**16)
    target = f"{HOST}:{origin.port}"
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if auth := peer.proxy_authorization:
        head += f"Proxy-Authorization: {auth}\r\n"
    writer.write((head + "\r\n").encode())
    try:
        answer = await reader.readuntil(b"\r\n\r\n")
    except BaseException:
        writer.close()
        raise
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    if status.split()[1:2] != ["200"]:
        writer.close()
        raise ConnectionError(f"CONNECT answered {status!r}")
    return reader, writer


async def _use(tunnel: Tunnel, origin: Origin) -> None:
    """One request through the tunnel to nginx; raises unless the 3-byte body comes back."""
    reader, writer = tunnel
    writer.write(f"GET {SMALL_PATH} HTTP/1.1\r\nHost: {HOST}:{origin.port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        status = head.split(b"\r\n", 1)[0]
        raise ConnectionError(f"origin answered {status!r}")
    body = await reader.readexactly(len(SMALL_BODY))
    if body != SMALL_BODY:
        raise ConnectionError(f"unexpected body {body!r}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {STEP_TIMEOUT_S:g} s"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by the proxy"
    return f"{type(exc).__name__}: {exc}"[:120]


async def _run(peer: Peer, origin: Origin, count: int, hold_s: float) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    tunnels: list[Tunnel] = []
    await asyncio.sleep(1.0)
    rss_before = peer.proc.rss()

    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_one() -> None:
        async with gate:
            try:
                tunnels.append(await asyncio.wait_for(_open(peer, origin), STEP_TIMEOUT_S))
            except Exception as exc:
                errors[f"open: {_why(exc)}"] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    open_s = time.monotonic() - t0
    say(
        f"  {peer.name}: {len(tunnels)}/{count} tunnels open in {open_s:.1f} s; "
        f"holding {hold_s:g} s"
    )

    peak = rss_before
    t_hold = time.monotonic()
    while (left := hold_s - (time.monotonic() - t_hold)) > 0:
        peak = max(peak, peer.proc.rss())
        await asyncio.sleep(min(1.0, left))
    rss_after = peer.proc.rss()
    peak = max(peak, rss_after)

    usable = 0
    use_gate = asyncio.Semaphore(USE_CONCURRENCY)

    async def use_one(tunnel: Tunnel) -> None:
        nonlocal usable
        async with use_gate:
            try:
                await asyncio.wait_for(_use(tunnel, origin), STEP_TIMEOUT_S)
                usable += 1
            except Exception as exc:
                errors[f"use: {_why(exc)}"] += 1

    try:
        await asyncio.gather(*(use_one(t) for t in tunnels))
    finally:
        for _, writer in tunnels:
            writer.close()
        for _, writer in tunnels:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
    alive = peer.proc.alive()
    return {
        "tunnels": count,
        "opened": len(tunnels),
        "usable": usable,
        "open_seconds": round(open_s, 2),
        "hold_seconds": hold_s,
        "rss_before_bytes": rss_before,
        "rss_after_hold_bytes": rss_after,
        "rss_growth_bytes": rss_after - rss_before,
        "rss_peak_growth_bytes": peak - rss_before,
        "errors": dict(errors.most_common(5)),
        "proxy_alive_after": alive,
    }


def idle_tunnels(peer: Peer, origin: Origin, count: int, hold_s: float) -> dict[str, Any]:
    return asyncio.run(_run(peer, origin, count, hold_s))
