from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixedip.observe.admin import AdminView, start_admin
from fixedip.observe.flowlog import FlowRecord
from fixedip.observe.metrics import Metrics

METRICS_CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"


@dataclass
class StubView:
    readiness: tuple[bool, str] = (True, "")
    egress: list[dict[str, Any]] = field(default_factory=list)
    exposition: tuple[bytes, str] = (b"fixedip_up 1\n", METRICS_CONTENT_TYPE)

    def ready(self) -> tuple[bool, str]:
        return self.readiness

    def egress_snapshot(self) -> list[dict[str, Any]]:
        return self.egress

    def metrics(self) -> tuple[bytes, str]:
        return self.exposition


@dataclass
class Reply:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes


def request(view: AdminView, method: str, path: str) -> Reply:
    """Start a real admin server on 127.0.0.1, send one request with aiohttp, stop it."""

    async def main() -> Reply:
        server = await start_admin("127.0.0.1", 0, view)
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.request(method, f"http://127.0.0.1:{server.port}{path}") as response,
            ):
                return Reply(
                    status=response.status,
                    content_type=response.headers.get("Content-Type", ""),
                    headers=dict(response.headers),
                    body=await response.read(),
                )
        finally:
            await server.close()

    return asyncio.run(main())


def test_healthz_answers_200_ok() -> None:
    reply = request(StubView(), "GET", "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.content_type.startswith("text/plain")


def test_readyz_answers_200_ready_when_the_gateway_is_ready() -> None:
    reply = request(StubView(readiness=(True, "")), "GET", "/readyz")
    assert (reply.status, reply.body) == (200, b"ready\n")
    assert reply.content_type.startswith("text/plain")


def test_readyz_answers_503_with_the_reason_when_not_ready() -> None:
    view = StubView(readiness=(False, "no egress IP is in service"))
    reply = request(view, "GET", "/readyz")
    assert reply.status == 503
    assert b"no egress IP is in service" in reply.body


def test_metrics_serves_the_views_exposition_and_content_type() -> None:
    reply = request(StubView(), "GET", "/metrics")
    assert (reply.status, reply.body) == (200, b"fixedip_up 1\n")
    assert reply.content_type == METRICS_CONTENT_TYPE


def test_metrics_from_a_real_registry_parse_as_prometheus_text() -> None:
    metrics = Metrics()
    metrics.observe_flow(
        FlowRecord(
            start=0.0,
            listener="http",
            kind="http",
            peer="127.0.0.1:50000",
            client="billing",
            method="GET",
            host="api.vendor.example",
            port=80,
            resolved="127.0.0.1",
            egress="127.0.0.10",
            egress_public="127.0.0.10",
            status=200,
        )
    )
    reply = request(StubView(exposition=metrics.render()), "GET", "/metrics")
    names = {family.name for family in text_string_to_metric_families(reply.body.decode())}
    assert "fixedip_requests" in names


def test_egress_answers_json_with_the_pool_snapshot() -> None:
    pool = [{"bind": "127.0.0.10", "public": "203.0.113.7", "up": True}]
    reply = request(StubView(egress=pool), "GET", "/egress")
    assert reply.status == 200
    assert reply.content_type.startswith("application/json")
    assert json.loads(reply.body) == {"egress": pool}


def test_unknown_path_answers_404_json() -> None:
    reply = request(StubView(), "GET", "/admin/secret")
    assert reply.status == 404
    assert reply.content_type.startswith("application/json")
    assert json.loads(reply.body) == {"error": "not found"}


def test_post_to_a_known_path_answers_405_with_allow() -> None:
    reply = request(StubView(), "POST", "/healthz")
    assert reply.status == 405
    assert reply.content_type.startswith("application/json")
    assert json.loads(reply.body) == {"error": "method not allowed"}
    assert "GET" in reply.headers["Allow"]


def test_head_on_healthz_is_served_like_get_without_a_body() -> None:
    reply = request(StubView(), "HEAD", "/healthz")
    assert (reply.status, reply.body) == (200, b"")


def test_start_admin_on_a_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"admin API on 127.0.0.1:{port}"):
            asyncio.run(start_admin("127.0.0.1", port, StubView()))


def test_close_stops_listening() -> None:
    async def main() -> int:
        server = await start_admin("127.0.0.1", 0, StubView())
        await server.close()
        return server.port

    port = asyncio.run(main())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2.0).close()
