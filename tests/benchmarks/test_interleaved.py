"""`make bench` compares targets round by round, so a slow spell costs each a run."""

from __future__ import annotations

from benchmarks.load import Measurement, Trial

from benchmarks import bench


def _trial(label: str, values: list[float], order: list[str]) -> Trial:
    left = list(values)

    def once() -> Measurement:
        order.append(label)
        value = left.pop(0)
        if value < 0:
            return Measurement(ok=False, reason="wrk failed")
        return Measurement(ok=True, value=value, p99_ms=value / 1000)

    return Trial(label, once, warm_up=lambda: order.append(f"warm {label}"))


def test_runs_go_round_by_round_and_each_target_keeps_its_best(monkeypatch) -> None:
    monkeypatch.setattr(bench, "PAUSE_S", 0)
    order: list[str] = []
    trials = [_trial("squid", [10.0, 30.0], order), _trial("fixedip", [20.0, 5.0], order)]
    entries = bench._interleaved(trials, 2, lambda m: f"{m.value}", [])
    assert order == [
        "warm squid", "squid", "warm fixedip", "fixedip",
        "warm squid", "squid", "warm fixedip", "fixedip",
    ]  # fmt: skip
    assert entries["squid"]["best"] == 30.0 and entries["squid"]["p99_ms"] == 0.03
    assert entries["fixedip"]["best"] == 20.0
    assert [r["value"] for r in entries["fixedip"]["runs"]] == [20.0, 5.0]


def test_a_target_whose_runs_all_failed_says_why(monkeypatch) -> None:
    monkeypatch.setattr(bench, "PAUSE_S", 0)
    order: list[str] = []
    entries = bench._interleaved([_trial("tinyproxy", [-1, -1], order)], 2, str, [])
    assert entries["tinyproxy"]["ok"] is False
    assert entries["tinyproxy"]["reason"] == "wrk failed"
    assert len(entries["tinyproxy"]["runs"]) == 2


def test_one_good_run_is_enough(monkeypatch) -> None:
    monkeypatch.setattr(bench, "PAUSE_S", 0)
    entry = bench._best("proxy.py", 2, _trial("proxy.py", [-1, 7.0], []).once, str, [])
    assert entry["ok"] is True and entry["best"] == 7.0
