"""Health per (egress IP, destination host): block detection, quarantine, back-off.

Pure state machine under a fake clock; the state-file tests write into tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from fixedip.identity import health as health_module
from fixedip.identity.health import (
    MIN_RETRY_AFTER_S,
    Backoff,
    BlockRule,
    CanaryRequest,
    CanaryResult,
    CanaryRule,
    Health,
    MemoryHealthStore,
    State,
)

A, B, C = "127.0.0.10", "127.0.0.11", "127.0.0.12"
VENDOR = "api.vendor.example"
OTHER = "api.other.example"
CANARIED = "api.canaried.example"
WALL_EPOCH = 1_700_000_000.0


class FakeClock:
    """A monotonic clock and a wall clock that advance together, from different origins."""

    def __init__(self, monotonic: float = 5_000.0, wall: float = WALL_EPOCH) -> None:
        self.now = monotonic
        self.wall_now = wall

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


RULES = {
    VENDOR: BlockRule(),
    OTHER: BlockRule(),
    CANARIED: BlockRule(canary=CanaryRule(blocked=frozenset({403}), timeout_s=3.0)),
    "quiet.example": BlockRule(block_statuses=frozenset()),
}


def rule_for(host: str) -> BlockRule:
    return RULES.get(host, BlockRule())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_health(
    clock: FakeClock, backoff: Backoff | None = None, store: MemoryHealthStore | None = None
) -> Health:
    return Health(rule_for, backoff, store=store, clock=clock, wall=clock.wall)


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return make_health(clock)


def block(health: Health, clock: FakeClock, times: int, *, every_s: float = 1.0) -> None:
    for i in range(times):
        if i:
            clock.advance(every_s)
        health.observe(A, VENDOR, 403)


def quarantine_for_vendor(health: Health, clock: FakeClock, egress: str = A) -> None:
    for _ in range(3):
        health.observe(egress, VENDOR, 403)
    assert health.state(egress, VENDOR) is State.QUARANTINED


def confirm_block_by_canary(health: Health, egress: str = A) -> None:
    assert health.observe(egress, CANARIED, 403) == CanaryRequest(egress, CANARIED)
    health.canary_result(egress, CANARIED, 403)
    assert health.state(egress, CANARIED) is State.QUARANTINED


# the default rule ----------------------------------------------------------------------


def test_two_blocks_make_the_ip_suspect_but_keep_it_in_use(
    health: Health, clock: FakeClock
) -> None:
    block(health, clock, 2)
    assert health.state(A, VENDOR) is State.SUSPECT
    assert health.excluded(VENDOR) == frozenset()


def test_three_blocks_within_60_s_quarantine_the_ip(health: Health, clock: FakeClock) -> None:
    block(health, clock, 3, every_s=29)
    assert health.state(A, VENDOR) is State.QUARANTINED
    assert health.excluded(VENDOR) == {A}


def test_three_blocks_spread_over_two_minutes_do_not_quarantine(
    health: Health, clock: FakeClock
) -> None:
    block(health, clock, 3, every_s=60)
    assert health.state(A, VENDOR) is State.SUSPECT
    assert health.excluded(VENDOR) == frozenset()


def test_blocks_older_than_the_window_stop_counting(health: Health, clock: FakeClock) -> None:
    block(health, clock, 3, every_s=40)  # never quiet for a whole window, yet 80 s apart
    assert health.state(A, VENDOR) is State.SUSPECT
    clock.advance(19.9)
    health.observe(A, VENDOR, 403)
    assert health.state(A, VENDOR) is State.QUARANTINED


def test_statuses_outside_block_statuses_are_not_blocks(health: Health, clock: FakeClock) -> None:
    for status in (200, 204, 301, 401, 404, 500, 502, 503):
        for _ in range(3):
            assert health.observe(A, VENDOR, status) is None
    assert health.state(A, VENDOR) is State.HEALTHY
    assert health.snapshot() == []


def test_429_counts_as_a_block_by_default(health: Health, clock: FakeClock) -> None:
    for _ in range(3):
        health.observe(A, VENDOR, 429)
    assert health.state(A, VENDOR) is State.QUARANTINED


def test_resets_and_connect_timeouts_count_towards_the_rule(
    health: Health, clock: FakeClock
) -> None:
    health.observe(A, VENDOR, "reset")
    health.observe(A, VENDOR, "connect_timeout")
    health.observe(A, VENDOR, 403)
    assert health.state(A, VENDOR) is State.QUARANTINED


def test_empty_block_statuses_turn_status_detection_off(health: Health, clock: FakeClock) -> None:
    for _ in range(5):
        health.observe(A, "quiet.example", 403)
        health.observe(A, "quiet.example", 429)
    assert health.state(A, "quiet.example") is State.HEALTHY


def test_empty_block_statuses_still_count_resets_and_connect_timeouts(
    health: Health, clock: FakeClock
) -> None:
    for outcome in ("reset", "connect_timeout", "reset"):
        health.observe(A, "quiet.example", outcome)
    assert health.state(A, "quiet.example") is State.QUARANTINED


def test_a_configured_threshold_and_window_replace_the_default(clock: FakeClock) -> None:
    health = Health(lambda host: BlockRule(threshold=2, window_s=10), clock=clock, wall=clock.wall)
    health.observe(A, VENDOR, 403)
    clock.advance(10)
    health.observe(A, VENDOR, 403)
    assert health.state(A, VENDOR) is State.SUSPECT
    clock.advance(9.9)
    health.observe(A, VENDOR, 403)
    assert health.state(A, VENDOR) is State.QUARANTINED


def test_suspicion_fades_after_a_quiet_window(health: Health, clock: FakeClock) -> None:
    block(health, clock, 2)
    clock.advance(60)
    assert health.state(A, VENDOR) is State.HEALTHY
    assert health.snapshot() == []


def test_answers_arriving_during_a_quarantine_do_not_extend_it(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock)
    clock.advance(30)
    for _ in range(5):
        health.observe(A, VENDOR, 403)
    clock.advance(30)
    assert health.state(A, VENDOR) is State.HEALTHY


def test_an_unknown_outcome_is_a_programming_error(health: Health) -> None:
    with pytest.raises(ValueError, match="unknown outcome"):
        health.observe(A, VENDOR, "eof")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown canary result"):
        health.canary_result(A, CANARIED, "refused")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"threshold": 0}, "threshold"), ({"window_s": 0}, "window_s")],
)
def test_a_block_rule_refuses_nonsense(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlockRule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"base_s": 0}, {"base_s": 120, "cap_s": 60}, {"reset_s": -1}],
)
def test_a_backoff_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# scope: one egress IP, one destination ---------------------------------------------------


def test_a_quarantine_leaves_other_destinations_on_that_ip_alone(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock)
    assert health.state(A, OTHER) is State.HEALTHY
    assert health.excluded(OTHER) == frozenset()


def test_a_quarantine_leaves_other_ips_for_that_destination_alone(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock)
    health.observe(B, VENDOR, 403)
    assert health.state(B, VENDOR) is State.SUSPECT
    assert health.excluded(VENDOR) == {A}


def test_blocks_on_different_ips_are_counted_apart(health: Health, clock: FakeClock) -> None:
    health.observe(A, VENDOR, 403)
    health.observe(B, VENDOR, 403)
    health.observe(C, VENDOR, 403)
    assert health.excluded(VENDOR) == frozenset()


# canaries --------------------------------------------------------------------------------


def test_with_a_canary_the_first_block_makes_the_ip_suspect_and_asks_for_the_canary(
    health: Health,
) -> None:
    assert health.observe(A, CANARIED, 403) == CanaryRequest(A, CANARIED)
    assert health.state(A, CANARIED) is State.SUSPECT
    assert health.excluded(CANARIED) == frozenset()


def test_only_one_canary_is_asked_for_while_one_is_out(health: Health, clock: FakeClock) -> None:
    assert health.observe(A, CANARIED, 403) is not None
    clock.advance(1)
    assert health.observe(A, CANARIED, 403) is None
    assert health.observe(B, CANARIED, 403) == CanaryRequest(B, CANARIED)


def test_a_canary_that_never_reports_is_asked_for_again(health: Health, clock: FakeClock) -> None:
    health.observe(A, CANARIED, 403)
    clock.advance(3.0 + health_module.CANARY_GRACE_S)
    assert health.observe(A, CANARIED, 403) == CanaryRequest(A, CANARIED)


def test_with_a_canary_blocks_alone_never_quarantine(health: Health, clock: FakeClock) -> None:
    for _ in range(10):
        health.observe(A, CANARIED, 403)
    assert health.state(A, CANARIED) is State.SUSPECT
    assert health.excluded(CANARIED) == frozenset()


def test_a_blocked_canary_confirms_the_quarantine(health: Health) -> None:
    confirm_block_by_canary(health)
    assert health.excluded(CANARIED) == {A}
    assert health.snapshot()[0]["reason"] == "canary 403"


@pytest.mark.parametrize("result", [200, 204, 404, 500, 503, "error", "timeout"])
def test_a_canary_that_is_not_blocked_clears_the_suspicion(
    health: Health, result: CanaryResult
) -> None:
    health.observe(A, CANARIED, 403)
    health.canary_result(A, CANARIED, result)
    assert health.state(A, CANARIED) is State.HEALTHY
    assert health.snapshot() == []


def test_a_periodic_canary_quarantines_before_any_request_fails(health: Health) -> None:
    health.canary_result(B, CANARIED, 403)
    assert health.excluded(CANARIED) == {B}


def test_a_canary_result_for_a_destination_without_canary_is_ignored(health: Health) -> None:
    health.canary_result(A, VENDOR, 403)
    assert health.state(A, VENDOR) is State.HEALTHY


def test_a_canary_quarantine_outlasts_its_backoff_until_a_canary_clears_it(
    health: Health, clock: FakeClock
) -> None:
    confirm_block_by_canary(health)
    assert health.due_canaries() == []
    clock.advance(60)
    assert health.excluded(CANARIED) == {A}
    assert health.due_canaries() == [CanaryRequest(A, CANARIED)]
    assert health.due_canaries() == []  # already asked for
    health.canary_result(A, CANARIED, 200)
    assert health.excluded(CANARIED) == frozenset()
    assert health.state(A, CANARIED) is State.HEALTHY


def test_a_clearing_canary_during_the_backoff_does_not_end_it(
    health: Health, clock: FakeClock
) -> None:
    confirm_block_by_canary(health)
    clock.advance(30)
    health.canary_result(A, CANARIED, 200)
    clock.advance(30)
    assert health.excluded(CANARIED) == {A}


def test_a_blocked_canary_during_the_backoff_does_not_extend_it(
    health: Health, clock: FakeClock
) -> None:
    confirm_block_by_canary(health)
    clock.advance(30)
    health.canary_result(A, CANARIED, 403)
    row = health.snapshot()[0]
    assert (row["level"], row["seconds_left"]) == (1, 30.0)


def test_a_blocked_canary_after_the_backoff_quarantines_again_for_longer(
    health: Health, clock: FakeClock
) -> None:
    confirm_block_by_canary(health)
    clock.advance(60)
    health.due_canaries()
    health.canary_result(A, CANARIED, 403)
    row = health.snapshot()[0]
    assert (row["state"], row["level"], row["seconds_left"]) == ("quarantined", 2, 120.0)


def test_a_quarantine_waiting_for_a_canary_ends_when_the_destination_loses_its_canary(
    clock: FakeClock,
) -> None:
    rules = {CANARIED: RULES[CANARIED]}
    health = Health(lambda h: rules.get(h, BlockRule()), clock=clock, wall=clock.wall)
    confirm_block_by_canary(health)
    clock.advance(60)
    rules[CANARIED] = BlockRule()  # a configuration reload dropped the canary
    assert health.excluded(CANARIED) == frozenset()


# back-off --------------------------------------------------------------------------------


def requarantine(health: Health, clock: FakeClock) -> dict[str, object]:
    """Quarantine A for VENDOR right after its current quarantine (if any) ends."""
    left = health.snapshot()[0]["seconds_left"] if health.snapshot() else 0.0
    clock.advance(left)
    quarantine_for_vendor(health, clock)
    return health.snapshot()[0]


def test_a_first_quarantine_lasts_the_base_period(health: Health, clock: FakeClock) -> None:
    quarantine_for_vendor(health, clock)
    clock.advance(59.9)
    assert health.excluded(VENDOR) == {A}
    clock.advance(0.1)
    assert health.excluded(VENDOR) == frozenset()
    assert health.state(A, VENDOR) is State.HEALTHY


def test_back_to_back_quarantines_double_up_to_the_cap(clock: FakeClock) -> None:
    health = make_health(clock, Backoff(base_s=60, cap_s=400, reset_s=3600))
    lengths = [requarantine(health, clock)["seconds_left"] for _ in range(5)]
    assert lengths == [60.0, 120.0, 240.0, 400.0, 400.0]
    assert health.snapshot()[0]["level"] == 5


def test_the_default_backoff_runs_from_a_minute_to_an_hour() -> None:
    backoff = Backoff()
    assert [backoff.duration(level) for level in (1, 2, 3, 7, 8, 500)] == [
        60.0,
        120.0,
        240.0,
        3600.0,
        3600.0,
        3600.0,
    ]


def test_the_backoff_resets_after_a_period_of_health(clock: FakeClock) -> None:
    health = make_health(clock, Backoff(base_s=60, cap_s=3600, reset_s=600))
    requarantine(health, clock)
    requarantine(health, clock)
    clock.advance(120 + 599)
    assert requarantine(health, clock)["level"] == 3
    clock.advance(240 + 600)
    assert requarantine(health, clock)["level"] == 1


def test_a_healthy_pair_still_shows_its_last_quarantine_until_the_reset(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock)
    clock.advance(60)
    row = health.snapshot()[0]
    assert (row["state"], row["reason"], row["level"], row["until"]) == (
        "healthy",
        "status 403",
        1,
        None,
    )
    clock.advance(3600)
    assert health.snapshot() == []


# what the pool and the 503 need ----------------------------------------------------------


def test_excluded_lists_every_quarantined_ip_for_that_host_only(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock, A)
    quarantine_for_vendor(health, clock, B)
    assert health.excluded(VENDOR) == {A, B}
    assert health.excluded(OTHER) == frozenset()
    assert health.excluded("never.seen.example") == frozenset()


def test_retry_after_is_when_the_soonest_candidate_comes_back(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock, A)
    clock.advance(20)
    quarantine_for_vendor(health, clock, B)
    assert health.retry_after(VENDOR, [A, B]) == pytest.approx(40.0)
    assert health.retry_after(VENDOR, [B]) == pytest.approx(60.0)


def test_retry_after_is_the_minimum_when_a_candidate_is_usable(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock, A)
    assert health.retry_after(VENDOR, [A, C]) == MIN_RETRY_AFTER_S
    assert health.retry_after(VENDOR, []) == MIN_RETRY_AFTER_S
    clock.advance(59.9)
    assert health.retry_after(VENDOR, [A]) == MIN_RETRY_AFTER_S


def test_retry_after_for_a_quarantine_waiting_for_its_canary_is_the_canary_time(
    health: Health, clock: FakeClock
) -> None:
    confirm_block_by_canary(health)
    clock.advance(90)
    expected = 3.0 + health_module.CANARY_GRACE_S
    assert health.retry_after(CANARIED, [A]) == pytest.approx(expected)


def test_a_shared_store_shows_one_gateways_quarantines_to_another(clock: FakeClock) -> None:
    store = MemoryHealthStore()
    gateway_a = make_health(clock, store=store)
    gateway_b = make_health(clock, store=store)
    quarantine_for_vendor(gateway_a, clock)
    assert gateway_b.excluded(VENDOR) == {A}
    assert gateway_b.state(A, VENDOR) is State.QUARANTINED


# snapshot --------------------------------------------------------------------------------


def test_snapshot_rows_describe_each_pair_that_is_not_plainly_healthy(
    health: Health, clock: FakeClock
) -> None:
    quarantine_for_vendor(health, clock, B)
    clock.advance(10)
    health.observe(A, VENDOR, "reset")
    health.observe(A, CANARIED, 429)
    assert health.snapshot() == [
        {
            "egress": A,
            "host": CANARIED,
            "state": "suspect",
            "reason": "status 429",
            "since": WALL_EPOCH + 10,
            "until": None,
            "seconds_left": 0.0,
            "level": 0,
            "awaiting_canary": True,
        },
        {
            "egress": A,
            "host": VENDOR,
            "state": "suspect",
            "reason": "reset",
            "since": WALL_EPOCH + 10,
            "until": None,
            "seconds_left": 0.0,
            "level": 0,
            "awaiting_canary": False,
        },
        {
            "egress": B,
            "host": VENDOR,
            "state": "quarantined",
            "reason": "status 403",
            "since": WALL_EPOCH,
            "until": WALL_EPOCH + 60,
            "seconds_left": 50.0,
            "level": 1,
            "awaiting_canary": False,
        },
    ]
    json.dumps(health.snapshot())


# the state file --------------------------------------------------------------------------


def test_a_saved_quarantine_survives_a_restart(
    health: Health, clock: FakeClock, tmp_path: Path
) -> None:
    quarantine_for_vendor(health, clock)
    confirm_block_by_canary(health, B)
    path = tmp_path / "health.json"
    health.save(path)
    restarted = FakeClock(monotonic=17.0, wall=clock.wall_now + 15)  # new boot, 15 s later
    loaded = Health.load(path, rule_for, clock=restarted, wall=restarted.wall)
    assert loaded.excluded(VENDOR) == {A}
    assert loaded.excluded(CANARIED) == {B}
    assert [(r["egress"], r["host"], r["level"], r["seconds_left"]) for r in loaded.snapshot()] == [
        (B, CANARIED, 1, 45.0),
        (A, VENDOR, 1, 45.0),
    ]


def test_the_state_file_holds_wall_clock_times_and_only_quarantines_in_force(
    health: Health, clock: FakeClock, tmp_path: Path
) -> None:
    quarantine_for_vendor(health, clock, B)
    clock.advance(60)  # B's quarantine is over, remembered for the back-off only
    quarantine_for_vendor(health, clock, A)
    health.observe(C, VENDOR, 403)  # suspect only
    path = tmp_path / "health.json"
    health.save(path)
    state = json.loads(path.read_text())
    assert state["version"] == 1
    assert state["quarantines"] == [
        {
            "egress": A,
            "host": VENDOR,
            "level": 1,
            "reason": "status 403",
            "since": WALL_EPOCH + 60,
            "until": WALL_EPOCH + 120,
            "awaiting_canary": False,
        }
    ]


def test_quarantines_that_ended_while_stopped_are_dropped_on_load(
    health: Health, clock: FakeClock, tmp_path: Path
) -> None:
    quarantine_for_vendor(health, clock)
    path = tmp_path / "health.json"
    health.save(path)
    clock.advance(61)
    loaded = Health.load(path, rule_for, clock=clock, wall=clock.wall)
    assert loaded.excluded(VENDOR) == frozenset()
    assert loaded.snapshot() == []


def test_a_canary_quarantine_that_ended_while_stopped_still_waits_for_its_canary(
    health: Health, clock: FakeClock, tmp_path: Path
) -> None:
    confirm_block_by_canary(health)
    path = tmp_path / "health.json"
    health.save(path)
    clock.advance(3600)
    loaded = Health.load(path, rule_for, clock=clock, wall=clock.wall)
    assert loaded.due_canaries() == [CanaryRequest(A, CANARIED)]


def test_a_missing_state_file_starts_empty(clock: FakeClock, tmp_path: Path) -> None:
    loaded = Health.load(tmp_path / "absent.json", rule_for, clock=clock, wall=clock.wall)
    assert loaded.snapshot() == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'{"version": 99, "quarantines": []}',
        b'{"version": 1, "quarantines": {}}',
        b"[" * 100_000,
    ],
    ids=["empty", "truncated", "binary", "list", "version", "shape", "deep"],
)
def test_a_corrupt_state_file_starts_empty_with_a_warning(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "health.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="fixedip.identity.health"):
        loaded = Health.load(path, rule_for, clock=clock, wall=clock.wall)
    assert loaded.snapshot() == []
    assert "corrupt health state" in caplog.text


def test_an_unreadable_state_file_starts_empty_with_a_warning(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fixedip.identity.health"):
        loaded = Health.load(tmp_path, rule_for, clock=clock, wall=clock.wall)  # a directory
    assert loaded.snapshot() == []
    assert "cannot read health state" in caplog.text


def test_malformed_entries_are_skipped_and_the_rest_restored(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = {
        "egress": A,
        "host": VENDOR,
        "level": 2,
        "reason": "status 403",
        "since": WALL_EPOCH - 10,
        "until": WALL_EPOCH + 110,
    }
    bad = [
        "text",
        {**good, "egress": 10},
        {**good, "level": 0},
        {**good, "level": True},
        {**good, "until": "soon"},
        {**good, "until": None},
        {**good, "awaiting_canary": "yes"},
    ]
    path = tmp_path / "health.json"
    path.write_text(json.dumps({"version": 1, "quarantines": [*bad, good]}))
    with caplog.at_level(logging.WARNING, logger="fixedip.identity.health"):
        loaded = Health.load(path, rule_for, clock=clock, wall=clock.wall)
    assert loaded.excluded(VENDOR) == {A}
    assert loaded.snapshot()[0]["level"] == 2
    assert caplog.text.count("malformed quarantine") == len(bad)


def test_a_restored_quarantine_never_outlasts_the_backoff_cap(
    clock: FakeClock, tmp_path: Path
) -> None:
    entry = {"egress": A, "host": VENDOR, "level": 1, "reason": "status 403"}
    far = {**entry, "since": WALL_EPOCH, "until": WALL_EPOCH + 10 * 365 * 86400}
    path = tmp_path / "health.json"
    path.write_text(json.dumps({"version": 1, "quarantines": [far]}))
    loaded = Health.load(path, rule_for, clock=clock, wall=clock.wall)
    assert loaded.snapshot()[0]["seconds_left"] == Backoff().cap_s


def test_a_failed_save_leaves_the_old_file_and_no_partial_one(
    health: Health, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "health.json"
    health.save(path)
    before = path.read_bytes()
    quarantine_for_vendor(health, clock)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        health.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["health.json"]
    assert health.dirty


def test_save_replaces_the_file_and_marks_the_state_clean(
    health: Health, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "health.json"
    path.write_text("old")
    assert not health.dirty
    quarantine_for_vendor(health, clock)
    assert health.dirty
    health.save(path)
    assert not health.dirty
    assert json.loads(path.read_text())["quarantines"][0]["egress"] == A
    assert os.listdir(tmp_path) == ["health.json"]
    assert path.stat().st_mode & 0o777 == health_module.STATE_FILE_MODE
