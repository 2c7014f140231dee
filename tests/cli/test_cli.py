"""The real `fixedip` executable: help, version, config check/example, tokens, serve's
start-up refusals. Every failure is exit 2 with one `error:` message and no traceback."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixedip import __version__
from fixedip.config import parse
from fixedip.policy.tokens import verify_token
from tests.helpers import token_hash

FIXEDIP = Path(sys.executable).parent / "fixedip"
RUN_TIMEOUT_S = 30


def fixedip(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FIXEDIP), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL if stdin is None else None,
        check=False,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], prefix: str) -> None:
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {prefix}")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def serve_config(
    tmp_path: Path, listen_http: str = "127.0.0.1:0", ips: str = '"127.0.0.10"'
) -> str:
    return (
        f'[listen]\nhttp = "{listen_http}"\nsocks = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
        f"[egress]\nips = [{ips}]\n"
        f'[log]\nflow = "{tmp_path / "flow.jsonl"}"\n'
    )


VALID = f"""\
[listen]
http = "127.0.0.1:3128"
admin = ""

[egress]
ips = ["127.0.0.10", {{ bind = "127.0.0.11", public = "203.0.113.7" }}]
strategy = "failover"

[[clients]]
name = "billing"
token_hash = "{token_hash("billing")}"
allow = ["api.vendor.example:443"]
"""


# --- help, version ---------------------------------------------------------------------


def test_help_lists_every_command_group() -> None:
    result = fixedip("--help")
    assert result.returncode == 0
    for command in ("serve", "config", "token", "version"):
        assert re.search(rf"\b{command}\b", result.stdout)


def test_version_prints_the_package_version() -> None:
    result = fixedip("version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_unknown_command_is_a_usage_error() -> None:
    result = fixedip("frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# --- config ----------------------------------------------------------------------------


def test_config_example_passes_config_check(tmp_path: Path) -> None:
    example = fixedip("config", "example")
    assert example.returncode == 0
    path = write(tmp_path / "fixedip.toml", example.stdout)
    result = fixedip("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# {path}: valid.")


def test_config_check_prints_the_effective_config_with_redacted_hashes(tmp_path: Path) -> None:
    path = write(tmp_path / "fixedip.toml", VALID)
    result = fixedip("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    stored = token_hash("billing")
    assert stored not in result.stdout
    assert stored.split("$")[-1] not in result.stdout
    effective = tomllib.loads(result.stdout)
    assert effective["clients"][0]["token_hash"] == [f"scrypt$14$8$1$…{stored[-6:]}"]
    assert effective["egress"]["ips"] == [
        {"bind": "127.0.0.10"},
        {"bind": "127.0.0.11", "public": "203.0.113.7"},
    ]
    assert effective["egress"]["strategy"] == "failover"
    assert effective["listen"] == {
        "http": "127.0.0.1:3128",
        "socks": "127.0.0.1:1080",
        "admin": "",
        "https": "",
    }
    assert effective["timeouts"]["connect_s"] == 10


def test_config_check_warns_when_no_client_can_authenticate(tmp_path: Path) -> None:
    path = write(tmp_path / "fixedip.toml", '[egress]\nips = ["127.0.0.10"]\n')
    result = fixedip("config", "check", str(path))
    assert result.returncode == 0
    assert "no [[clients]]" in result.stderr


BAD_CONFIGS = [
    ("typo", '[egress]\nips = ["127.0.0.10"]\n[listen]\nhtp = "127.0.0.1:3128"\n', "listen.htp: "),
    (
        "raw-token",
        '[egress]\nips = ["127.0.0.10"]\n[[clients]]\nname = "billing"\ntoken_hash = "s3cret"\n',
        "clients[0].token_hash: expected the output of `fixedip token hash`",
    ),
    (
        "tls",
        '[egress]\nips = ["127.0.0.10"]\n[tls]\ncert = "c.pem"\n',
        "tls.key: required key is missing",
    ),
]


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_config_check_on_a_bad_file_exits_2_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "bad.toml", text)
    result = fixedip("config", "check", str(path))
    assert_config_error(result, f"{path}: {message}")


def test_config_check_on_a_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert_config_error(fixedip("config", "check", str(path)), f"{path}: no such file")


# --- token -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_new() -> subprocess.CompletedProcess[str]:
    return fixedip("token", "new", "billing")


def test_token_new_prints_a_token_and_a_hash_that_verifies_it(
    token_new: subprocess.CompletedProcess[str],
) -> None:
    result = token_new
    assert result.returncode == 0
    token = re.search(r"^  (fxp_\S+)$", result.stdout, re.MULTILINE)
    stored = re.search(r'^token_hash = "(\S+)"$', result.stdout, re.MULTILINE)
    assert token and stored
    assert verify_token(token[1], stored[1])
    assert f"http://billing:{token[1]}@GATEWAY:3128" in result.stdout


def test_token_new_prints_config_lines_that_load(
    token_new: subprocess.CompletedProcess[str],
) -> None:
    snippet = token_new.stdout.split("add to the gateway's configuration:")[1]
    snippet = snippet.split("the function uses it as:")[0]
    config = parse('[egress]\nips = ["127.0.0.10"]\n' + snippet, "pasted.toml")
    assert [c.name for c in config.clients] == ["billing"]


def test_token_new_refuses_a_name_the_config_would_refuse() -> None:
    result = fixedip("token", "new", "bill:ing")
    assert result.returncode == 2
    assert result.stderr.startswith("error: client name 'bill:ing': ")
    assert "no ':'" in result.stderr
    assert result.stdout == ""


def test_token_hash_prints_exactly_one_line_that_verifies() -> None:
    result = fixedip("token", "hash", "tok-argument")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert verify_token("tok-argument", lines[0])


def test_token_hash_reads_the_token_from_stdin() -> None:
    result = fixedip("token", "hash", stdin="tok-from-stdin\n")
    assert result.returncode == 0
    (line,) = result.stdout.splitlines()
    assert verify_token("tok-from-stdin", line)


def test_token_hash_with_empty_stdin_exits_2() -> None:
    result = fixedip("token", "hash", stdin="")
    assert result.returncode == 2
    assert result.stderr.startswith("error: empty token")
    assert result.stdout == ""


# --- serve's start-up refusals ----------------------------------------------------------


def test_serve_refuses_an_egress_ip_not_assigned_to_the_host(tmp_path: Path) -> None:
    path = write(tmp_path / "gw.toml", serve_config(tmp_path, ips='"198.18.0.99"'))
    result = fixedip("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: egress IP 198.18.0.99 cannot be used: ")
    assert "not assigned" in result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_serve_refuses_a_listen_port_already_taken(tmp_path: Path, taken_port: int) -> None:
    path = write(tmp_path / "gw.toml", serve_config(tmp_path, f"127.0.0.1:{taken_port}"))
    result = fixedip("serve", "--config", str(path))
    assert result.returncode == 2
    where = f"127.0.0.1:{taken_port}"
    assert (
        result.stderr
        == f"error: cannot listen for the HTTP proxy on {where}: address already in use\n"
    )
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert_config_error(fixedip("serve", "--config", str(path)), f"{path}: no such file")


def test_serve_with_a_bad_config_file_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path / "gw.toml", '[egress]\nips = ["127.0.0.10"]\nstrategy = "random"\n')
    assert_config_error(fixedip("serve", "--config", str(path)), f"{path}: egress.strategy: ")
