"""`make bench`: fixedip against squid, tinyproxy and proxy.py, with an nginx origin.

Everything runs on loopback, with configuration files and ports of its own in a
temporary directory; every load is bounded in time; everything started here is stopped
here by PID, also on Ctrl-C or an error. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import facts, fleet, load, peers, report, tls, tunnels
from benchmarks.load import Trial
from benchmarks.peers import BULK_PATH, HOST, REPO, Origin, Peer, say
from benchmarks.procs import ForeignCpu, Proc, free_ports

SCENARIOS = [
    "keepalive",
    "close",
    "connect_bulk",
    "plain_bulk",
    "idle_tunnels",
    "workers",
    *tls.SCENARIOS,
    *fleet.SCENARIOS,
]
WORKERS_KEYS = ["server.workers", "workers"]  # where `workers = N` may live (first accepted)
BUSY_WARNING_SHARE = 0.10
PAUSE_S = 1.0  # between runs: lets TIME_WAIT sockets and CPU settle
WARM_UP_S = 1  # an unrecorded wrk run before each target's measured runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Benchmark fixedip against squid, tinyproxy and proxy.py on loopback.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="3 s single runs and a 10 s tunnel hold, for development "
        "(writes results/dev.*, not latest.*)",
    )
    p.add_argument(
        "--tunnels",
        type=int,
        default=2000,
        help="idle CONNECT tunnels to hold (default 2000; issue 5's target is 5000)",
    )
    p.add_argument("--hold", type=float, help="seconds to hold the tunnels (default 30, quick 10)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 3)")
    p.add_argument("--runs", type=int, help="runs per measurement, best kept (default 2, quick 1)")
    p.add_argument(
        "--only",
        help=f"comma-separated scenarios to run: {','.join(SCENARIOS)} (writes results/dev.*)",
    )
    p.add_argument(
        "--targets",
        help="comma-separated: direct,squid,tinyproxy,proxy.py,fixedip (writes results/dev.*)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="wait up to S seconds for other processes to leave the CPUs idle "
        "(under 10%% busy) before starting",
    )
    p.add_argument(
        "--name",
        help="write results/NAME.{md,json} (default: latest, or dev for --quick/--only/--targets)",
    )
    p.add_argument("--skip-install", action="store_true", help="do not install missing peers")
    args = p.parse_args(argv)
    args.duration = args.duration or (3 if args.quick else 10)
    args.runs = args.runs or (1 if args.quick else 2)
    args.hold = args.hold if args.hold is not None else (10.0 if args.quick else 30.0)
    args.bulk_max_s = 10.0 if args.quick else 20.0
    args.scenarios = _pick(args.only, SCENARIOS, "--only")
    args.targets = _pick(args.targets, report.TARGETS, "--targets")
    partial = args.quick or args.only or args.targets != report.TARGETS
    args.stem = args.name or ("dev" if partial else "latest")
    if not re.fullmatch(r"[\w.-]+", args.stem):
        p.error("--name: letters, digits, '.', '_' and '-' only")
    if args.tunnels < 1:
        p.error("--tunnels must be at least 1")
    return args


def _pick(value: str | None, allowed: list[str], flag: str) -> list[str]:
    if not value:
        return list(allowed)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if bad := [v for v in chosen if v not in allowed]:
        sys.exit(
            f"benchmarks/run: {flag}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})"
        )
    return [v for v in allowed if v in chosen]


def raise_nofile(tunnels: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children (the proxies) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = 2 * tunnels + 200
    if need > hard:
        say(
            f"warning: {tunnels} tunnels need about {need} descriptors in the proxy; "
            f"the hard limit is {hard}, so some tunnels will fail"
        )
    return hard


def _best(
    label: str,
    runs: int,
    once: Callable[[], load.Measurement],
    show: Callable[[load.Measurement], str],
    ours: list[Proc],
) -> dict[str, Any]:
    """Run ONCE up to RUNS times; keep the run with the highest value."""
    return _interleaved([Trial(label, once)], runs, show, ours)[label]


def _interleaved(
    trials: list[Trial],
    runs: int,
    show: Callable[[load.Measurement], str],
    ours: list[Proc],
) -> dict[str, dict[str, Any]]:
    """Measure every trial RUNS times, round by round (run 1 of each, then run 2 of
    each...), and keep each one's best. A slow spell on this shared machine then costs
    every target a run instead of all of one target's runs."""
    done: dict[str, list[load.Measurement]] = {t.label: [] for t in trials}
    for i in range(runs):
        for trial in trials:
            if trial.warm_up is not None:
                trial.warm_up()  # not recorded: connections, caches, heap
                time.sleep(PAUSE_S)
            watch = ForeignCpu(ours)
            m = trial.once()
            foreign = watch.share()
            m.extra["foreign_cpu_share"] = round(foreign, 3)
            shown = show(m) if m.ok else f"failed: {m.reason}"
            if foreign > BUSY_WARNING_SHARE:
                shown += f" [other processes used {foreign:.0%} of the CPUs]"
            done[trial.label].append(m)
            say(f"  {trial.label} run {i + 1}/{runs}: {shown}")
            time.sleep(PAUSE_S)
    return {label: _summary(measured) for label, measured in done.items()}


