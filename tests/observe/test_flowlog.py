from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedip.observe.flowlog import ENCODE_SLICE, FlowLog, FlowRecord
from fixedip.policy.decision import Reason

FLOW_KEYS = {
    "time",
    "client",
    "peer",
    "listener",
    "kind",
    "method",
    "host",
    "port",
    "resolved",
    "egress",
    "egress_public",
    "status",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "decision",
    "reason",
    "rule",
}


def make_record(**overrides: Any) -> FlowRecord:
    fields: dict[str, Any] = {
        "start": 1_714_564_800.123456,  # 2024-05-01T12:00:00.123Z
        "listener": "http",
        "kind": "http",
        "peer": "127.0.0.1:50000",
        "client": "billing",
        "method": "GET",
        "host": "api.vendor.example",
        "port": 80,
        "resolved": "127.0.0.1",
        "egress": "127.0.0.10",
        "egress_public": "127.0.0.10",
        "status": 200,
        "bytes_up": 120,
        "bytes_down": 3400,
        "duration_s": 0.01234,
    }
    fields.update(overrides)
    return FlowRecord(**fields)


def run_with_log(
    target: str | None, body: Callable[[FlowLog], Awaitable[None]], **options: Any
) -> FlowLog:
    async def main() -> FlowLog:
        flow_log = FlowLog(target, **options)
        flow_log.start()
        try:
            await body(flow_log)
        finally:
            await flow_log.close()
        return flow_log

    return asyncio.run(main())


def write_records(records: list[FlowRecord]) -> Callable[[FlowLog], Awaitable[None]]:
    async def body(flow_log: FlowLog) -> None:
        for record in records:
            flow_log.write(record)

    return body


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_written_as_json_lines_with_exactly_the_documented_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flow.jsonl"
    run_with_log(str(path), write_records([make_record(), make_record(kind="connect")]))
    lines = read_lines(path)
    assert len(lines) == 2
    assert all(set(line) == FLOW_KEYS for line in lines)


