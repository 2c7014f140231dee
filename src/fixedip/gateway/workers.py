"""`server.workers = N`: N gateway processes sharing the proxy ports via SO_REUSEPORT.

The parent is a small supervisor with no event loop: it forks the workers, waits until
each reports ready (one byte on a pipe), forwards SIGHUP / SIGTERM / SIGINT to them, and
restarts a worker that dies unexpectedly. It exits 0 once every worker has drained.
Worker 0 also serves the admin API (its metrics are its own) and the demo echo.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from fixedip.config import Config

log = logging.getLogger("fixedip.workers")

READY_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1
RESPAWN_PAUSE_S = 1.0


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies, so no worker is ever orphaned."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's own SIGTERM forwarding still applies
    if os.getppid() != supervisor:  # it died before prctl took effect
        os._exit(0)


def _worker_main(
    config: Config,
    config_path: str | None,
    index: int,
    count: int,
    ready_fd: int,
    supervisor: int,
) -> int:
    """Runs in the forked child; returns its exit status."""
    from fixedip.gateway.server import StartupError, run

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the gateway installs its own on its loop
    _die_with_parent(supervisor)

    def ready(_gateway: Any) -> None:
        if ready_fd >= 0:  # a restarted worker has no one waiting for it
            os.write(ready_fd, bytes([index]))
            os.close(ready_fd)

    try:
        import uvloop

        runner: Callable[[Any], int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(run(config, config_path, ready, worker=index, workers=count))
    except StartupError as exc:
        sys.stderr.write(f"error: worker {index}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 0


class Supervisor:
    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self.config_path = config_path
        self.count = config.server.workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.pid = os.getpid()
        self.stopping = False

    def spawn(self, index: int, ready_w: int = -1, ready_r: int = -1) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            if ready_r >= 0:
                os.close(ready_r)
            status = 1
            try:
                status = _worker_main(
                    self.config, self.config_path, index, self.count, ready_w, self.pid
                )
            finally:
                os._exit(status)
        self.children[pid] = index
        return pid

    def signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                self.children.pop(pid, None)

    def start(self) -> bool:
        """Fork every worker and wait until all are serving; False if one failed."""
        # Handlers first, so a signal arriving right after the announcement is forwarded
        # (workers reset them to the defaults as soon as they are forked).
        signal.signal(signal.SIGHUP, lambda *_: self.signal_all(signal.SIGHUP))
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if self.config.tls is not None and self.config.listen.https is not None:
            from fixedip.gateway.tls import share_before_fork

            share_before_fork(self.config.tls)  # one set of session-ticket keys for all
        ready_r, ready_w = os.pipe()
        for index in range(self.count):
            self.spawn(index, ready_w, ready_r)
        os.close(ready_w)
        waiting = set(range(self.count))
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while waiting and time.monotonic() < deadline:
                readable, _, _ = select.select([ready_r], [], [], 0.2)
                if readable:
                    data = os.read(ready_r, 64)
                    waiting -= set(data)
                    if not data and waiting:
                        break  # every worker closed its end: the missing ones failed
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid:
                    self.children.pop(pid, None)
                    self.stop()
                    return False
        finally:
            os.close(ready_r)
        if waiting:
            self.stop()
            return False
        return True

    def stop(self) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.children.pop(pid, None)

    def _on_stop(self, *_: Any) -> None:
        self.stopping = True
        self.signal_all(signal.SIGTERM)

    def run(self) -> int:
        """Keep workers alive until told to stop; signals are forwarded meanwhile."""
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            log.error(
                "worker %d (pid %d) exited with status %d; restarting it",
                index,
                pid,
                os.waitstatus_to_exitcode(status),
            )
            time.sleep(RESPAWN_PAUSE_S)
            if not self.stopping:
                self.spawn(index)
        return 0