def _summary(done: list[load.Measurement]) -> dict[str, Any]:
    good = [m for m in done if m.ok]
    runs_doc = [{"ok": m.ok, "value": m.value, "reason": m.reason, **m.extra} for m in done]
    if not good:
        return {"ok": False, "reason": done[-1].reason, "runs": runs_doc}
    best = max(good, key=lambda m: m.value)
    return {
        "ok": True,
        "best": best.value,
        "p99_ms": best.p99_ms,
        "partial": bool(best.extra.get("partial")),
        "runs": runs_doc,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.peers: dict[str, Peer] = {}
        self.unavailable: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {s: {} for s in SCENARIOS}
        self.notes: list[str] = []
        self.origin: Origin | None = None
        self.token = ""
        self.token_hash = ""
        self.busy_before = 0.0
        self.tls = tls.TlsBench(self)
        self.fleet = fleet.FleetBench(self, _best)

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        ports = iter(free_ports(8))
        say(f"starting nginx origin in {self.tmp}")
        self.origin = peers.start_origin(self.tmp, next(ports))
        self.procs.append(self.origin.proc)
        # the first read of the sparse 100 MiB file fills the page cache: keep it out of results
        load.curl_download(self.origin.url(BULK_PATH), None, False, 30)
        self.token, self.token_hash = peers.new_token()
        hold_timeout = int(self.args.hold) + 120
        starters: dict[str, Callable[[int], Peer]] = {
            "squid": lambda port: peers.start_squid(self.tmp, port),
            "tinyproxy": lambda port: peers.start_tinyproxy(
                self.tmp, port, self.origin_port, self.args.tunnels + 1000
            ),
            "proxy.py": lambda port: peers.start_proxy_py(self.tmp, port, hold_timeout),
            "fixedip": self._start_fixedip,
        }
        for name in report.TARGETS[1:]:
            if name not in self.args.targets:
                continue
            port = next(ports)
            say(f"starting {name} on {HOST}:{port}")
            try:
                peer = starters[name](port)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                self.unavailable[name] = f"did not start: {exc}"
                say(f"  {name} did not start: {exc}")
                continue
            self.procs.append(peer.proc)
            self.peers[name] = peer
            self._smoke(peer)

    @property
    def origin_port(self) -> int:
        assert self.origin is not None
        return self.origin.port

    def _start_fixedip(
        self, port: int, name: str = "fixedip", workers: tuple[str, int] | None = None
    ) -> Peer:
        conf = peers.fixedip_config(
            self.tmp, name, port, self.origin_port, self.token_hash, self.args.tunnels, workers
        )
        ok, why = peers.config_accepted(conf)
        if not ok:
            raise RuntimeError(f"config check refused {conf.name}: {why[-300:]}")
        return peers.start_fixedip(self.tmp, name, port, conf, self.token)

    def _smoke(self, peer: Peer) -> None:
        """One forward GET and one CONNECT through PEER, so a broken setup shows at once."""
        url = f"http://{HOST}:{self.origin_port}/3b"
        for tunnel in (False, True):
            argv = ["curl", "-sS", "--max-time", "5", "-x", peer.proxy_url, url]
            if peer.user:
                argv[4:4] = ["-U", f"{peer.user}:{peer.password}"]
            if tunnel:
                argv.insert(1, "-p")
            out = subprocess.run(argv, capture_output=True, timeout=15)
            what = "CONNECT" if tunnel else "forward GET"
            if out.stdout != peers.SMALL_BODY:
                say(
                    f"  warning: {peer.name} {what} smoke test got {out.stdout[:80]!r} "
                    f"{out.stderr.decode(errors='replace').strip()[:200]}"
                )
                self.notes.append(
                    f"{peer.name}: the {what} smoke test failed "
                    f"({out.stderr.decode(errors='replace').strip()[:200]})."
                )
        say(f"  {peer.name} answers (forward GET and CONNECT smoke tests done)")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            say(f"stopping {proc.name} (pid {proc.pid})")
            proc.stop()
        self.procs.clear()

    # --- scenarios -----------------------------------------------------------------

    def _targets(self, scenario: str, direct: bool = True) -> list[tuple[str, Peer | None]]:
        out: list[tuple[str, Peer | None]] = []
        for t in self.args.targets:
            if t == "direct":
                if direct:
                    out.append((t, None))
            elif t in self.peers:
                out.append((t, self.peers[t]))
            else:
                self.results[scenario][t] = {
                    "ok": False,
                    "reason": self.unavailable.get(t, "not started"),
                }
        return out

    def requests(self, scenario: str, close: bool) -> None:
        title = "Connection: close" if close else "keep-alive"
        say(
            f"scenario {scenario}: {title} GET of 3 bytes, wrk -t1 -c{load.WRK_CONNECTIONS} "
            f"-d{self.args.duration}s, best of {self.args.runs}, runs interleaved"
        )
        assert self.origin is not None
        trials = []
        for name, peer in self._targets(scenario):
            url, target, headers = load.wrk_headers(self.origin, peer, close)
            measured = peer.proc if peer else None
            wrk_args = (self.tmp, f"{scenario}-{name}", url, target, headers)
            trials.append(
                Trial(
                    name,
                    functools.partial(load.wrk, *wrk_args, self.args.duration, measured),
                    functools.partial(load.wrk, *wrk_args, WARM_UP_S, measured),
                )
            )
        self.record(scenario, self.compare(trials, _show_rate), "req_s")

    def bulk(self, scenario: str, tunnel: bool) -> None:
        title = "CONNECT tunnel (curl -p)" if tunnel else "plain forward"
        say(
            f"scenario {scenario}: 100 MiB via {title}, curl --max-time "
            f"{self.args.bulk_max_s:g}, best of {self.args.runs}, runs interleaved"
        )
        assert self.origin is not None
        url = self.origin.url(BULK_PATH)
        trials = [
            Trial(
                name,
                functools.partial(load.curl_download, url, peer, tunnel, self.args.bulk_max_s),
            )
            for name, peer in self._targets(scenario)
        ]
        self.record(scenario, self.compare(trials, _show_throughput), "bytes_per_s")

    def compare(
        self, trials: list[Trial], show: Callable[[load.Measurement], str]
    ) -> dict[str, dict[str, Any]]:
        """The trials measured round by round (see _interleaved), best run of each."""
        return _interleaved(trials, self.args.runs, show, self.procs)

    def record(self, scenario: str, entries: dict[str, dict[str, Any]], unit: str) -> None:
        """Store a comparison's entries, their best value under `unit` (req_s or
        bytes_per_s; bulk transfers have no p99)."""
        for name, entry in entries.items():
            if entry["ok"]:
                entry[unit] = entry.pop("best")
                if unit == "bytes_per_s":
                    entry.pop("p99_ms", None)
            self.results[scenario][name] = entry

    def idle_tunnels(self) -> None:
        n, hold = self.args.tunnels, self.args.hold
        say(f"scenario idle_tunnels: {n} CONNECT tunnels per proxy, held {hold:g} s")
        assert self.origin is not None
        for name, peer in self._targets("idle_tunnels", direct=False):
            assert peer is not None
            res = tunnels.idle_tunnels(peer, self.origin, n, hold)
            res["ok"] = res["opened"] > 0
            if not res["ok"]:
                res["reason"] = "; ".join(f"{k} x{v}" for k, v in res["errors"].items())
            say(
                f"  {name}: RSS {report.megabytes(res['rss_growth_bytes'])} "
                f"(peak {report.megabytes(res['rss_peak_growth_bytes'])}), "
                f"{res['usable']}/{n} usable afterwards"
                + (f"; errors {res['errors']}" if res["errors"] else "")
            )
            self.results["idle_tunnels"][name] = res
            if not res["proxy_alive_after"]:
                self.unavailable[name] = "exited during the idle-tunnel scenario"
                self.notes.append(
                    f"{name} exited during the idle-tunnel scenario: {peer.proc.log_tail()}"
                )
            time.sleep(PAUSE_S * 2)

    def workers(self) -> None:
        """fixedip with workers = 1 and 2: keep-alive req/s and req per gateway CPU-second."""
        say("scenario workers: fixedip keep-alive with workers = 1 and 2")
        if "fixedip" not in self.args.targets:
            return
        key = None
        tried = []
        for candidate in WORKERS_KEYS:
            conf = peers.fixedip_config(
                self.tmp, "fixedip-probe", 1, self.origin_port, self.token_hash, 0, (candidate, 2)
            )
            if peers.config_accepted(conf)[0]:
                key = candidate
                break
            tried.append(f"`{candidate}`")
        if key is None:
            reason = (
                f"fixedip has no `workers` setting yet (config check refused {', '.join(tried)})"
            )
            say(f"  n/a: {reason}")
            self.results["workers"] = {"ok": False, "reason": reason}
            return
        assert self.origin is not None
        by: dict[str, Any] = {}
        started: dict[str, tuple[str, Peer]] = {}  # both run at once; one is measured at a time
        try:
            for n in ("1", "2"):
                name = f"fixedip-w{n}"
                try:
                    peer = self._start_fixedip(free_ports(1)[0], name, (key, int(n)))
                except (RuntimeError, OSError) as exc:
                    by[n] = {"ok": False, "reason": f"did not start: {exc}"}
                    continue
                self.procs.append(peer.proc)
                started[n] = (name, peer)
            time.sleep(PAUSE_S)
            trials = []
            for name, peer in started.values():
                url, target, headers = load.wrk_headers(self.origin, peer, close=False)
                wrk_args = (self.tmp, name, url, target, headers)
                trials.append(
                    Trial(
                        name,
                        functools.partial(load.wrk, *wrk_args, self.args.duration, peer.proc),
                        functools.partial(load.wrk, *wrk_args, WARM_UP_S, peer.proc),
                    )
                )
            entries = self.compare(trials, _show_rate)
            for n, (name, _) in started.items():
                entry = entries[name]
                if entry["ok"]:
                    best = max((r for r in entry["runs"] if r["ok"]), key=lambda r: r["value"])
                    entry.update(
                        req_s=best["value"],
                        proxy_cpu_s=best.get("proxy_cpu_s", 0.0),
                        req_per_proxy_cpu_s=best.get("req_per_proxy_cpu_s", 0.0),
                    )
                by[n] = entry
        finally:
            for _, peer in started.values():
                peer.proc.stop()
                self.procs.remove(peer.proc)
        self.results["workers"] = {"ok": True, "key": key, "by_workers": by}

    # --- the whole run -------------------------------------------------------------

    def run(self) -> None:
        steps: dict[str, Callable[[], None]] = {
            "keepalive": lambda: self.requests("keepalive", close=False),
            "close": lambda: self.requests("close", close=True),
            "connect_bulk": lambda: self.bulk("connect_bulk", tunnel=True),
            "plain_bulk": lambda: self.bulk("plain_bulk", tunnel=False),
            "idle_tunnels": self.idle_tunnels,
            "workers": self.workers,
            "tls_keepalive": lambda: self.tls.requests("tls_keepalive", close=False),
            "tls_close": lambda: self.tls.requests("tls_close", close=True),
            "tls_connect_bulk": self.tls.connect_bulk,
            "fleet": self.fleet.run,
        }
        for scenario in self.args.scenarios:
            steps[scenario]()
        self.tls.stop()

    def document(self) -> dict[str, Any]:
        a = self.args
        settings = {
            "quick": a.quick,
            "duration_s": a.duration,
            "runs": a.runs,
            "interleaved": True,  # runs go round by round over the targets (_interleaved)
            "tunnels": a.tunnels,
            "hold_s": a.hold,
            "connections": load.WRK_CONNECTIONS,
            "threads": load.WRK_THREADS,
            "bulk_bytes": peers.BULK_BYTES,
            "bulk_max_s": a.bulk_max_s,
            "scenarios": a.scenarios,
            "targets": a.targets,
        }
        results = {s: self.results[s] for s in SCENARIOS if s != "workers"}
        if "workers" in a.scenarios:
            results["workers"] = self.results["workers"]
        notes = report.notes(self.results, self.notes, self.busy_before, BUSY_WARNING_SHARE)
        flow = self.tmp / "fixedip-flow.jsonl"
        if flow.exists():
            with open(flow, "rb") as f:
                records = sum(1 for _ in f)
            notes.append(f"fixedip wrote {records:,} flow-log records during the run.")
        machine_facts = facts.machine()
        machine_facts["cpu_busy_before_start"] = round(self.busy_before, 3)
        doc: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "settings": settings,
            "machine": machine_facts,
            "versions": peers.versions(),
            "results": results,
            "notes": notes,
        }
        doc["ratios"] = report.ratios(results, settings)
        return doc


