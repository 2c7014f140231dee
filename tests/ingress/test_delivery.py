"""Delivery: retries, back-off, Retry-After, dead letter, replay, the delivery id, extra
headers and SigV4, and redelivery after a restart, against a real target stub."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from fixedip.ingress import spool as spool_mod
from fixedip.ingress import spoolfile
from fixedip.ingress.spool import Spool, SpoolRecord
from tests.ingress.stubs import RunningRelay, TargetStub, iter_flow, relay_config, wait_until

MakeRelay = Callable[..., RunningRelay]
FIXEDIP = Path(sys.executable).parent / "fixedip"
FAST = {"retry_base_s": 0.02, "retry_max_s": 0.1}


def post(relay: RunningRelay, path: str, body: bytes = b"{}", **kw: Any) -> str:
    answer = requests.post(relay.url + path, data=body, timeout=5, **kw)
    assert answer.status_code == 200, answer.text
    delivery_id: str = answer.json()["id"]
    return delivery_id


def spool_record(tmp_path: Path, delivery_id: str) -> SpoolRecord:
    conn = spool_mod.connect(tmp_path / "spool.db")
    try:
        record = spoolfile.get_record(conn, delivery_id)
    finally:
        conn.close()
    assert record is not None
    return record


def state_of(tmp_path: Path, delivery_id: str) -> str:
    return spool_record(tmp_path, delivery_id).state


def test_target_failing_n_times_gets_it_on_attempt_n_plus_1_with_the_same_id(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/flaky/3/503"), **FAST}])
    delivery_id = post(relay, "/h", b'{"n":1}')
    got = target.wait_for(4, "/flaky/3/503")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "delivered", what="delivered")
    assert [d.delivery_id for d in got] == [delivery_id] * 4
    assert [d.header("Fixedip-Attempt") for d in got] == ["1", "2", "3", "4"]
    assert {d.body for d in got} == {b'{"n":1}'}
    assert spool_record(tmp_path, delivery_id).attempts == 4
    assert 'fixedip_ingress_retries_total{route="/h"} 3.0' in relay.metrics()


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_retryable_statuses_are_retried(
    make_relay: MakeRelay, target: TargetStub, status: int
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url(f"/flaky/1/{status}"), **FAST}])
    post(relay, "/h")
    got = target.wait_for(2, f"/flaky/1/{status}")
    assert got[0].delivery_id == got[1].delivery_id


def test_network_errors_are_retried(make_relay: MakeRelay, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = make_relay(
        [{"path": "/h", "target": f"http://127.0.0.1:{port}/", "max_attempts": 3, **FAST}]
    )
    delivery_id = post(relay, "/h")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "dead", what="dead")
    record = spool_record(tmp_path, delivery_id)
    assert record.attempts == 3
    assert "gave up after 3 attempts" in record.last_error


def test_a_target_that_hangs_times_out_and_is_retried(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay(
        [{"path": "/h", "target": target.url("/hang"), "timeout_s": 0.3, "max_attempts": 2, **FAST}]
    )
    delivery_id = post(relay, "/h")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "dead", what="dead")
    assert len(target.received("/hang")) == 2


def test_retry_after_from_the_target_is_honoured(make_relay: MakeRelay, target: TargetStub) -> None:
    relay = make_relay(
        [
            {
                "path": "/h",
                "target": target.url("/status/429?retry_after=1"),
                "max_attempts": 2,
                **FAST,
            }
        ]
    )
    post(relay, "/h")
    first, second = target.wait_for(2, "/status/429")
    assert second.at - first.at >= 0.9  # a lower bound the relay must respect


def test_other_4xx_is_dead_at_once(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/status/400"), **FAST}])
    delivery_id = post(relay, "/h")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "dead", what="dead")
    time.sleep(0.3)
    assert len(target.received("/status/400")) == 1
    record = spool_record(tmp_path, delivery_id)
    assert (record.attempts, record.last_status) == (1, 400)
    assert 'fixedip_ingress_dead_total{route="/h"} 1.0' in relay.metrics()


def test_dead_webhook_is_replayed_by_the_cli_with_the_same_id(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    target.switch_status = 410
    relay = make_relay([{"path": "/h", "target": target.url("/switch"), **FAST}])
    delivery_id = post(relay, "/h", b"replay me")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "dead", what="dead")
    target.switch_status = 200
    config = tmp_path / "fixedip.toml"
    listed = subprocess.run(
        [
            str(FIXEDIP),
            "ingress",
            "ls",
            "--config",
            str(config),
            "--state",
            "dead",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert delivery_id in listed.stdout
    replayed = subprocess.run(
        [str(FIXEDIP), "ingress", "replay", delivery_id[:28], "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "1 webhook queued for delivery again" in replayed.stdout
    got = target.wait_for(2, "/switch")
    wait_until(lambda: state_of(tmp_path, delivery_id) == "delivered", what="delivered")
    assert [d.delivery_id for d in got] == [delivery_id, delivery_id]
    assert got[1].body == b"replay me"
    assert got[1].header("Fixedip-Attempt") == "1"  # attempts start over


def test_concurrency_cap_per_route_is_respected(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay(
        [{"path": "/h", "target": target.url("/hang"), "concurrency": 2, "timeout_s": 20}]
    )
    ids = [post(relay, "/h", f"{i}".encode()) for i in range(5)]
    target.wait_for(2, "/hang")
    time.sleep(0.5)
    assert len(target.received("/hang")) == 2
    states = sorted(state_of(tmp_path, i) for i in ids)
    assert states == ["delivering", "delivering", "pending", "pending", "pending"]


def test_extra_headers_are_added_with_secrets_read_from_env_and_file(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNC_SHARED", "s3cret-from-env")
    secret_file = tmp_path / "token"
    secret_file.write_text("s3cret-from-file\n")
    relay = make_relay(
        [
            {
                "path": "/h",
                "target": target.url("/ok"),
                "headers": {
                    "X-Relay-Secret": "env:FUNC_SHARED",
                    "X-Other": f"file:{secret_file}",
                    "X-Plain": "literal",
                },
            }
        ]
    )
    post(relay, "/h")
    [got] = target.wait_for(1, "/ok")
    assert got.header("X-Relay-Secret") == "s3cret-from-env"
    assert got.header("X-Other") == "s3cret-from-file"
    assert got.header("X-Plain") == "literal"
    flow = tmp_path / "flow.jsonl"
    wait_until(lambda: any(r["kind"] == "delivery" for r in iter_flow(flow)), what="flow")
    assert "s3cret" not in flow.read_text()


def test_sigv4_signs_deliveries_for_iam_function_urls(
    make_relay: MakeRelay, target: TargetStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    relay = make_relay(
        [{"path": "/h", "target": target.url("/ok"), "sigv4": {"region": "eu-west-1"}}]
    )
    post(relay, "/h", b'{"signed":true}', headers={"X-Vendor": "v"})
    [got] = target.wait_for(1, "/ok")
    auth = got.header("Authorization") or ""
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in auth
    # Recompute the signature over what the target received: it must match.
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    request = AWSRequest(method="POST", url=target.url("/ok"), data=got.body)
    for name, value in got.headers:
        if name.lower() in signed and name.lower() not in ("authorization",):
            request.headers.add_header(name, value)
    request.context["timestamp"] = got.header("X-Amz-Date")
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    expected = SigV4Auth(creds, "lambda", "eu-west-1").signature(
        SigV4Auth(creds, "lambda", "eu-west-1").string_to_sign(
            request, SigV4Auth(creds, "lambda", "eu-west-1").canonical_request(request)
        ),
        request,
    )
    assert auth.endswith("Signature=" + expected)


def test_records_claimed_when_the_relay_stopped_are_delivered_after_a_restart(
    target: TargetStub, tmp_path: Path
) -> None:
    """A crash leaves records 'delivering'; the next start sends them again."""
    config = relay_config(tmp_path, [{"path": "/h", "target": target.url("/ok")}])
    assert config.ingress is not None
    path = tmp_path / "spool.db"

    async def crash_mid_delivery() -> str:
        spool = Spool(path, 10, 1 << 20)
        spool.open()
        record = SpoolRecord(
            "/h", "POST", "/h", "", [("X-A", "1")], b"left behind", "127.0.0.1", time.time()
        )
        await spool.append(record)
        [claimed] = await spool.claim("/h", time.time(), 10)
        assert claimed.state == "delivering"
        await spool.close()  # no outcome recorded: as if the process died here
        return record.id

    delivery_id = asyncio.run(crash_mid_delivery())
    assert state_of(tmp_path, delivery_id) == "delivering"
    relay = RunningRelay(config).start()
    try:
        [got] = target.wait_for(1, "/ok")
        assert got.delivery_id == delivery_id
        assert got.body == b"left behind"
        wait_until(lambda: state_of(tmp_path, delivery_id) == "delivered", what="delivered")
    finally:
        relay.stop()


def test_delivered_records_are_dropped_after_keep_delivered_s(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}], keep_delivered_s=0.2)
    delivery_id = post(relay, "/h")
    target.wait_for(1, "/ok")

    def gone() -> bool:
        conn = spool_mod.connect(tmp_path / "spool.db")
        try:
            return spoolfile.get_record(conn, delivery_id) is None
        finally:
            conn.close()

    wait_until(gone, what="delivered record pruned")


def test_a_reload_during_a_delivery_keeps_the_route_delivering(
    make_relay: MakeRelay, target: TargetStub, tmp_path: Path
) -> None:
    route = {"path": "/h", "target": target.url("/hang"), "concurrency": 1, "timeout_s": 0.5}
    relay = make_relay([{**route, "max_attempts": 1}])
    post(relay, "/h", b"in flight during the reload")
    target.wait_for(1, "/hang")
    new = relay_config(tmp_path, [{**route, "target": target.url("/ok")}])
    assert new.ingress is not None

    async def reload() -> bool:
        assert relay.relay is not None
        return relay.relay.reload(new.ingress)  # type: ignore[arg-type]

    assert relay.run(reload())
    delivery_id = post(relay, "/h", b"after the reload")
    [got] = target.wait_for(1, "/ok")
    assert got.delivery_id == delivery_id
