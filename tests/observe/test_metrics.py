from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fixedip.observe.flowlog import FlowRecord
from fixedip.observe.metrics import Metrics
from fixedip.policy.decision import SOCKS_CONNECTION_REFUSED, SOCKS_SUCCEEDED, Reason


def make_record(**overrides: Any) -> FlowRecord:
    fields: dict[str, Any] = {
        "start": 1_714_564_800.0,
        "listener": "http",
        "kind": "http",
        "peer": "127.0.0.1:50000",
        "client": "billing",
        "method": "GET",
        "host": "api.vendor.example",
        "port": 80,
        "resolved": "127.0.0.1",
        "egress": "127.0.0.10",
        "egress_public": "203.0.113.7",
        "status": 200,
    }
    fields.update(overrides)
    return FlowRecord(**fields)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_http_record_counts_a_request_by_listener_kind_status_class_and_egress() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record(status=204))
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="http",
            kind="http",
            status_class="2xx",
            egress="127.0.0.10",
        )
        == 1
    )


def test_repeated_records_of_one_shape_accumulate() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_flow(make_record(status=502, reason=Reason.UPSTREAM_REFUSED))
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="http",
            kind="http",
            status_class="5xx",
            egress="127.0.0.10",
        )
        == 3
    )


def test_record_without_egress_is_counted_with_an_empty_egress_label() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record(status=407, egress=None, reason=Reason.AUTH_REQUIRED))
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="http",
            kind="http",
            status_class="4xx",
            egress="",
        )
        == 1
    )


def test_record_without_a_status_has_status_class_none() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record(status=None, reason=Reason.UPSTREAM_CLOSED))
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="http",
            kind="http",
            status_class="none",
            egress="127.0.0.10",
        )
        == 1
    )


def test_record_bytes_are_counted_up_and_down_per_egress() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record(bytes_up=100, bytes_down=2000))
    metrics.observe_flow(make_record(bytes_up=5, bytes_down=7))
    assert value(metrics, "fixedip_bytes_total", direction="up", egress="127.0.0.10") == 105
    assert value(metrics, "fixedip_bytes_total", direction="down", egress="127.0.0.10") == 2007


def test_allowed_connect_counts_a_tunnel() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record(kind="connect", method="CONNECT", port=443))
    assert value(metrics, "fixedip_tunnels_total", listener="http", egress="127.0.0.10") == 1


def test_denied_connect_counts_no_tunnel() -> None:
    metrics = Metrics()
    metrics.observe_flow(
        make_record(kind="connect", method="CONNECT", status=403, reason=Reason.GUARD_DENIED)
    )
    assert value(metrics, "fixedip_tunnels_total", listener="http", egress="127.0.0.10") is None


def test_forwarded_http_request_counts_no_tunnel() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record())
    assert value(metrics, "fixedip_tunnels_total", listener="http", egress="127.0.0.10") is None


def test_successful_socks_flow_counts_as_socks_ok_and_a_tunnel() -> None:
    metrics = Metrics()
    metrics.observe_flow(
        make_record(listener="socks", kind="socks", method=None, status=SOCKS_SUCCEEDED)
    )
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="socks",
            kind="socks",
            status_class="socks_ok",
            egress="127.0.0.10",
        )
        == 1
    )
    assert value(metrics, "fixedip_tunnels_total", listener="socks", egress="127.0.0.10") == 1


def test_failed_socks_flow_counts_as_socks_fail_and_no_tunnel() -> None:
    metrics = Metrics()
    metrics.observe_flow(
        make_record(
            listener="socks",
            kind="socks",
            method=None,
            status=SOCKS_CONNECTION_REFUSED,
            reason=Reason.UPSTREAM_REFUSED,
        )
    )
    assert (
        value(
            metrics,
            "fixedip_requests_total",
            listener="socks",
            kind="socks",
            status_class="socks_fail",
            egress="127.0.0.10",
        )
        == 1
    )
    assert value(metrics, "fixedip_tunnels_total", listener="socks", egress="127.0.0.10") is None


