"""Cross-seed outliers on PolyPythias' real data; common-mode spike labelling."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from polypythia.monitoring.common_mode import CommonModeTracker, label_common_mode
from polypythia.monitoring.outliers import OutlierSettings, Point, find_outliers, robust_z
from polypythia.monitoring.spikes import SpikeEvent

MAPS = Path(__file__).resolve().parents[1] / "fixtures/polypythias/training_maps.tsv"


def _maps() -> list[Point]:
    with MAPS.open() as f:
        return [
            Point("410m", r["seed"], int(r["step"]), float(r["score"]))
            for r in csv.DictReader(f, delimiter="\t")
        ]


def test_polypythias_410m_outliers_are_seeds_3_and_4_only():
    verdicts = find_outliers(_maps(), "eval")
    assert [(v.run, v.first_step) for v in verdicts] == [("3", 83000), ("4", 123000)]
    assert all(v.score > v.threshold and v.signal == "eval" for v in verdicts)


def test_direction_matters():
    points = _maps()
    # better than the others is not an outlier; either side still finds only seeds 3 and 4
    assert find_outliers(points, "eval", direction="high") == []
    both = find_outliers(points, "eval", OutlierSettings(consecutive=1), direction="both")
    assert {v.run for v in both} == {"3", "4"}


def test_robust_z_survives_zero_mad():
    z = robust_z({"a": 1.0, "b": 1.0, "c": 1.0, "d": 9.0})  # MAD 0: mean AD stands in
    assert z["a"] == 0 and z["d"] == pytest.approx(8 / (1.2533 * 2))
    assert robust_z({"a": 2.0, "b": 2.0, "c": 2.0}) == {"a": 0.0, "b": 0.0, "c": 0.0}


def _spike(run: str, onset: int) -> SpikeEvent:
    return SpikeEvent(run, "loss", onset, onset, 4.0, 10.0, 3.0, None)


def _kinds(events, orders, **kw) -> dict[tuple[str, int], tuple[str, str]]:
    return {
        (e.run, e.onset_step): (e.kind, e.cause) for e in label_common_mode(events, orders, **kw)
    }


def test_a_spike_most_runs_share_is_common_mode_whatever_the_data_order():
    events = [_spike("a", 100), _spike("b", 101), _spike("c", 99), _spike("d", 500)]
    different = {"a": 0, "b": 1, "c": 2, "d": 3}
    assert _kinds(events, different) == {
        ("a", 100): ("common-mode", "schedule-or-system"),
        ("b", 101): ("common-mode", "schedule-or-system"),
        ("c", 99): ("common-mode", "schedule-or-system"),
        ("d", 500): ("seed-specific", "none"),
    }
    unknown = dict.fromkeys(different)
    assert _kinds(events, unknown)[("a", 100)] == ("common-mode", "unknown")
    shared = dict.fromkeys(different, 7)
    assert _kinds(events, shared)[("b", 101)] == ("common-mode", "data")
    # outside the step window it is each seed's own spike
    assert _kinds(events, different, tolerance=0)[("a", 100)] == ("seed-specific", "none")


def test_a_bad_batch_of_one_data_order_is_common_mode_data():
    orders = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2, "f": 2}
    events = [_spike("a", 100), _spike("b", 102), _spike("e", 300)]
    assert _kinds(events, orders) == {
        ("a", 100): ("common-mode", "data"),
        ("b", 102): ("common-mode", "data"),
        ("e", 300): ("seed-specific", "none"),
    }


def test_runs_that_ended_before_the_step_are_not_counted():
    orders = dict.fromkeys("abcd")
    events = [_spike("a", 900), _spike("b", 900)]
    assert _kinds(events, orders)[("a", 900)] == ("seed-specific", "none")  # 2 of 4
    ended = {"a": 1000, "b": 1000, "c": 500, "d": 1000}
    assert _kinds(events, orders, last_step=ended)[("a", 900)] == ("common-mode", "unknown")


def test_tracker_settles_when_every_run_passed_the_step():
    tracker = CommonModeTracker({"a": 0, "b": 0, "c": 0, "d": 1})
    assert tracker.add("a", [_spike("a", 100)], last_step=150) == []
    assert tracker.add("b", [_spike("b", 100)], last_step=150) == []
    assert tracker.add("c", [], last_step=102) == []  # d has not reached step 102
    settled = tracker.add("d", [], last_step=120)
    assert {(e.run, e.kind, e.cause) for e in settled} == {
        ("a", "common-mode", "data"),
        ("b", "common-mode", "data"),
    }
    assert tracker.add("a", [_spike("a", 100)], last_step=160) == []  # released once
    assert tracker.add("a", [_spike("a", 300)], last_step=400) == []
    assert tracker.finish("b") == []
    assert tracker.finish("c") == []
    assert [(e.run, e.kind) for e in tracker.finish("d")] == [("a", "seed-specific")]
