"""Processes the benchmark starts: start, wait until they listen, measure, stop by PID.

Every process is started here and remembered with its start time, so stopping it (and
the children it forked, such as nginx's worker) never signals a PID the kernel has since
given to somebody else. Nothing is ever stopped by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def children(pid: int) -> list[int]:
    """Direct children of PID, from /proc/PID/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def tree(pid: int) -> list[int]:
    """PID and all its descendants that are alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if start_time(p) is None:
            continue
        out.append(p)
        todo.extend(children(p))
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of PID so far (its own threads, not waited-for children)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the benchmark itself dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Proc:
    """One process the benchmark started (plus whatever it forks)."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops these
                preexec_fn=_die_with_parent,
            )
        self.remember()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def remember(self) -> list[int]:
        """Record the current process tree (so forked workers are stopped too)."""
        if self.popen is None:
            return []
        pids = tree(self.pid)
        for p in pids:
            st = start_time(p)
            if st is not None:
                self.known.setdefault(p, st)
        return pids

    def rss(self) -> int:
        """Resident memory of the whole tree (master + workers), in bytes."""
        return sum(rss_bytes(p) for p in self.remember()) if self.alive() else 0

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.remember()) if self.alive() else 0.0

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def wait_listening(self, host: str, port: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                self.remember()
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {host}:{port} in {timeout_s:.0f} s")

    def _signal_known(self, sig: int) -> None:
        for pid, st in list(self.known.items()):
            if start_time(pid) == st:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            else:
                self.known.pop(pid)

    def stop(self) -> None:
        """SIGTERM the process we started, then its remembered children; SIGKILL late ones."""
        if self.popen is None:
            return
        self.remember()
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        self._signal_known(signal.SIGTERM)
        while time.monotonic() < deadline and any(
            start_time(p) == st for p, st in self.known.items()
        ):
            time.sleep(0.1)
        self._signal_known(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_GRACE_S)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports that are free on HOST right now (held open until all are chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _all_cpu() -> dict[tuple[int, int], float]:
    """CPU seconds so far of every process, keyed by (pid, start time)."""
    out: dict[tuple[int, int], float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S
            out[(int(entry.name), int(fields[19]))] = cpu
    return out


class ForeignCpu:
    """CPU used by processes that are not ours while a measurement runs.

    The benchmark may share the machine with other work (a test suite, a fuzzer); this
    says how much, so a depressed number can be recognised as such. Processes that start
    and end inside the window are missed, so it is a lower bound.
    """

    def __init__(self, ours: list[Proc]) -> None:
        self.ours = ours
        self.t0 = time.monotonic()
        self.before = _all_cpu()

    def share(self) -> float:
        """Foreign CPU-seconds per second of wall time per core, 0..1."""
        after = _all_cpu()
        mine = {os.getpid()}
        for proc in self.ours:
            mine.update(proc.remember())
            mine.update(proc.known)
        used = 0.0
        for key, cpu in after.items():
            if key[0] in mine:
                continue
            used += cpu - self.before.get(key, 0.0) if key in self.before else cpu
        wall = max(1e-3, time.monotonic() - self.t0)
        return max(0.0, used / (wall * len(os.sched_getaffinity(0))))