def test_decisions_are_counted_as_allow_or_deny_by_reason() -> None:
    metrics = Metrics()
    metrics.observe_flow(make_record())
    metrics.observe_flow(make_record(status=403, reason=Reason.DESTINATION_NOT_ALLOWED))
    metrics.observe_flow(make_record(status=403, reason=Reason.DESTINATION_NOT_ALLOWED))
    assert value(metrics, "fixedip_decisions_total", decision="allow", reason="allowed") == 1
    assert (
        value(
            metrics,
            "fixedip_decisions_total",
            decision="deny",
            reason="destination_not_allowed",
        )
        == 2
    )


def test_connect_times_land_in_the_histogram_buckets() -> None:
    metrics = Metrics()
    metrics.observe_connect("127.0.0.10", 0.00005)
    metrics.observe_connect("127.0.0.10", 0.003)
    metrics.observe_connect("127.0.0.10", 20.0)
    name = "fixedip_upstream_connect_seconds"
    assert value(metrics, f"{name}_count", egress="127.0.0.10") == 3
    assert value(metrics, f"{name}_bucket", egress="127.0.0.10", le="0.0001") == 1
    assert value(metrics, f"{name}_bucket", egress="127.0.0.10", le="0.005") == 2
    assert value(metrics, f"{name}_bucket", egress="127.0.0.10", le="10.0") == 2
    assert value(metrics, f"{name}_bucket", egress="127.0.0.10", le="+Inf") == 3


def test_tunnels_open_follows_opens_and_closes() -> None:
    metrics = Metrics()
    metrics.tunnel_opened()
    metrics.tunnel_opened()
    metrics.tunnel_closed()
    assert value(metrics, "fixedip_tunnels_open") == 1


def test_connections_open_is_tracked_per_listener() -> None:
    metrics = Metrics()
    metrics.connection_opened("http")
    metrics.connection_opened("http")
    metrics.connection_opened("socks")
    metrics.connection_closed("http")
    assert value(metrics, "fixedip_connections_open", listener="http") == 1
    assert value(metrics, "fixedip_connections_open", listener="socks") == 1


def test_egress_up_is_1_when_in_service_and_0_when_not() -> None:
    metrics = Metrics()
    metrics.set_egress("127.0.0.10", "203.0.113.7", up=True)
    metrics.set_egress("127.0.0.11", "203.0.113.8", up=True)
    metrics.set_egress("127.0.0.11", "203.0.113.8", up=False)
    assert value(metrics, "fixedip_egress_up", egress="127.0.0.10", public="203.0.113.7") == 1
    assert value(metrics, "fixedip_egress_up", egress="127.0.0.11", public="203.0.113.8") == 0


def test_a_changed_public_address_replaces_the_egress_series() -> None:
    metrics = Metrics()
    metrics.set_egress("10.0.1.5", "203.0.113.7", up=True)
    metrics.set_egress("10.0.1.5", "203.0.113.9", up=True)
    assert value(metrics, "fixedip_egress_up", egress="10.0.1.5", public="203.0.113.7") is None
    assert value(metrics, "fixedip_egress_up", egress="10.0.1.5", public="203.0.113.9") == 1


def test_flowlog_dropped_adds_each_delta() -> None:
    metrics = Metrics()
    metrics.flowlog_dropped(3)
    metrics.flowlog_dropped(0)
    metrics.flowlog_dropped(2)
    assert value(metrics, "fixedip_flowlog_dropped_total") == 5


def test_each_metrics_instance_counts_on_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.observe_flow(make_record())
    assert value(second, "fixedip_decisions_total", decision="allow", reason="allowed") is None


def test_render_returns_the_prometheus_text_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE fixedip_requests_total counter" in body


def test_docs_metrics_md_names_every_metric_the_gateway_registers() -> None:
    """A metric nobody can look up is a metric nobody alerts on: each one the proxy, the
    TLS listener and the fleet define is listed in docs/metrics.md."""
    import re
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src" / "fixedip"
    defined: set[str] = set()
    for path in ("observe/metrics.py", "gateway/tls.py", "fleet/node.py"):
        defined |= set(
            re.findall(r'"(fixedip_[a-z_]+)",\s*\n?\s*"[A-Z1]', (src / path).read_text())
        )
    assert len(defined) >= 19  # the pattern still finds the definitions
    docs = (src.parents[1] / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"`(fixedip_[a-z_]+?)(?:_total)?`", docs))
    assert defined - listed == set()
