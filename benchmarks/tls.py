"""The TLS scenarios: fixedip's TLS listener against squid-openssl's `https_port`.

Both proxies serve one certificate (ECDSA P-256, from `fixedip tls selfsigned`), so a
handshake costs them the same; a second nginx serves the origin's files over TLS with it
too, for CONNECT with TLS inside TLS. The processes are started for these scenarios only
and stopped after them, by PID, like everything else here.

- `tls_keepalive`: wrk to `https://PROXY/` with an absolute-form target: one TLS
  connection per wrk connection, many requests on each.
- `tls_close`: the same with `Connection: close`: a new TCP connection and a full TLS
  handshake for every request (wrk does not resume sessions).
- `tls_connect_bulk`: curl downloading 100 MiB from the TLS origin through a CONNECT
  tunnel over the TLS listener (TLS inside TLS), beside the same download through the
  plain listener (TLS inside a plain tunnel).
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import load, peers
from benchmarks.load import Trial
from benchmarks.peers import BULK_PATH, HOST, REPO, Peer, say
from benchmarks.procs import Proc, free_ports

SCENARIOS = ["tls_keepalive", "tls_close", "tls_connect_bulk"]
TARGETS = ["squid", "fixedip"]
PLAIN_LISTENER = "fixedip (plain listener)"


@dataclass
class TlsPeer(Peer):
    """A proxy reached over TLS: the same Peer, an https:// URL."""

    ca: Path | None = None

    @property
    def proxy_url(self) -> str:
        return f"https://{HOST}:{self.port}"


