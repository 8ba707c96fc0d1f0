"""The firing-rate guard's decisions on constructed firing-rate sequences (:mod:`snn.guard`)."""

from __future__ import annotations

import pytest

from snn.guard import FiringGuard, Verdict


def _run(guard: FiringGuard, sequence: list[dict[str, float]]) -> tuple[int, Verdict] | None:
    for i, rates in enumerate(sequence, start=1):
        verdict = guard.update(rates)
        if verdict is not None:
            return i, verdict
    return None


def test_a_stage_silent_for_patience_checks_stops_the_trial_at_that_check():
    g = FiringGuard(silent_rate=1e-3, saturated_rate=0.9, patience=3)
    seq = [{"stem": 0.2, "stage2": 0.0005}] * 5
    assert _run(g, seq) == (3, Verdict("silent", "stage2", 0.0005))


def test_a_stage_that_recovers_resets_its_count():
    g = FiringGuard(silent_rate=1e-3, saturated_rate=None, patience=3)
    low, ok = {"stage1": 0.0}, {"stage1": 0.05}
    assert _run(g, [low, low, ok, low, low, ok, low]) is None  # never 3 in a row
    assert _run(FiringGuard(1e-3, None, 3), [low, low, ok, low, low, low]) == (6, Verdict("silent", "stage1", 0.0))


def test_saturation_and_the_rate_at_the_limit():
    g = FiringGuard(silent_rate=1e-3, saturated_rate=0.9, patience=2)
    assert _run(g, [{"stem": 0.9}, {"stem": 0.9}, {"stem": 0.001}]) is None  # at the limits is not beyond them
    assert _run(FiringGuard(1e-3, 0.9, 2), [{"stem": 0.95}, {"stem": 0.99}]) == (2, Verdict("saturated", "stem", 0.99))


def test_each_stage_is_counted_on_its_own():
    g = FiringGuard(silent_rate=1e-3, saturated_rate=None, patience=2)
    seq = [{"a": 0.0, "b": 0.5}, {"a": 0.5, "b": 0.0}, {"a": 0.0, "b": 0.5}, {"a": 0.5, "b": 0.0}]
    assert _run(g, seq) is None


def test_none_switches_a_rule_off_and_patience_must_be_positive():
    g = FiringGuard(silent_rate=None, saturated_rate=None, patience=1)
    assert not g.active and _run(g, [{"stem": 0.0}, {"stem": 1.0}]) is None
    with pytest.raises(ValueError, match="patience"):
        FiringGuard(1e-3, 0.9, 0)
