"""Receiving: each answer the listener gives, over real sockets, and what reaches the target."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.ingress.stubs import (
    RunningRelay,
    TargetStub,
    iter_flow,
    standard_webhooks_headers,
    wait_until,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MakeRelay = Callable[..., RunningRelay]


@pytest.fixture
def signed_relay(
    make_relay: MakeRelay, target: TargetStub, monkeypatch: pytest.MonkeyPatch
) -> RunningRelay:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    return make_relay(
        [
            {
                "path": "/hooks/payments",
                "target": target.url("/ok"),
                "verify": "standard-webhooks",
                "secret": "env:HOOK_SECRET",
                "source_cidrs": ["127.0.0.0/8"],
                "max_body_bytes": 4096,
            }
        ]
    )


def test_accepted_webhook_is_delivered_as_received_with_a_delivery_id(
    signed_relay: RunningRelay, target: TargetStub
) -> None:
    body = b'{"type":"payment.succeeded","amount":42}'
    headers = standard_webhooks_headers(SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", body)
    headers["X-Vendor-Thing"] = "kept"
    answer = requests.post(
        signed_relay.url + "/hooks/payments?a=1&b=2", data=body, headers=headers, timeout=5
    )
    assert answer.status_code == 200
    delivery_id = answer.json()["id"]
    [got] = target.wait_for(1, "/ok")
    assert got.body == body
    assert got.method == "POST"
    assert got.query == "a=1&b=2"
    assert got.delivery_id == delivery_id
    for name, value in headers.items():  # vendor headers untouched, including the signed id
        assert got.header(name) == value
    assert got.header("Fixedip-Attempt") == "1"


def test_header_case_and_order_reach_the_target_unchanged(
    make_relay: MakeRelay, target: TargetStub
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/ok")}])
    host, port = relay.relay.address if relay.relay else ("", 0)
    raw = (
        b"POST /h HTTP/1.1\r\nHost: x\r\nX-ZETA: 1\r\nx-alpha: 2\r\nX-Mixed-Case: 3\r\n"
        b"Connection: keep-alive, X-Hop\r\nX-Hop: secret-hop\r\nContent-Length: 2\r\n\r\nhi"
    )
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(raw)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    [got] = target.wait_for(1, "/ok")
    names = [name for name, _ in got.headers]
    assert names.index("X-ZETA") < names.index("x-alpha") < names.index("X-Mixed-Case")
    assert got.header("X-Hop") is None  # named in Connection: hop-by-hop
    assert got.body == b"hi"


def test_unknown_path_is_404_and_nothing_is_spooled(
    signed_relay: RunningRelay, target: TargetStub
) -> None:
    answer = requests.post(signed_relay.url + "/hooks/other", data=b"x", timeout=5)
    assert answer.status_code == 404
    assert answer.json() == {"error": "unknown_path"}


@pytest.mark.parametrize(
    ("cidrs", "status"),
    [(["127.0.0.0/8"], 200), (["127.0.0.1/32", "::1/128"], 200), (["10.0.0.0/8", "::/0"], 403)],
)
def test_source_allowlist(
    make_relay: MakeRelay, target: TargetStub, cidrs: list[str], status: int
) -> None:
    relay = make_relay([{"path": "/h", "target": target.url("/ok"), "source_cidrs": cidrs}])
    answer = requests.post(relay.url + "/h", data=b"{}", timeout=5)
    assert answer.status_code == status
    if status == 403:
        assert answer.json() == {"error": "source_not_allowed"}


def test_bad_signature_is_401(signed_relay: RunningRelay, target: TargetStub) -> None:
    body = b'{"a":1}'
    headers = standard_webhooks_headers(SECRET, "msg_1", body)
    answer = requests.post(
        signed_relay.url + "/hooks/payments", data=body + b" ", headers=headers, timeout=5
    )
    assert answer.status_code == 401
    assert answer.json() == {"error": "bad_signature"}


def test_missing_signature_is_401(signed_relay: RunningRelay) -> None:
    answer = requests.post(signed_relay.url + "/hooks/payments", data=b"{}", timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"error": "missing_signature"}


def test_old_timestamp_is_401(signed_relay: RunningRelay) -> None:
    body = b"{}"
    import time

    headers = standard_webhooks_headers(SECRET, "msg_1", body, timestamp=int(time.time()) - 301)
    answer = requests.post(
        signed_relay.url + "/hooks/payments", data=body, headers=headers, timeout=5
    )
    assert answer.status_code == 401
    assert answer.json() == {"error": "timestamp_out_of_tolerance"}


def test_body_over_the_limit_is_413_by_content_length(signed_relay: RunningRelay) -> None:
    answer = requests.post(signed_relay.url + "/hooks/payments", data=b"x" * 4097, timeout=5)
    assert answer.status_code == 413


def test_chunked_body_over_the_limit_is_413(signed_relay: RunningRelay) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"y" * 1000

    answer = requests.post(signed_relay.url + "/hooks/payments", data=chunks(), timeout=5)
    assert answer.status_code == 413


def test_body_at_the_limit_passes_the_size_check(signed_relay: RunningRelay) -> None:
    body = b"z" * 4096
    headers = standard_webhooks_headers(SECRET, "msg_big", body)
    answer = requests.post(
        signed_relay.url + "/hooks/payments", data=body, headers=headers, timeout=5
    )
    assert answer.status_code == 200


def test_spool_full_is_503_with_retry_after(make_relay: MakeRelay, target: TargetStub) -> None:
    relay = make_relay(
        [{"path": "/h", "target": target.url("/hang"), "timeout_s": 20}], max_spool_records=2
    )
    for i in range(2):
        assert requests.post(relay.url + "/h", data=f"{i}".encode(), timeout=5).status_code == 200
    answer = requests.post(relay.url + "/h", data=b"3", timeout=5)
    assert answer.status_code == 503
    assert answer.json() == {"error": "spool_full"}
    assert int(answer.headers["Retry-After"]) > 0
    wait_until(
        lambda: 'fixedip_ingress_spool_records{state="delivering"} 2.0' in relay.metrics(),
        what="the two undelivered records in the depth gauge",
    )
    assert "fixedip_ingress_oldest_pending_age_seconds 0.0" not in relay.metrics()


def test_repeated_vendor_id_is_acknowledged_once_and_delivered_once(
    signed_relay: RunningRelay, target: TargetStub
) -> None:
    body = b'{"n":1}'
    headers = standard_webhooks_headers(SECRET, "msg_same", body)
    first = requests.post(
        signed_relay.url + "/hooks/payments", data=body, headers=headers, timeout=5
    )
    second = requests.post(
        signed_relay.url + "/hooks/payments", data=body, headers=headers, timeout=5
    )
    assert first.status_code == second.status_code == 200
    assert second.json() == {"id": first.json()["id"], "duplicate": True}
    other = standard_webhooks_headers(SECRET, "msg_other", body)
    third = requests.post(signed_relay.url + "/hooks/payments", data=body, headers=other, timeout=5)
    assert third.json()["id"] != first.json()["id"]
    target.wait_for(2, "/ok")
    ids = [d.delivery_id for d in target.received("/ok")]
    assert sorted(ids) == sorted([first.json()["id"], third.json()["id"]])


def test_receipts_and_rejections_are_in_the_flow_log_and_metrics(
    signed_relay: RunningRelay, target: TargetStub, tmp_path: Path
) -> None:
    body = b"{}"
    headers = standard_webhooks_headers(SECRET, "msg_fl", body)
    ok = requests.post(signed_relay.url + "/hooks/payments", data=body, headers=headers, timeout=5)
    requests.post(signed_relay.url + "/hooks/payments", data=body, timeout=5)
    target.wait_for(1, "/ok")
    flow = tmp_path / "flow.jsonl"
    wait_until(lambda: len(list(iter_flow(flow))) >= 3, what="3 flow records")
    records = list(iter_flow(flow))
    receipt = next(r for r in records if r["kind"] == "webhook" and r["status"] == 200)
    assert receipt["delivery_id"] == ok.json()["id"]
    assert receipt["reason"] == "accepted" and receipt["decision"] == "allow"
    assert receipt["route"] == "/hooks/payments" and receipt["peer"] == "127.0.0.1"
    refused = next(r for r in records if r["kind"] == "webhook" and r["status"] == 401)
    assert refused["reason"] == "missing_signature" and refused["decision"] == "deny"
    attempt = next(r for r in records if r["kind"] == "delivery")
    assert attempt["delivery_id"] == ok.json()["id"]
    assert attempt["reason"] == "delivered" and attempt["attempt"] == 1
    assert attempt["status"] == 200
    assert SECRET not in flow.read_text()
    text = signed_relay.metrics()
    assert 'fixedip_ingress_received_total{route="/hooks/payments"} 2.0' in text
    assert (
        'fixedip_ingress_rejected_total{reason="missing_signature",route="/hooks/payments"} 1.0'
        in text
    )
    assert 'fixedip_ingress_spooled_total{route="/hooks/payments"} 1.0' in text
    wait_until(
        lambda: (
            'fixedip_ingress_delivered_total{route="/hooks/payments"} 1.0' in signed_relay.metrics()
        ),
        what="delivered metric",
    )
    wait_until(
        lambda: 'fixedip_ingress_spool_records{state="pending"} 0.0' in signed_relay.metrics(),
        what="spool depth gauge",
    )
    assert "fixedip_ingress_oldest_pending_age_seconds 0.0" in signed_relay.metrics()


def test_plain_http_client_gets_json_answers(signed_relay: RunningRelay) -> None:
    host, port = signed_relay.relay.address if signed_relay.relay else ("", 0)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("POST", "/nope", body=b"x")
    response = conn.getresponse()
    assert response.status == 404
    assert json.loads(response.read()) == {"error": "unknown_path"}
    conn.close()
