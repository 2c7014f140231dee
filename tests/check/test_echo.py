"""Reading IP-echo answers and judging several of them together."""

from __future__ import annotations

import pytest

from fixedip.check.echo import EchoAnswer, judge, parse_echo_body
from fixedip.check.report import Status


@pytest.mark.parametrize(
    ("body", "ip"),
    [
        (b"203.0.113.7\n", "203.0.113.7"),  # checkip.amazonaws.com, ipify, ifconfig.me/ip
        (b'{"ip":"2001:db8:a::7"}', "2001:db8:a::7"),  # ipify ?format=json
        (b'{"origin": "203.0.113.7, 198.51.100.1"}', "203.0.113.7"),  # httpbin via a proxy
        (b"<html>203.0.113.7</html>", None),
        (b"", None),
    ],
)
def test_echo_bodies(body: bytes, ip: str | None) -> None:
    assert parse_echo_body(body) == ip


def _statuses(rows: list) -> list[str]:  # type: ignore[type-arg]
    return [r.status.value for r in rows]


def test_a_round_robin_pool_seen_as_two_ips_passes() -> None:
    answers = [EchoAnswer("a", "203.0.113.10"), EchoAnswer("b", "203.0.113.11")]
    verdict = judge(answers, set(), {"203.0.113.10", "203.0.113.11"})
    assert _statuses(verdict.rows) == ["pass", "pass", "pass"]
    assert verdict.trusted == ["203.0.113.10", "203.0.113.11"]


def test_a_tie_between_an_expected_and_an_unexpected_ip_fails_the_unexpected_one() -> None:
    answers = [EchoAnswer("a", "203.0.113.10"), EchoAnswer("b", "203.0.113.99")]
    verdict = judge(answers, {"203.0.113.10"}, set())
    assert _statuses(verdict.rows) == ["pass", "fail", "fail"]


def test_unanswered_endpoints_are_unknown_and_do_not_count() -> None:
    answers = [EchoAnswer("a", None, "timed out"), EchoAnswer("b", "203.0.113.10")]
    verdict = judge(answers, set(), set())
    assert verdict.rows[0].status is Status.UNKNOWN and "timed out" in verdict.rows[0].reason
    assert verdict.rows[-1].reason == "the internet sees 203.0.113.10 (1/2)"
