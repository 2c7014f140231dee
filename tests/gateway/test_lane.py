"""The keep-alive lane against the generic path, by real sockets: each scenario is a
client's keep-alive conversation and a vendor's scripted answers, run once with the lane
and once without it. What the client receives, what the vendor receives and the flow
records must be the same bytes and fields both times, and the lane must have served the
requests it is meant for."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fixedip.gateway import http_proxy
from tests.helpers import (
    TOKENS,
    RawVendor,
    RunningGateway,
    basic,
    content_length,
    read_flow_log,
)

MakeGateway = Callable[..., RunningGateway]
AUTH = f"Proxy-Authorization: {basic('billing', TOKENS['billing'])}\r\n".encode()


def ok(body: bytes = b"ok\n", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@dataclass
class Answer:
    """What the vendor (a RawVendor) sends for one request: `pieces`, each a separate
    send, then the connection is closed when `close`."""

    pieces: list[bytes]
    close: bool = False


def read_response(sock: socket.socket, buf: bytearray, method: bytes) -> bytes:
    """One whole response (interim ones included) from `sock`, read as a client would."""
    out = bytearray()
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"the connection ended inside a response head: {bytes(buf)!r}"
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        out += head
        status = int(head.split(b" ", 2)[1])
        if status >= 200:
            break
    lower = head.lower()
    if method == b"HEAD" or status in (204, 304):
        return bytes(out)
    if b"transfer-encoding: chunked" in lower:
        while not buf.endswith(b"0\r\n\r\n"):
            buf += sock.recv(65536)
        out += buf
        buf.clear()
    elif b"content-length:" in lower:
        length = content_length(head)
        while len(buf) < length:
            buf += sock.recv(65536)
        out += buf[:length]
        del buf[:length]
    else:
        while chunk := sock.recv(65536):
            buf += chunk
        out += buf
        buf.clear()
    return bytes(out)


@dataclass
class Step:
    """Client bytes (each piece a separate send) and the methods of the responses that
    answer them, in order."""

    pieces: list[bytes]
    methods: list[bytes] = field(default_factory=lambda: [b"GET"])


@dataclass
class Scenario:
    steps: list[Step]
    answers: list[Answer]
    statuses: list[int]  # what the client must see, in order
    lane: int  # requests the lane must take
    whole: int  # responses it must pass on in one piece
    config: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"


def request(
    port: int,
    method: bytes = b"GET",
    path: bytes = b"/",
    extra: bytes = b"",
    body: bytes = b"",
    auth: bytes = AUTH,
    version: bytes = b"1.1",
    host: str = "127.0.0.1",
) -> bytes:
    authority = b"%s:%d" % (host.encode(), port)
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"%s http://%s%s HTTP/%s\r\nHost: %s\r\n%sUser-Agent: lane-test\r\n%s%s\r\n%s" % (
        method,
        authority,
        path,
        version,
        authority,
        auth,
        length,
        extra,
        body,
    )


def run(
    make_gateway: MakeGateway, tmp_path: Path, scenario: Callable[[int], Scenario], lane: bool
) -> tuple[list[bytes], list[bytes], list[dict[str, Any]], dict[str, int]]:
    """The scenario with the lane on or off: (responses, requests the vendor got, flow
    records without their times and ports, what the lane served)."""
    flows = tmp_path / f"flows-{lane}.jsonl"
    answers: list[Answer] = []  # the scenario's, once the vendor's port is known
    vendor = RawVendor(lambda n: (answers[n - 1].pieces, answers[n - 1].close))
    script = scenario(vendor.port)
    answers += script.answers
    gw = make_gateway(log={"flow": str(flows)}, **script.config)
    responses: list[bytes] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(http_proxy, "LANE", lane)
        with socket.create_connection(gw.http, timeout=10) as sock:
            buf = bytearray()
            for step in script.steps:
                for piece in step.pieces:
                    sock.sendall(piece)
                    time.sleep(0.05)  # a separate read at the gateway
                responses += [read_response(sock, buf, m) for m in step.methods]
    metrics = gw.gateway.metrics
    served = {"requests": metrics.lane_requests, "responses": metrics.lane_responses}
    for part, count in (("request", served["requests"]), ("response", served["responses"])):
        exported = metrics.registry.get_sample_value("fixedip_http_lane_total", {"part": part})
        assert exported == (count or None), part  # /metrics says the same
    vendor.close()
    # Each run has its own vendor port: written as PORT, the runs compare.
    port = b":%d" % vendor.port
    received = [r.replace(port, b":PORT") for r in vendor.requests]
    records = read_flow_log(flows, len(responses))
    for record in records:
        for volatile in ("time", "duration_ms", "peer"):
            record.pop(volatile)
        if record["port"] == vendor.port:
            record["port"] = "PORT"
    return responses, received, records, served


def statuses(responses: list[bytes]) -> list[int]:
    return [int(r.split(b" ", 2)[1].decode()) for r in responses if not r.startswith(b"HTTP/1.1 1")]


def repeat_gets(port: int) -> Scenario:
    get = request(port, path=b"/poll?x=1")
    return Scenario(
        [Step([get]) for _ in range(4)],
        [Answer([ok(b"%d\n" % i, b"Server: v\r\nX-Trace: %d\r\n" % i)]) for i in range(4)],
        [200] * 4,
        lane=3,
        whole=4,
    )


def repeat_posts(port: int) -> Scenario:
    bodies = [b'{"n": 1}', b'{"n": 22}', b'{"n": 333}']
    return Scenario(
        [
            Step([request(port, b"POST", b"/items", b"Content-Type: application/json\r\n", body)])
            for body in bodies
        ],
        [Answer([ok(b"created\n")]) for _ in bodies],
        [200] * 3,
        lane=2,
        whole=3,
    )


def pieces_and_pipelines(port: int) -> Scenario:
    """Heads and bodies in pieces, two requests in one send, a response in pieces: the
    generic path's, around lane requests."""
    get = request(port)
    post = request(port, b"POST", b"/", body=b"0123456789")
    return Scenario(
        [
            Step([get]),
            Step([get]),
            Step([get[:20], get[20:]]),
            Step([post[:-5], post[-5:]]),
            Step([get + get], [b"GET", b"GET"]),
            Step([get]),
            Step([get]),
        ],
        [Answer([ok()])] * 6
        + [Answer([ok(b"in pieces\n")[:30], ok(b"in pieces\n")[30:]]), Answer([ok()])],
        [200] * 8,
        lane=3,  # the 2nd, the 6th (answered in pieces) and the 7th
        whole=7,  # all but the one in pieces
    )


