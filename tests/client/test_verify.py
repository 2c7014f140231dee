"""verify_egress() and whoami: which IPs this client leaves from, checked against the
expected ones, with failover between gateways."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fixedip.client import (
    EgressMismatch,
    Gateway,
    GatewayError,
    GatewayUnavailable,
    verify_egress,
)
from tests.client.conftest import dead_url
from tests.helpers import ALLOWED_EGRESS, OTHER_EGRESS, TOKENS, RunningGateway, VendorServer


def test_whoami_reports_this_clients_egress(sdk: Gateway) -> None:
    assert sdk.whoami() == {
        "client": "billing",
        "egress_ip": ALLOWED_EGRESS,
        "egress_ips": [ALLOWED_EGRESS, OTHER_EGRESS],
        "strategy": "failover",
    }


def test_matching_expected_ips_pass_and_report_the_egress(sdk: Gateway) -> None:
    egress = verify_egress([ALLOWED_EGRESS, OTHER_EGRESS], gateway=sdk)
    assert egress.ip == ALLOWED_EGRESS
    assert egress.ips == (ALLOWED_EGRESS, OTHER_EGRESS)
    assert egress.client == "billing"
    assert egress.strategy == "failover"
    assert egress.gateway.endswith("/whoami")
    assert TOKENS["billing"] not in repr(egress)


def test_an_ip_outside_the_expected_ones_is_a_mismatch_naming_both(sdk: Gateway) -> None:
    # Failover may move this client to 127.0.0.11, which the vendor never allowlisted.
    with pytest.raises(EgressMismatch) as info:
        verify_egress([ALLOWED_EGRESS], gateway=sdk)
    assert info.value.seen == (OTHER_EGRESS,)
    assert info.value.expected == (ALLOWED_EGRESS,)
    assert OTHER_EGRESS in str(info.value) and ALLOWED_EGRESS in str(info.value)


def test_a_pinned_client_on_the_wrong_ip_is_a_mismatch(gateway: RunningGateway) -> None:
    with pytest.raises(EgressMismatch) as info:
        verify_egress([ALLOWED_EGRESS], gateway=Gateway(gateway.proxy_url("pinned")))
    assert info.value.seen == (OTHER_EGRESS,)


def test_expected_ips_come_from_the_environment(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXEDIP_URL", gateway.proxy_url("pinned"))
    monkeypatch.setenv("FIXEDIP_EXPECTED_IPS", OTHER_EGRESS)
    assert verify_egress().ip == OTHER_EGRESS
    monkeypatch.setenv("FIXEDIP_EXPECTED_IPS", ALLOWED_EGRESS)
    with pytest.raises(EgressMismatch):
        verify_egress()


def test_without_expected_ips_it_only_reports(sdk: Gateway) -> None:
    assert verify_egress(gateway=sdk).ip == ALLOWED_EGRESS


def test_an_echo_url_is_asked_through_the_proxy(sdk: Gateway, vendor: VendorServer) -> None:
    egress = verify_egress(
        [ALLOWED_EGRESS, OTHER_EGRESS], gateway=sdk, echo_url=vendor.url("/echo")
    )
    assert egress.echo_ip == ALLOWED_EGRESS
    assert vendor.seen[-1][0] == ALLOWED_EGRESS


def test_the_next_gateway_answers_when_the_first_is_down(gateway: RunningGateway) -> None:
    down = dead_url()
    gw = Gateway([down, gateway.proxy_url()])
    egress = verify_egress([ALLOWED_EGRESS, OTHER_EGRESS], gateway=gw)
    assert egress.gateway.startswith(f"http://billing:***@127.0.0.1:{gateway.http[1]}")
    # The proxies follow the gateway that answered.
    assert gw.url == gateway.proxy_url()


def test_failover_also_covers_the_environment(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXEDIP_URL", f"{dead_url()},{gateway.proxy_url()}")
    assert verify_egress().ip == ALLOWED_EGRESS


def test_no_reachable_gateway_is_gateway_unavailable() -> None:
    with pytest.raises(GatewayUnavailable, match="no gateway accepted a connection"):
        verify_egress(gateway=Gateway(f"{dead_url()},{dead_url()}"))


def test_a_wrong_token_is_a_gateway_error_that_hides_it(gateway: RunningGateway) -> None:
    with pytest.raises(GatewayError) as info:
        verify_egress(gateway=Gateway(gateway.proxy_url(password="wrong-token")))
    assert info.value.status == 407
    assert "wrong-token" not in str(info.value)
    assert "FIXEDIP_URL" in str(info.value)


def test_no_usable_egress_ip_is_a_gateway_error(
    make_gateway: Callable[..., RunningGateway],
) -> None:
    gw = make_gateway()
    pool = gw.gateway.runtime.pool
    gw.call(lambda: [pool.mark_down(state, "test") for state in list(pool.states)])
    with pytest.raises(GatewayError, match="no egress IP is usable"):
        verify_egress(gateway=Gateway(gw.proxy_url()))


def test_a_chunked_echo_answer_is_read(sdk: Gateway, vendor: VendorServer) -> None:
    assert verify_egress(gateway=sdk, echo_url=vendor.url("/chunked")).echo_ip == ALLOWED_EGRESS