def _show_rate(m: load.Measurement) -> str:
    text = f"{m.value:,.0f} req/s, p99 {m.p99_ms} ms"
    if cpu := m.extra.get("req_per_proxy_cpu_s"):
        text += f", {cpu:,.0f} req per proxy CPU-second"
    errs = m.extra.get("socket_errors") or {}
    if shown := ", ".join(f"{k} {v}" for k, v in errs.items() if v):
        text += f" (socket errors: {shown})"
    return text


def _show_throughput(m: load.Measurement) -> str:
    return report.throughput(m.value) + (" (partial)" if m.extra.get("partial") else "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile(args.tunnels)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if not args.skip_install:
        peers.install_peers()
    busy = facts.busy_share()
    deadline = time.monotonic() + args.wait_quiet
    while busy > BUSY_WARNING_SHARE and time.monotonic() < deadline:
        say(f"CPU {busy:.0%} busy with other processes; waiting (--wait-quiet)")
        time.sleep(5)
        busy = facts.busy_share()
    say(f"CPU busy before start (other processes): {busy:.0%}")
    tmp = Path(tempfile.mkdtemp(prefix="fixedip-bench-"))
    bench = Bench(args, tmp)
    bench.busy_before = busy
    t0 = time.monotonic()
    try:
        bench.start()
        bench.run()
        doc = bench.document()
    except KeyboardInterrupt:
        say("interrupted: stopping everything this run started")
        return 130
    finally:
        bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    json_path, md_path = report.write(doc, REPO / "benchmarks" / "results", args.stem)
    print()
    print(report.markdown(doc))
    say(
        f"wrote {json_path.relative_to(REPO)} and {md_path.relative_to(REPO)} "
        f"in {time.monotonic() - t0:.0f} s"
    )
    return 0
