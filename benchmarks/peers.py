"""The peers: installing them, writing their configuration files, starting them.

Everything listens on 127.0.0.1 on ports chosen at start, with configuration files
generated into the run's temporary directory; nothing installed system-wide is
reconfigured or touched (Debian may start its own nginx/squid services when the packages
are installed: those are not ours and are left alone).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import venv
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import Proc
from fixedip import compiled

HOST = "127.0.0.1"
EGRESS_IP = "127.0.0.10"
REPO = Path(__file__).resolve().parent.parent
PEERS_VENV = REPO / "benchmarks" / ".venv-peers"
PROXY_PY_VERSION = "2.4.10"
APT_PACKAGES = ["nginx", "squid-openssl", "tinyproxy", "wrk", "curl"]
SMALL_PATH = "/3b"
SMALL_BODY = b"ok\n"
BULK_PATH = "/100m"
BULK_BYTES = 100 * 1024 * 1024
CLIENT_NAME = "bench"


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --- installing -------------------------------------------------------------------------


def _dpkg_installed(package: str) -> bool:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return out.returncode == 0 and out.stdout.strip() == "install ok installed"


def install_peers() -> None:
    """Install the Debian packages and proxy.py (in its own venv) when they are missing."""
    missing = [p for p in APT_PACKAGES if not _dpkg_installed(p)]
    if missing:
        if os.geteuid() != 0:
            sys.exit(
                f"benchmarks: missing Debian packages {' '.join(missing)}; install them with\n"
                f"  sudo apt-get update && sudo apt-get install -y {' '.join(missing)}"
            )
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        say("apt-get update")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        say(f"apt-get install -y {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)
    else:
        say(f"Debian packages present: {', '.join(APT_PACKAGES)}")
    proxy_bin = PEERS_VENV / "bin" / "proxy"
    if not proxy_bin.exists() or proxy_py_version() != PROXY_PY_VERSION:
        say(f"creating {PEERS_VENV.relative_to(REPO)} with proxy.py {PROXY_PY_VERSION}")
        venv.EnvBuilder(with_pip=True, clear=True).create(PEERS_VENV)
        subprocess.run(
            [str(PEERS_VENV / "bin" / "pip"), "install", "-q", f"proxy.py=={PROXY_PY_VERSION}"],
            check=True,
        )
    else:
        say(f"proxy.py {PROXY_PY_VERSION} present in {PEERS_VENV.relative_to(REPO)}")


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def proxy_py_version() -> str:
    return _first_line([str(PEERS_VENV / "bin" / "proxy"), "--version"]).lstrip("v")


def versions() -> dict[str, str]:
    deb = {}
    for package in APT_PACKAGES:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
        deb[package] = out.stdout.strip() or "not installed"
    squid_version = _first_line(["squid", "-v"]).rsplit(" ", 1)[-1]
    return {
        "nginx": f"nginx {deb['nginx']}",
        "squid": f"squid {squid_version} (squid-openssl {deb['squid-openssl']})",
        "tinyproxy": f"tinyproxy {deb['tinyproxy']}",
        "proxy.py": f"proxy.py {proxy_py_version()}",
        "fixedip": "fixedip "
        + _first_line([str(REPO / ".venv" / "bin" / "fixedip"), "version"])
        + f" ({compiled.describe()})",
        "wrk": f"wrk {deb['wrk']}",
        "curl": _first_line(["curl", "--version"]),
    }


# --- running ----------------------------------------------------------------------------


@dataclass
class Peer:
    """A proxy under test: where it listens and how a client authenticates to it."""

    name: str
    port: int
    proc: Proc
    user: str | None = None
    password: str | None = None
    unavailable: str | None = None  # why it cannot be measured at all, if it cannot

    @property
    def proxy_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def proxy_authorization(self) -> str | None:
        if self.user is None:
            return None
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + b64encode(raw).decode()


@dataclass
class Origin:
    port: int
    proc: Proc

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"


def nofile_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_origin(tmp: Path, port: int) -> Origin:
    """nginx: one worker, keep-alive on, no access log; a 3-byte body and a 100 MiB file."""
    www = tmp / "www"
    www.mkdir()
    with open(www / "100m", "wb") as f:
        f.truncate(BULK_BYTES)  # sparse: served from the page cache, no disk reads
    for d in (tmp, www):
        d.chmod(0o755)
    (www / "100m").chmod(0o644)
    nofile = nofile_limit()
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections {nofile - 64}; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_header_timeout 120s;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {www};
        location = {SMALL_PATH} {{ default_type text/plain; return 200 "ok\\n"; }}
        location = {BULK_PATH} {{ }}
    }}
}}
"""
    )
    proc = Proc(
        "nginx",
        ["nginx", "-p", str(tmp), "-e", f"{tmp}/nginx-error.log", "-c", str(conf)],
        tmp / "nginx.out",
    )
    proc.start()
    proc.wait_listening(HOST, port)
    return Origin(port, proc)


