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


def test_common_mode_spikes_are_data_driven():
    order = {"a": 0, "b": 0, "c": 0, "d": 1}
    events = [_spike("a", 100), _spike("b", 101), _spike("c", 500), _spike("d", 100)]
    kinds = {(e.run, e.onset_step): e.kind for e in label_common_mode(events, order)}
    assert kinds == {
        ("a", 100): "data-driven",
        ("b", 101): "data-driven",
        ("c", 500): "seed-specific",
        ("d", 100): "seed-specific",  # other data order
    }


def test_tracker_settles_when_every_run_of_the_order_passed_the_step():
    tracker = CommonModeTracker({"a": 0, "b": 0, "c": 0})
    assert tracker.add("a", [_spike("a", 100)], last_step=150) == []
    assert tracker.add("b", [_spike("b", 100)], last_step=150) == []
    settled = tracker.add("c", [], last_step=102)
    assert {(e.run, e.kind) for e in settled} == {("a", "data-driven"), ("b", "data-driven")}
    assert tracker.add("a", [_spike("a", 100)], last_step=160) == []  # released once
    assert tracker.add("a", [_spike("a", 300)], last_step=400) == []
    assert tracker.finish("b") == []
    assert [(e.run, e.kind) for e in tracker.finish("c")] == [("a", "seed-specific")]
