"""`fixedip ingress ls|show|replay|purge|serve` and the relay's configuration errors."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from fixedip.cli.app import app
from fixedip.cli.ingress import parse_time
from fixedip.config import ConfigError, parse
from tests.ingress.process import FIXEDIP, RelayProcess
from tests.ingress.stubs import RunningRelay, TargetStub, relay_config, wait_until

MakeRelay = Callable[..., RunningRelay]
FAST = {"retry_base_s": 0.02, "retry_max_s": 0.1}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def spooled(make_relay: MakeRelay, target: TargetStub, tmp_path: Path) -> dict[str, str]:
    """One delivered and one dead webhook in tmp_path/spool.db."""
    target.switch_status = 404
    relay = make_relay(
        [
            {"path": "/ok", "target": target.url("/ok")},
            {"path": "/gone", "target": target.url("/switch"), **FAST},
        ]
    )
    ok = requests.post(relay.url + "/ok", data=b"delivered body", timeout=5).json()["id"]
    dead = requests.post(
        relay.url + "/gone", data=b"dead body", headers={"X-Vendor": "v1"}, timeout=5
    ).json()["id"]
    target.wait_for(1, "/switch")
    target.wait_for(1, "/ok")
    config = str(tmp_path / "fixedip.toml")

    def states() -> str:
        return cli("ingress", "ls", "--config", config, "--format", "json").output

    wait_until(lambda: '"dead"' in states() and '"delivered"' in states(), what="states")
    return {"ok": ok, "dead": dead, "config": config}


def test_ls_lists_newest_first_and_filters_by_state(spooled: dict[str, str]) -> None:
    result = cli("ingress", "ls", "--config", spooled["config"], "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["id"] for r in rows] == [spooled["dead"], spooled["ok"]]
    dead = cli("ingress", "ls", "-c", spooled["config"], "--state", "dead", "--format", "json")
    [row] = json.loads(dead.output)
    assert (row["id"], row["state"], row["last_status"], row["attempts"]) == (
        spooled["dead"],
        "dead",
        404,
        1,
    )
    table = cli("ingress", "ls", "-c", spooled["config"])
    assert table.exit_code == 0
    assert spooled["dead"] in table.output and "delivered" in table.output


def test_show_prints_headers_and_body(spooled: dict[str, str]) -> None:
    result = cli(
        "ingress", "show", spooled["dead"][:28], "-c", spooled["config"], "--format", "json"
    )
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["id"] == spooled["dead"]
    assert data["body"] == "dead body"
    assert ["X-Vendor", "v1"] in data["headers"]
    text = cli("ingress", "show", spooled["dead"], "-c", spooled["config"])
    assert "X-Vendor: v1" in text.output and "dead body" in text.output


def test_show_unknown_id_exits_2(spooled: dict[str, str]) -> None:
    result = cli("ingress", "show", "no-such-id", "-c", spooled["config"])
    assert result.exit_code == 2
    assert "no webhook with id 'no-such-id'" in result.output


def test_replay_all_dead_and_since(
    spooled: dict[str, str], target: TargetStub, tmp_path: Path
) -> None:
    target.switch_status = 200
    result = cli("ingress", "replay", "--all-dead", "-c", spooled["config"])
    assert result.exit_code == 0 and "1 webhook queued" in result.output
    got = target.wait_for(2, "/switch")
    assert got[-1].delivery_id == spooled["dead"]
    wait_until(
        lambda: (
            '"dead"' not in cli("ingress", "ls", "-c", spooled["config"], "--format", "json").output
        ),
        what="replayed",
    )
    since = cli("ingress", "replay", "--since", "1h", "-c", spooled["config"])
    assert since.exit_code == 0 and "2 webhooks queued" in since.output
    target.wait_for(2, "/ok")


def test_purge_deletes_only_delivered(spooled: dict[str, str]) -> None:
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    result = cli("ingress", "purge", "--delivered-before", future, "-c", spooled["config"])
    assert result.exit_code == 0 and "1 delivered webhook deleted" in result.output
    rows = json.loads(cli("ingress", "ls", "-c", spooled["config"], "--format", "json").output)
    assert [r["id"] for r in rows] == [spooled["dead"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ls"], "give --config FILE (with [ingress]) or --spool PATH"),
        (["ls", "--spool", "/nonexistent/spool.db"], "no spool at /nonexistent/spool.db"),
        (["ls", "--spool", "x.db", "--state", "lost"], "--state: expected one of pending"),
        (["ls", "--spool", "x.db", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
        (["replay", "--spool", "x.db"], "name IDs, or give --all-dead or --since TIME"),
        (["purge", "--spool", "x.db", "--delivered-before", "soon"], "is not a time"),
        (["serve"], "give --config FILE with an [ingress] section"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = cli("ingress", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_parse_time_accepts_iso_dates_and_ages() -> None:
    now = 1_800_000_000.0
    assert parse_time("2h", now) == now - 7200
    assert parse_time("30m", now) == now - 1800
    expected = dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()
    assert parse_time("2027-01-15T08:00:00Z") == expected
    assert parse_time("2027-01-15") == parse_time("2027-01-15T00:00:00Z")


# --- configuration ---------------------------------------------------------------------

ROUTE = '[[ingress.routes]]\npath = "/h"\ntarget = "https://fn.example/"\n'


def ingress_file(tmp_path: Path, extra: str = "", route: str = ROUTE) -> str:
    return f'[ingress]\nlisten = "127.0.0.1:0"\nspool = "{tmp_path}/s.db"\n{extra}{route}'


HEAD = '[ingress]\nlisten = "127.0.0.1:0"\nspool = "{spool}"\n'


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[ingress]\nlisten = "127.0.0.1:0"\n' + ROUTE, "ingress.spool", "required key is missing"),
        (HEAD, "ingress.routes", "required key is missing"),
        (HEAD + "routes = []\n", "ingress.routes", "expected at least 1 entry"),
        (HEAD + "max_spool_records = 0\n" + ROUTE, "ingress.max_spool_records", "greater than"),
        ("", "egress", "a file without [egress] must have [ingress]"),
    ],
)
def test_ingress_config_errors_name_file_and_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text.replace("{spool}", f"{tmp_path}/s.db"), "gw.toml")
    assert str(info.value).startswith(f"gw.toml: {key}: ")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ('path = "hooks"\ntarget = "https://fn.example/"', "path: expected an absolute path"),
        ('path = "/h"\ntarget = "fn.example"', 'target: expected "https://host[:port][/path]"'),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nverify = "paypal"',
            "verify: expected 'none'",
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nverify = "github"',
            'verify = "github" needs a secret',
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nverify = "github"\nsecret = "hunter2"',
            'expected "env:NAME" or "file:PATH"',
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nverify = "github"\n'
            'secret = "env:FIXEDIP_NOPE"',
            "environment variable 'FIXEDIP_NOPE' is not set",
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nverify = "hmac-sha256"\n'
            'secret = "env:PATH"',
            "needs the header name",
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nsource_cidrs = ["10.0.0.1/8"]',
            "has host bits set",
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nheaders = { Host = "x" }',
            "set by the relay itself",
        ),
        (
            'path = "/h"\ntarget = "https://fn.example/"\nmax_body_bytes = 0',
            "greater than or equal to 1",
        ),
    ],
)
def test_ingress_route_errors(tmp_path: Path, route: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(ingress_file(tmp_path, route=f"[[ingress.routes]]\n{route}\n"), "gw.toml")
    assert str(info.value).startswith("gw.toml: ingress.routes[0]")
    assert expected in str(info.value)


def test_two_routes_with_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"routes\[1\].path: '/h' is already the path of routes\[0\]"
    ):
        parse(ingress_file(tmp_path, route=ROUTE + ROUTE), "gw.toml")


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    pem = tmp_path / "c.pem"
    pem.write_text("x")
    with pytest.raises(ConfigError, match=r"gw\.toml: ingress: cert: set both cert and key"):
        parse(ingress_file(tmp_path, extra=f'cert = "{pem}"\n'), "gw.toml")


def test_a_relay_only_file_has_no_egress_and_no_proxy(tmp_path: Path) -> None:
    config = parse(ingress_file(tmp_path), "gw.toml")
    assert not config.runs_proxy
    assert config.ingress is not None and config.ingress.routes[0].path == "/h"


def test_a_relay_only_file_cannot_name_a_proxy_listener(tmp_path: Path) -> None:
    text = '[listen]\nhttp = "127.0.0.1:3128"\n' + ingress_file(tmp_path)
    with pytest.raises(ConfigError, match=r"gw.toml: listen.http: the proxy needs \[egress\]"):
        parse(text, "gw.toml")


def test_proxy_listeners_may_all_be_off_when_the_relay_runs(tmp_path: Path) -> None:
    text = '[listen]\nhttp = ""\nsocks = ""\n[egress]\nips = ["127.0.0.10"]\n' + ingress_file(
        tmp_path
    )
    assert parse(text, "gw.toml").runs_proxy


# --- serve ------------------------------------------------------------------------------


def test_serve_refuses_a_file_without_ingress(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[egress]\nips = ["127.0.0.10"]\n')
    result = cli("ingress", "serve", "--config", str(path))
    assert result.exit_code == 2
    assert "has no [ingress] section" in result.output


def test_a_spool_in_a_missing_directory_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[listen]\nadmin = ""\n[ingress]\nlisten = "127.0.0.1:0"\n'
        f'spool = "{tmp_path}/missing/s.db"\n' + ROUTE
    )
    result = cli("ingress", "serve", "--config", str(path))
    assert result.exit_code == 2
    assert f"ingress.spool: directory {tmp_path}/missing does not exist" in result.output


def test_a_second_relay_on_the_same_spool_is_refused(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    make_relay([{"path": "/h", "target": target.url("/ok")}])
    result = subprocess.run(
        [str(FIXEDIP), "ingress", "serve", "--config", str(tmp_path / "fixedip.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "is in use by another relay" in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_process_drains_on_sigterm_and_exits_0(tmp_path: Path, target: TargetStub) -> None:
    relay_config(tmp_path, [{"path": "/h", "target": target.url("/ok")}])
    log = tmp_path / "relay.log"
    log.touch()
    relay = RelayProcess(tmp_path / "fixedip.toml", log).wait_ready()
    try:
        answer = requests.post(relay.url + "/h", data=b"before stop", timeout=5)
        assert answer.status_code == 200
        target.wait_for(1, "/ok")
    finally:
        status = relay.stop()
    assert status == 0, relay.output()


# --- the documentation's examples ---------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("doc", ["docs/ingress.md", "README.md"])
def test_ingress_examples_in_the_docs_load(doc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    blocks = [
        b
        for b in re.findall(r"^```toml\n(.*?)^```$", (REPO / doc).read_text(), re.M | re.S)
        if "[ingress]" in b
    ]
    assert blocks
    for block in blocks:
        for name in re.findall(r'"env:([A-Z_]+)"', block):
            monkeypatch.setenv(name, "example-secret")
        config = parse(block, doc)
        assert config.ingress is not None and not config.runs_proxy


def test_the_commented_example_in_config_example_is_a_valid_ingress_section(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fixedip.config import embedded_text

    text = embedded_text("example.toml")
    start = text.index("# [ingress]")
    end = text.index("\n\n", start)  # the block ends at the first blank line
    lines = [line[2:] if line.startswith("# ") else "" for line in text[start:end].splitlines()]
    section = "\n".join(
        line
        for line in lines
        if not line.startswith(("cert", "key", "ca_file", "signature_header", "sigv4"))
    )
    monkeypatch.setenv("PAYMENTS_WEBHOOK_SECRET", "whsec_test")
    monkeypatch.setenv("RELAY_SHARED_SECRET", "shared")
    config = parse(section, "example.toml")
    assert config.ingress is not None
    assert config.ingress.routes[0].verify == "stripe"
