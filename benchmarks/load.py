"""Load generators: wrk for request rates and latency, curl for bulk downloads.

Each call is bounded: wrk by -d (plus a hard subprocess timeout), curl by --max-time.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.peers import BULK_BYTES, HOST, SMALL_PATH, Origin, Peer
from benchmarks.procs import Proc

WRK_THREADS = 1
WRK_CONNECTIONS = 50
WRK_TIMEOUT_S = 5
MAX_BAD_RESPONSE_SHARE = 0.001  # more non-2xx/3xx than this and the run does not count
RSS_SAMPLE_INTERVAL_S = 0.02

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass
class Measurement:
    """One run of one scenario against one target. ok=False carries the reason."""

    ok: bool
    value: float = 0.0  # req/s, or bytes/s for bulk
    p99_ms: float | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trial:
    """One target of a comparison: `once()` measures it once, after `warm_up()` if set."""

    label: str
    once: Callable[[], Measurement]
    warm_up: Callable[[], object] | None = None


def _wrk_script(path: Path, request_path: str, headers: dict[str, str]) -> None:
    lines = ['wrk.method = "GET"', f'wrk.path = "{request_path}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")


def _latency_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """The numbers wrk prints: requests, req/s, p50/p99, socket errors, bad statuses."""
    res: dict[str, Any] = {}
    if m := re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M):
        res["requests"] = int(m.group(1))
    if m := re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M):
        res["req_s"] = float(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", out, re.M):
            res[f"p{pct}_ms"] = _latency_ms(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["bad_responses"] = int(m.group(1)) if m else 0
    return res


def wrk(
    tmp: Path,
    label: str,
    url: str,
    request_path: str,
    headers: dict[str, str],
    duration_s: int,
    measured: Proc | None,
) -> Measurement:
    """wrk -t1 -c50 --latency. For a proxy, URL is the proxy and request_path absolute-form."""
    script = tmp / f"wrk-{label}.lua"
    _wrk_script(script, request_path, headers)
    argv = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{WRK_CONNECTIONS}",
        f"-d{duration_s}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    cpu0 = measured.cpu() if measured else 0.0
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30)
    except subprocess.TimeoutExpired:
        return Measurement(False, reason=f"wrk did not finish within {duration_s + 30} s")
    cpu_s = (measured.cpu() - cpu0) if measured else None
    res = parse_wrk(out.stdout)
    if out.returncode != 0 or "req_s" not in res:
        return Measurement(False, reason=f"wrk failed: {(out.stderr or out.stdout).strip()[-300:]}")
    requests = res.get("requests", 0)
    if requests == 0:
        return Measurement(False, reason="no request completed", extra=res)
    if res["bad_responses"] > MAX_BAD_RESPONSE_SHARE * requests:
        return Measurement(
            False,
            reason=f"{res['bad_responses']} of {requests} responses were not 2xx/3xx",
            extra=res,
        )
    if cpu_s is not None:
        res["proxy_cpu_s"] = round(cpu_s, 2)
        if cpu_s > 0:
            res["req_per_proxy_cpu_s"] = round(requests / cpu_s, 1)
    res["command"] = " ".join(argv)
    return Measurement(True, res["req_s"], res.get("p99_ms"), extra=res)


def wrk_headers(origin: Origin, peer: Peer | None, close: bool) -> tuple[str, str, dict[str, str]]:
    """(URL to connect to, request target, headers) for direct or through PEER."""
    headers: dict[str, str] = {}
    if close:
        headers["Connection"] = "close"
    if peer is None:
        return origin.url("/"), SMALL_PATH, headers
    headers["Host"] = f"{HOST}:{origin.port}"
    if auth := peer.proxy_authorization:
        headers["Proxy-Authorization"] = auth
    # wrk sends origin-form by default; an absolute-form target makes it a proxy request
    return peer.proxy_url + "/", origin.url(SMALL_PATH), headers


def curl_download(
    url: str,
    peer: Peer | None,
    tunnel: bool,
    max_time_s: float,
    curl_args: list[str] | None = None,
) -> Measurement:
    """Download URL to /dev/null (through PEER, via CONNECT when TUNNEL); bytes/s.

    While curl runs, the proxy's RSS is sampled, so the result also says how much memory
    the proxy needed to stream the body (its peak growth).
    """
    argv = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        str(max_time_s),
        "-w",
        "%{http_code} %{http_connect} %{size_download} %{time_total} %{speed_download}",
    ]
    if peer is not None:
        argv += ["-x", peer.proxy_url]
        if peer.user is not None:
            argv += ["-U", f"{peer.user}:{peer.password}"]
        if tunnel:
            argv.append("-p")
    argv += curl_args or []  # e.g. --proxy-cacert for a proxy reached over TLS
    argv.append(url)
    rss0 = peak = peer.proc.rss() if peer else 0
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + max_time_s + 10
        while p.poll() is None and time.monotonic() < deadline:
            if peer is not None:
                peak = max(peak, peer.proc.rss())
            time.sleep(RSS_SAMPLE_INTERVAL_S)
        out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    shown = (
        " ".join(a if not a.startswith(f"{peer.user}:") else f"{peer.user}:TOKEN" for a in argv)
        if peer and peer.user
        else " ".join(argv)
    )
    try:
        code, connect_code, size, total, speed = out.split()
        size_b, total_s, speed_bps = int(float(size)), float(total), float(speed)
    except ValueError:
        return Measurement(False, reason=f"curl exit {p.returncode}: {err.strip()[-200:]}")
    extra: dict[str, Any] = {
        "http_code": int(code),
        "connect_code": int(connect_code),
        "bytes": size_b,
        "seconds": round(total_s, 3),
        "curl_exit": p.returncode,
        "command": shown,
    }
    if peer is not None:
        extra["proxy_peak_rss_growth_bytes"] = max(0, peak - rss0)
    if code != "200":
        why = f"HTTP {code}" + (f" (CONNECT answered {connect_code})" if tunnel else "")
        return Measurement(
            False, reason=f"{why}; curl exit {p.returncode} {err.strip()[-150:]}", extra=extra
        )
    if size_b < BULK_BYTES:
        extra["partial"] = True
        if size_b == 0:
            return Measurement(
                False, reason=f"no body received ({err.strip()[-150:]})", extra=extra
            )
        extra["note"] = (
            f"only {size_b / 2**20:.1f} of {BULK_BYTES / 2**20:.0f} MiB in {total_s:.1f} s "
            f"(curl --max-time {max_time_s:g}); rate from the part received"
        )
    return Measurement(True, speed_bps, extra=extra)
