"""`fixedip serve` as operators run it, in a subprocess: start, read the announcement,
signal, wait for log lines, always stop. Shared by the e2e and security suites.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.helpers import ALLOWED_EGRESS, TOKENS, token_hash

FIXEDIP = Path(sys.executable).parent / "fixedip"
STARTUP_TIMEOUT_S = 30.0  # importing the CLI takes seconds on a loaded 2-core machine
LOG_TIMEOUT_S = 5.0

_LISTENER_LINE = re.compile(
    r"^  (?P<what>HTTP proxy \+ CONNECT|HTTPS proxy \(TLS\)|SOCKS5|admin API|demo echo vendor)\s+"
    r"(?P<host>[0-9.]+):(?P<port>\d+)$"
)
_LISTENER_NAMES = {
    "HTTP proxy + CONNECT": "http",
    "HTTPS proxy (TLS)": "https",
    "SOCKS5": "socks",
    "admin API": "admin",
    "demo echo vendor": "echo",
}


class ServeProcess:
    """`fixedip serve ARGS` in a subprocess; stderr and stdout are read by threads.

    Reading both pipes for the whole life of the process means neither ever fills, and
    every line stays available to `wait_for_line` and the assertions after the run.
    """

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(FIXEDIP), "serve", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.addresses: dict[str, tuple[str, int]] = {}

    def _read(self, pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, text: str, after: int = 0, timeout: float = LOG_TIMEOUT_S) -> str:
        """The first stderr line from index `after` on that contains `text`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.stderr[after:]:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reading()):
                    raise AssertionError(
                        f"no stderr line with {text!r} within {timeout} s "
                        f"(exit status {self.proc.poll()}); stderr was:\n" + "\n".join(self.stderr)
                    )
                self._changed.wait(min(left, 0.1))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait_announced(self) -> ServeProcess:
        """Wait for the announcement and note where each listener is bound."""
        self.wait_for_line("egress IPs", timeout=STARTUP_TIMEOUT_S)
        for line in list(self.stderr):
            m = _LISTENER_LINE.match(line)
            if m:
                self.addresses[_LISTENER_NAMES[m["what"]]] = (m["host"], int(m["port"]))
        return self

    @property
    def mark(self) -> int:
        """Pass to `wait_for_line(after=...)` to look only at lines logged from now on."""
        with self._changed:
            return len(self.stderr)

    @property
    def http(self) -> tuple[str, int]:
        return self.addresses["http"]

    def proxy_url(self, user: str) -> str:
        host, port = self.http
        return f"http://{user}:{TOKENS[user]}@{host}:{port}"

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(2)
        return status

    def stop(self) -> None:
        """Teardown: make sure the process is gone, whatever the test did."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(2)


def client(name: str, allow: list[str], connect_ports: list[int]) -> dict[str, Any]:
    return {
        "name": name,
        "token_hash": token_hash(name),
        "allow": allow,
        "connect_ports": connect_ports,
    }


def serve_config(
    tmp_path: Path, clients: list[dict[str, Any]], **timeouts: float
) -> dict[str, Any]:
    return {
        "listen": {"http": "127.0.0.1:0", "socks": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "egress": {"ips": [ALLOWED_EGRESS]},
        "guard": {"allow_cidrs": ["127.0.0.1/32"]},
        "log": {"flow": str(tmp_path / "flow.jsonl")},
        "timeouts": {"connect_s": 2, **timeouts},
        "clients": clients,
    }


def write_config(path: Path, data: dict[str, Any]) -> None:
    path.write_text(tomli_w.dumps(data))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], ServeProcess]]:
    """Start `fixedip serve --config tmp_path/fixedip.toml`; always stopped at the end."""
    started: list[ServeProcess] = []

    def start(data: dict[str, Any]) -> ServeProcess:
        path = tmp_path / "fixedip.toml"
        write_config(path, data)
        process = ServeProcess(["--config", str(path)], tmp_path)
        started.append(process)
        return process.wait_announced()

    yield start
    for process in started:
        process.stop()