def start_squid(
    tmp: Path, port: int, https: tuple[int, Path, Path] | None = None, name: str = "squid"
) -> Peer:
    """squid-openssl: plain forward proxy, no cache, no logs, localhost allowed, no auth.

    HTTPS = (port, certificate, key) adds an `https_port`: the same proxy over TLS."""
    work = tmp / name
    work.mkdir()
    if os.geteuid() == 0:
        # squid refuses to run as root and switches to Debian's cache_effective_user, proxy
        user = pwd.getpwnam("proxy")
        os.chown(work, user.pw_uid, user.pw_gid)
    conf = tmp / f"{name}.conf"
    tls_port = (
        f"https_port {HOST}:{https[0]} tls-cert={https[1]} tls-key={https[2]}\n" if https else ""
    )
    conf.write_text(
        f"""http_port {HOST}:{port}
{tls_port}visible_hostname fixedip-bench
http_access allow localhost
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {work}/cache.log
pid_filename {work}/squid.pid
coredump_dir {work}
max_filedescriptors {nofile_limit()}
shutdown_lifetime 1 seconds
pinger_enable off
dns_nameservers 127.0.0.1
"""
    )
    check = subprocess.run(
        ["squid", "-k", "parse", "-f", str(conf)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise RuntimeError(f"squid rejected its config: {check.stderr.strip()[-400:]}")
    # -N: no daemon and no SMP kids, so the PID we start is the one that does the work
    proc = Proc(name, ["squid", "-N", "-f", str(conf)], tmp / f"{name}.out")
    proc.start()
    proc.wait_listening(HOST, port)
    return Peer(name, port, proc)


def start_tinyproxy(tmp: Path, port: int, origin_port: int, max_clients: int) -> Peer:
    work = tmp / "tinyproxy"
    work.mkdir()
    conf = tmp / "tinyproxy.conf"
    conf.write_text(
        f"""Port {port}
Listen {HOST}
Timeout 600
MaxClients {max_clients}
LogLevel Critical
LogFile "{work}/tinyproxy.log"
PidFile "{work}/tinyproxy.pid"
Allow 127.0.0.1
ConnectPort {origin_port}
"""
    )
    proc = Proc("tinyproxy", ["tinyproxy", "-d", "-c", str(conf)], tmp / "tinyproxy.out")
    proc.start()
    proc.wait_listening(HOST, port)
    return Peer("tinyproxy", port, proc)


def start_proxy_py(tmp: Path, port: int, idle_timeout_s: int) -> Peer:
    """proxy.py with one worker and one acceptor (its default is one of each per core)."""
    work = tmp / "proxypy"
    work.mkdir()
    argv = [
        str(PEERS_VENV / "bin" / "proxy"),
        "--hostname",
        HOST,
        "--port",
        str(port),
        "--num-workers",
        "1",
        "--num-acceptors",
        "1",
        "--log-level",
        "ERROR",
        "--open-file-limit",
        str(nofile_limit()),
        "--backlog",
        "1024",
        # its default drops a connection idle for 10 s, which would end held tunnels
        "--timeout",
        str(idle_timeout_s),
        "--data-dir",
        str(work),
    ]
    proc = Proc("proxy.py", argv, tmp / "proxypy.out")
    proc.start(env=dict(os.environ, HOME=str(work)))
    proc.wait_listening(HOST, port)
    return Peer("proxy.py", port, proc)


def fixedip_config(
    tmp: Path,
    name: str,
    port: int,
    origin_port: int,
    token_hash: str,
    tunnels: int,
    workers: tuple[str, int] | None = None,
) -> Path:
    """A fixedip config with auth, policy, guard and the flow log all on."""
    top = ""
    sections: dict[str, str] = {}
    if workers is not None:
        key, n = workers
        if "." in key:
            section, leaf = key.split(".", 1)
            sections[section] = f"{leaf} = {n}\n"
        else:
            top = f"{key} = {n}\n"
    conf = tmp / f"{name}.toml"
    conf.write_text(
        f"""{top}
[listen]
http = "{HOST}:{port}"
socks = ""
admin = ""
{sections.get("listen", "")}
[egress]
ips = ["{EGRESS_IP}"]

[guard]
allow_cidrs = ["127.0.0.1/32"]

[log]
flow = "{tmp}/{name}-flow.jsonl"
level = "warning"

[timeouts]
shutdown_grace_s = 1

[limits]
max_connections = {max(10000, tunnels + 1000)}
# one client holds every idle tunnel here; the default cap (1000) would refuse the rest
max_connections_per_client = {max(1000, tunnels + 1000)}

[[clients]]
name = "{CLIENT_NAME}"
token_hash = "{token_hash}"
source_cidrs = ["127.0.0.1/32"]
allow = ["127.0.0.1:*"]
connect_ports = [{origin_port}]
"""
        + "".join(f"\n[{s}]\n{body}" for s, body in sections.items() if s != "listen")
    )
    return conf


def new_token() -> tuple[str, str]:
    """A fresh token and its hash (from `fixedip token hash`, run once per benchmark)."""
    token = secrets.token_urlsafe(24)
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fixedip"), "token", "hash"],
        input=token,
        capture_output=True,
        text=True,
        check=True,
    )
    return token, out.stdout.strip()


def config_accepted(conf: Path) -> tuple[bool, str]:
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "fixedip"), "config", "check", str(conf)],
        capture_output=True,
        text=True,
    )
    return out.returncode == 0, (out.stderr or out.stdout).strip()


def start_fixedip(tmp: Path, name: str, port: int, conf: Path, token: str) -> Peer:
    fixedip = REPO / ".venv" / "bin" / "fixedip"
    proc = Proc(name, [str(fixedip), "serve", "--config", str(conf)], tmp / f"{name}.out")
    proc.start(cwd=tmp)
    proc.wait_listening(HOST, port)
    return Peer(name, port, proc, user=CLIENT_NAME, password=token)


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None
