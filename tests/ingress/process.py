"""`fixedip ingress serve` in a subprocess, as operators run it; stderr goes to a file."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FIXEDIP = Path(sys.executable).parent / "fixedip"
STARTUP_TIMEOUT_S = 15.0
_RELAY_LINE = re.compile(r"webhook relay\s+(?P<scheme>https?)://(?P<host>[0-9.]+):(?P<port>\d+)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RelayProcess:
    def __init__(
        self, config: Path, log: Path, args: tuple[str, ...] = ("ingress", "serve")
    ) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self._start_offset = log.stat().st_size
        self.proc = subprocess.Popen(
            [str(FIXEDIP), *args, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
        )
        self.url = ""

    def output(self) -> str:
        return self.log.read_bytes()[self._start_offset :].decode(errors="replace")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> RelayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _RELAY_LINE.search(self.output())
            if m:
                self.url = f"{m['scheme']}://{m['host']}:{m['port']}"
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the relay did not start (exit {self.proc.poll()}):\n{self.output()}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()
        return self.proc.returncode