def test_record_values_are_logged_as_given(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    run_with_log(str(path), write_records([make_record()]))
    [line] = read_lines(path)
    assert line == {
        "time": "2024-05-01T12:00:00.123Z",
        "client": "billing",
        "peer": "127.0.0.1:50000",
        "listener": "http",
        "kind": "http",
        "method": "GET",
        "host": "api.vendor.example",
        "port": 80,
        "resolved": "127.0.0.1",
        "egress": "127.0.0.10",
        "egress_public": "127.0.0.10",
        "status": 200,
        "bytes_up": 120,
        "bytes_down": 3400,
        "duration_ms": 12.3,
        "decision": "allow",
        "reason": "allowed",
        "rule": None,
    }


def test_unset_fields_are_logged_as_null() -> None:
    record = FlowRecord(
        start=0.0,
        listener="socks",
        kind="socks",
        peer="127.0.0.1:1",
        client=None,
        method=None,
        host=None,
        port=None,
        resolved=None,
        egress=None,
        egress_public=None,
        status=None,
    )
    line = json.loads(record.to_json())
    nulls = {"client", "method", "host", "port", "resolved", "egress", "egress_public"}
    assert {key for key, value in line.items() if value is None} == nulls | {"status", "rule"}
    assert line["time"] == "1970-01-01T00:00:00.000Z"


def test_a_denied_record_has_decision_deny_with_its_reason_and_rule() -> None:
    record = make_record(status=403, reason=Reason.GUARD_DENIED, rule="guard:loopback")
    line = json.loads(record.to_json())
    assert (line["decision"], line["reason"], line["rule"]) == (
        "deny",
        "guard_denied",
        "guard:loopback",
    )


def test_to_json_is_one_line() -> None:
    record = make_record(host="evil.example\nX-Injected: 1")
    assert "\n" not in record.to_json()


_text = st.none() | st.text(max_size=40)
_count = st.none() | st.integers(min_value=0, max_value=2**63)


@settings(max_examples=300, deadline=None)
@given(
    client=_text,
    peer=st.text(max_size=40),
    method=_text,
    host=_text,
    port=_count,
    resolved=_text,
    status=_count,
    bytes_up=st.integers(min_value=0, max_value=2**63),
    duration_s=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    reason=st.sampled_from(list(Reason)),
    rule=_text,
)
def test_to_json_is_exactly_what_the_json_encoder_writes_for_the_fields(
    client: str | None,
    peer: str,
    method: str | None,
    host: str | None,
    port: int | None,
    resolved: str | None,
    status: int | None,
    bytes_up: int,
    duration_s: float,
    reason: Reason,
    rule: str | None,
) -> None:
    record = make_record(
        client=client,
        peer=peer,
        method=method,
        host=host,
        port=port,
        resolved=resolved,
        status=status,
        bytes_up=bytes_up,
        duration_s=duration_s,
        reason=reason.value,
        rule=rule,
    )
    assert record.to_json() == json.dumps(record.fields(), separators=(",", ":"))


def test_to_json_keys_stay_fixed_when_values_look_like_credentials() -> None:
    record = make_record(
        client="Proxy-Authorization: Basic YmlsbGluZzpzZWNyZXQ=",
        host="token=secret",
        rule="authorization",
    )
    assert set(json.loads(record.to_json())) == FLOW_KEYS


def test_many_records_all_arrive_in_write_order(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    records = [make_record(port=port) for port in range(1, 2501)]
    run_with_log(str(path), write_records(records), max_batch=100)
    assert [line["port"] for line in read_lines(path)] == list(range(1, 2501))


def test_records_are_flushed_periodically_without_an_explicit_flush(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    lines_before_close: list[str] = []

    async def body(flow_log: FlowLog) -> None:
        flow_log.write(make_record())
        for _ in range(500):  # up to 5 s
            if path.read_text():
                break
            await asyncio.sleep(0.01)
        lines_before_close.extend(path.read_text().splitlines())

    run_with_log(str(path), body, flush_interval_s=0.02)
    assert len(lines_before_close) == 1


def test_flush_writes_pending_records_immediately(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    seen: list[int] = []

    async def body(flow_log: FlowLog) -> None:
        flow_log.write(make_record())
        flow_log.write(make_record())
        await flow_log.flush()
        seen.append(len(path.read_text().splitlines()))

    run_with_log(str(path), body, flush_interval_s=60.0)
    assert seen == [2]


def test_a_large_batch_is_encoded_in_slices_that_let_the_event_loop_run(
    tmp_path: Path,
) -> None:
    """Records are encoded at the flush, on the event loop: between two slices of
    ENCODE_SLICE records other callbacks run, so no request waits for a whole batch."""
    path = tmp_path / "flow.jsonl"
    slices = 5
    ports = list(range(1, ENCODE_SLICE * slices + 1))
    turns_while_encoding: list[int] = []

    async def body(flow_log: FlowLog) -> None:
        encoding = asyncio.ensure_future(flow_log._encode([make_record(port=p) for p in ports]))
        turns = 0
        while not encoding.done():
            await asyncio.sleep(0)
            turns += 1
        turns_while_encoding.append(turns)
        assert [json.loads(line)["port"] for line in encoding.result()] == ports
        for port in ports:
            flow_log.write(make_record(port=port))
        await flow_log.flush()

    run_with_log(str(path), body, flush_interval_s=60.0, max_batch=10_000)
    assert turns_while_encoding[0] >= slices
    assert [line["port"] for line in read_lines(path)] == ports


async def flush_in_progress(flow_log: FlowLog, ports: list[int]) -> asyncio.Future[None]:
    """Records for `ports` written and a flush started that holds them, one slice of
    them encoded (the batch spans several slices)."""
    for port in ports:
        flow_log.write(make_record(port=port))
    flushing = asyncio.ensure_future(flow_log.flush())
    await asyncio.sleep(0)
    return flushing


def test_a_flush_cancelled_while_encoding_loses_no_record(tmp_path: Path) -> None:
    """A shutdown can cancel the periodic flush in the middle of a batch: the records go
    back to the queue and close() writes them."""
    path = tmp_path / "flow.jsonl"
    ports = list(range(1, ENCODE_SLICE * 3 + 1))

    async def body(flow_log: FlowLog) -> None:
        flushing = await flush_in_progress(flow_log, ports)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        flow_log.write(make_record(port=9999))

    flow_log = run_with_log(str(path), body, flush_interval_s=60.0, max_batch=10_000)
    assert [line["port"] for line in read_lines(path)] == [*ports, 9999]
    assert flow_log.dropped == 0


def test_close_waits_for_a_flush_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    ports = list(range(1, ENCODE_SLICE * 3 + 1))

    async def body(flow_log: FlowLog) -> None:
        flushing = await flush_in_progress(flow_log, ports)
        await flow_log.close()  # closes the file only after that batch is written
        await flushing

    flow_log = run_with_log(str(path), body, flush_interval_s=60.0, max_batch=10_000)
    assert [line["port"] for line in read_lines(path)] == ports
    assert flow_log.dropped == 0


def test_stdout_target_writes_json_lines_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    run_with_log("-", write_records([make_record(), make_record(port=443)]))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["port"] for line in lines] == [80, 443]


def test_no_target_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    flow_log = run_with_log(None, write_records([make_record()]))
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
    assert flow_log.dropped == 0


def test_records_beyond_max_pending_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    records = [make_record(port=port) for port in range(1, 11)]
    flow_log = run_with_log(
        str(path), write_records(records), max_pending=4, max_batch=100, flush_interval_s=60.0
    )
    assert [line["port"] for line in read_lines(path)] == [1, 2, 3, 4]
    assert flow_log.dropped == 6


def test_records_written_after_close_are_counted_as_dropped(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    flow_log = run_with_log(str(path), write_records([make_record()]))
    flow_log.write(make_record())
    assert flow_log.dropped == 1
    assert len(read_lines(path)) == 1


def test_file_in_a_missing_directory_raises_a_clear_oserror(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "flow.jsonl"

    async def main() -> None:
        FlowLog(str(path)).start()

    with pytest.raises(OSError, match=r"flow log .*no-such-dir.* does not exist"):
        asyncio.run(main())


def test_new_file_is_created_with_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    old_umask = os.umask(0o022)
    try:
        run_with_log(str(path), write_records([]))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_an_existing_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    path.write_text('{"earlier": true}\n')
    run_with_log(str(path), write_records([make_record()]))
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}
    assert set(lines[1]) == FLOW_KEYS


def test_reopen_after_rotation_writes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "flow.jsonl"
    rotated = tmp_path / "flow.jsonl.1"

    async def body(flow_log: FlowLog) -> None:
        flow_log.write(make_record(port=1))
        await flow_log.flush()
        path.rename(rotated)
        flow_log.reopen()
        flow_log.write(make_record(port=2))

    run_with_log(str(path), body)
    assert [line["port"] for line in read_lines(rotated)] == [1]
    assert [line["port"] for line in read_lines(path)] == [2]


def test_reopen_is_a_no_op_for_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    async def body(flow_log: FlowLog) -> None:
        flow_log.reopen()
        flow_log.write(make_record())

    run_with_log("-", body)
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_remembered_pieces_never_stand_in_for_a_field_that_changed() -> None:
    """Encoded pieces are remembered by the values they encode: a record that differs
    from the last in any one field is written with that field's new value."""
    base = {"client": "billing", "peer": "127.0.0.1:40001", "host": "api.example", "port": 443}
    changes: list[dict[str, object]] = [
        {},
        {"peer": "127.0.0.1:40002"},
        {"client": None},
        {"host": "other.example"},
        {"port": 8443},
        {"method": "POST"},
        {"egress": "127.0.0.11"},
        {"status": 503},
        {"reason": Reason.UPSTREAM_TIMEOUT.value},
        {"reason": Reason.UPSTREAM_TIMEOUT.value, "rule": "destinations.api"},
        {},
    ]
    for change in changes:
        record = make_record(**{**base, **change})
        assert record.to_json() == json.dumps(record.fields(), separators=(",", ":")), change


def test_duration_is_in_milliseconds_to_a_tenth() -> None:
    for seconds, ms in [
        (0.0, 0.0),
        (0.01234, 12.3),
        (0.01236, 12.4),
        (0.00005, 0.1),
        (2.5, 2500.0),
    ]:
        record = make_record(duration_s=seconds)
        assert json.loads(record.to_json())["duration_ms"] == ms
        assert record.fields()["duration_ms"] == ms