def statuses_and_framing(port: int) -> Scenario:
    get = request(port)
    head = request(port, b"HEAD")
    answers = [
        ok(),
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # to HEAD
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad",
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
        ok(b"after\n"),
    ]
    steps = [Step([get]) for _ in answers]
    steps[7] = Step([head], [b"HEAD"])
    return Scenario(
        steps,
        [Answer([a]) for a in answers],
        [200, 204, 304, 404, 201, 200, 200, 200, 200, 500, 200, 200],
        lane=11,  # every request after the first (the lane forwards a HEAD too)
        whole=9,  # not the 103 before its 200, the chunked one, the one to HEAD
    )


def upstream_closes(port: int) -> Scenario:
    """The vendor ends its connection after answers: a repeat then waits for a new one,
    and a close-delimited body ends only with the connection."""
    get = request(port)
    return Scenario(
        [Step([get]) for _ in range(5)],
        [
            Answer([ok()]),
            Answer([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nby"], True),
            Answer([ok()]),
            Answer([b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], True),
            Answer([ok()]),
        ],
        [200] * 5,
        lane=4,
        whole=4,  # not the close-delimited one
    )


def client_changes(port: int) -> Scenario:
    """A repeat that is not one: other credentials, another target, a Host that
    disagrees, an HTTP/1.0 keep-alive client, and Connection: close at the end."""
    wrong = f"Proxy-Authorization: {basic('billing', 'wrong')}\r\n".encode()
    return Scenario(
        [
            Step([request(port)]),
            Step([request(port)]),
            Step([request(port, auth=wrong)]),
            Step([request(port, path=b"/other")]),
            Step([request(port, path=b"/other")]),
            Step(
                [request(port, path=b"/other", extra=b"Connection: keep-alive\r\n", version=b"1.0")]
            ),
            Step([request(port, path=b"/other").replace(b"Host: 127.0.0.1", b"Host: localhost")]),
        ],
        [Answer([ok()])] * 5,
        [200, 200, 407, 200, 200, 200, 400],
        lane=3,
        whole=5,
    )


def denied_and_shaped(port: int) -> Scenario:
    """Refusals after the first request was allowed: a destination the rules deny (the
    lane asks the router every time) and a rate limit (it waits in the generic path)."""
    return Scenario(
        [Step([request(port, host="vendor.test")]) for _ in range(4)]
        + [Step([request(9, host="127.0.0.1")]) for _ in range(2)],
        [Answer([ok()])] * 2,
        [200, 200, 429, 429, 403, 403],
        lane=4,
        whole=2,
        config={
            "destinations": [
                {"match": "vendor.test", "rate": "1/min", "burst": 2, "queue_timeout_s": 0}
            ],
        },
    )


SCENARIOS = [
    repeat_gets,
    repeat_posts,
    pieces_and_pipelines,
    statuses_and_framing,
    upstream_closes,
    client_changes,
    denied_and_shaped,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_the_lane_answers_exactly_as_the_generic_path(
    scenario: Callable[[int], Scenario],
    make_gateway: MakeGateway,
    tmp_path: Path,
    dns: Any,
) -> None:
    dns.table["vendor.test"] = ["127.0.0.1"]
    config = {"dns": {"servers": [f"127.0.0.1:{dns.port}"]}}

    def with_dns(port: int) -> Scenario:
        script = scenario(port)
        script.config = {**config, **script.config}
        return script

    lane = run(make_gateway, tmp_path, with_dns, lane=True)
    generic = run(make_gateway, tmp_path, with_dns, lane=False)
    expected = scenario(0)
    assert statuses(lane[0]) == expected.statuses
    assert lane[0] == generic[0]  # the client's bytes
    assert lane[1] == generic[1]  # the vendor's bytes
    assert lane[2] == generic[2]  # the flow records
    assert len(lane[2]) == len(expected.statuses)
    assert lane[3] == {"requests": expected.lane, "responses": expected.whole}
    assert generic[3] == {"requests": 0, "responses": 0}


def test_the_lane_serves_a_client_pinned_to_its_egress(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    """The egress choice is made per request on the lane too."""
    pinned = f"Proxy-Authorization: {basic('pinned', TOKENS['pinned'])}\r\n".encode()

    def scenario(port: int) -> Scenario:
        return Scenario(
            [Step([request(port, auth=pinned)]) for _ in range(3)],
            [Answer([ok()])] * 3,
            [200] * 3,
            lane=2,
            whole=3,
        )

    responses, received, records, served = run(make_gateway, tmp_path, scenario, lane=True)
    assert statuses(responses) == [200] * 3
    assert served == {"requests": 2, "responses": 3}
    assert {r["egress"] for r in records} == {"127.0.0.11"}
    assert all(r["client"] == "pinned" for r in records)
    assert len(received) == 3
