"""Real stand-ins for the fleet's remote services: redis-server and a moto EC2 server,
each a subprocess on a loopback port with its files in a temp dir, stopped by PID."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = "/usr/bin/redis-server"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
START_TIMEOUT_S = 10.0
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


class RedisServer:
    """redis-server on 127.0.0.1:port, no persistence; `stop()` and `start()` again on
    the same port play an outage."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.dir = directory
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def cli(self, *args: str) -> str:
        """A command through a raw socket (no redis-cli dependency)."""
        from fixedip.fleet.resp import encode, parse

        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            if self.password:
                s.sendall(encode(("AUTH", self.password)))
                s.recv(100)
            s.sendall(encode(args))
            data = b""
            while True:
                data += s.recv(65536)
                try:
                    value, _ = parse(data, 0)
                    return repr(value)
                except Exception:
                    continue


class MotoServer:
    """moto's EC2 (and the rest) on 127.0.0.1:port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="moto-"))
        self.recording = self.directory / "requests.jsonl"  # moto's own request recorder
        self.proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **AWS_ENV, "MOTO_RECORDER_FILEPATH": str(self.recording)},
        )
        _wait_port(self.port, self.proc, "moto_server")

    def _moto_api(self, path: str) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/{path}", method="POST"), timeout=5
        ).close()

    def record(self) -> None:
        """Record the requests moto receives from now on (`requests(action)` reads them)."""
        self._moto_api("recorder/reset-recording")
        self._moto_api("recorder/start-recording")

    def requests(self, action: str) -> list[dict[str, str]]:
        """The parameters of every recorded EC2 request for `action`, in order."""
        found = []
        if not self.recording.exists():
            return found
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode()
            params = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
            if params.get("Action") == action:
                found.append(params)
        return found

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ec2(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "ec2",
            region_name="eu-west-1",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=5
        ).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()