class TlsBench:
    """Starts what the TLS scenarios need on first use; `stop()` ends it all."""

    def __init__(self, bench: Any) -> None:
        self.bench = bench
        self.tmp: Path = bench.tmp / "tls"
        self.peers: dict[str, TlsPeer] = {}
        self.plain: Peer | None = None
        self.procs: list[Proc] = []
        self.origin_port = 0
        self.started = False

    # --- set-up ------------------------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.tmp.mkdir()
        self.tmp.chmod(0o755)
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "fixedip"), "tls", "selfsigned", "--name",
             "bench.fixedip.test", "--ip", HOST, "--out", str(self.tmp)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        (self.tmp / "privkey.pem").chmod(0o644)  # squid reads it as its own user; a throwaway key
        self.ca = self.tmp / "ca.pem"
        self.cert, self.key = self.tmp / "fullchain.pem", self.tmp / "privkey.pem"
        ports = iter(free_ports(5))
        self.origin_port = next(ports)
        say(f"starting a TLS nginx origin on {HOST}:{self.origin_port}")
        self._start_origin(self.origin_port)
        for name in TARGETS:
            if name not in self.bench.args.targets:
                continue
            http_port, https_port = next(ports), next(ports)
            say(f"starting {name} with TLS on {HOST}:{https_port}")
            try:
                if name == "squid":
                    self._start_squid(http_port, https_port)
                else:
                    self._start_fixedip(http_port, https_port)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                say(f"  {name} (TLS) did not start: {exc}")
                self.bench.notes.append(f"{name} with TLS did not start: {exc}")

    def _start_origin(self, port: int) -> None:
        www = self.bench.tmp / "www"
        conf = self.tmp / "nginx-tls.conf"
        conf.write_text(
            f"""daemon off;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {self.tmp}/nginx-body;
    proxy_temp_path {self.tmp}/nginx-proxy;
    fastcgi_temp_path {self.tmp}/nginx-fastcgi;
    uwsgi_temp_path {self.tmp}/nginx-uwsgi;
    scgi_temp_path {self.tmp}/nginx-scgi;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        root {www};
        location = {BULK_PATH} {{ }}
    }}
}}
"""
        )
        proc = Proc(
            "nginx-tls",
            ["nginx", "-p", str(self.tmp), "-e", f"{self.tmp}/nginx-error.log", "-c", str(conf)],
            self.tmp / "nginx-tls.out",
        )
        self._run(proc, port)

    def _start_squid(self, http_port: int, https_port: int) -> None:
        peer = peers.start_squid(
            self.tmp, http_port, https=(https_port, self.cert, self.key), name="squid-tls"
        )
        self.procs.append(peer.proc)
        self.bench.procs.append(peer.proc)
        peer.proc.wait_listening(HOST, https_port)
        self.peers["squid"] = TlsPeer("squid", https_port, peer.proc, ca=self.ca)

    def _start_fixedip(self, http_port: int, https_port: int) -> None:
        b = self.bench
        conf = peers.fixedip_config(
            self.tmp, "fixedip-tls", http_port, b.origin_port, b.token_hash, 0
        )
        text = conf.read_text().replace(
            "[listen]\n", f'[listen]\nhttps = "{HOST}:{https_port}"\n', 1
        )
        text = text.replace(
            f"connect_ports = [{b.origin_port}]",
            f"connect_ports = [{b.origin_port}, {self.origin_port}]",
        )
        text += f'\n[tls]\ncert = "{self.cert}"\nkey = "{self.key}"\n'
        conf.write_text(text)
        ok, why = peers.config_accepted(conf)
        if not ok:
            raise RuntimeError(f"config check refused {conf.name}: {why[-300:]}")
        plain = peers.start_fixedip(self.tmp, "fixedip-tls", http_port, conf, b.token)
        self.procs.append(plain.proc)
        b.procs.append(plain.proc)
        plain.proc.wait_listening(HOST, https_port)
        self.plain = plain
        self.peers["fixedip"] = TlsPeer(
            "fixedip", https_port, plain.proc, user=plain.user, password=plain.password, ca=self.ca
        )

    def _run(self, proc: Proc, port: int) -> None:
        proc.start(cwd=self.tmp)
        self.procs.append(proc)
        self.bench.procs.append(proc)
        proc.wait_listening(HOST, port)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            say(f"stopping {proc.name} (pid {proc.pid})")
            proc.stop()
            if proc in self.bench.procs:
                self.bench.procs.remove(proc)
        self.procs.clear()

    # --- scenarios ---------------------------------------------------------------------

    def _targets(self, scenario: str) -> list[TlsPeer]:
        out = []
        for name in TARGETS:
            if name not in self.bench.args.targets:
                continue
            if name in self.peers:
                out.append(self.peers[name])
            else:
                self.bench.results[scenario][name] = {"ok": False, "reason": "did not start"}
        return out

    def requests(self, scenario: str, close: bool) -> None:
        self.start()
        b = self.bench
        args = b.args
        title = "a new TLS connection per request" if close else "keep-alive over TLS"
        say(
            f"scenario {scenario}: {title}, GET of 3 bytes, wrk -t1 -c{load.WRK_CONNECTIONS} "
            f"-d{args.duration}s, best of {args.runs}, runs interleaved"
        )
        trials = []
        for peer in self._targets(scenario):
            url, target, headers = load.wrk_headers(b.origin, peer, close)
            wrk_args = (b.tmp, f"{scenario}-{peer.name}", url, target, headers)
            trials.append(
                Trial(
                    peer.name,
                    functools.partial(load.wrk, *wrk_args, args.duration, peer.proc),
                    functools.partial(load.wrk, *wrk_args, 1, peer.proc),
                )
            )
        b.record(scenario, b.compare(trials, _show_rate), "req_s")

    def connect_bulk(self) -> None:
        self.start()
        b = self.bench
        url = f"https://{HOST}:{self.origin_port}{BULK_PATH}"
        say(
            f"scenario tls_connect_bulk: 100 MiB from {url} through CONNECT, "
            f"curl --max-time {b.args.bulk_max_s:g}, best of {b.args.runs}, runs interleaved"
        )
        targets: list[Peer] = list(self._targets("tls_connect_bulk"))
        if self.plain is not None:
            targets.append(Peer(PLAIN_LISTENER, self.plain.port, self.plain.proc,
                                user=self.plain.user, password=self.plain.password))  # fmt: skip
        trials = []
        for peer in targets:
            extra = ["--cacert", str(self.ca)]
            if isinstance(peer, TlsPeer):
                extra += ["--proxy-cacert", str(self.ca)]
            once = functools.partial(
                load.curl_download, url, peer, True, b.args.bulk_max_s, curl_args=extra
            )
            trials.append(Trial(peer.name, once))
        b.record("tls_connect_bulk", b.compare(trials, _show_throughput), "bytes_per_s")


def _show_rate(m: load.Measurement) -> str:
    text = f"{m.value:,.0f} req/s, p99 {m.p99_ms} ms"
    if cpu := m.extra.get("req_per_proxy_cpu_s"):
        text += f", {cpu:,.0f} req per proxy CPU-second"
    return text


def _show_throughput(m: load.Measurement) -> str:
    return f"{m.value / 1e6:,.0f} MB/s" + (" (partial)" if m.extra.get("partial") else "")
