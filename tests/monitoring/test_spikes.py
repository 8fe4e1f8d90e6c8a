"""Loss-spike detector: planted spikes found, no false alarms, streaming == batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polypythia.monitoring.spikes import RunSpikeDetector, SpikeSettings
from polypythia.monitoring.synthetic import make_history


def _closed(events):
    return [e for e in events if e.status != "open"]


def test_finds_planted_spikes_with_onset_peak_and_recovery():
    h = make_history(20_000, seed=7, spikes=4)
    _, events = RunSpikeDetector.rebuild("r", h.steps, h.loss, h.grad_norm)
    loss = [e for e in _closed(events) if e.signal == "loss"]
    assert [e.onset_step for e in loss] == [p.step for p in h.planted]
    for e, p in zip(loss, h.planted, strict=True):
        assert e.status == "recovered" and e.onset_step < e.recovery_step < e.onset_step + 500
        assert e.peak_step - e.onset_step <= 3
        assert e.magnitude > 6 and e.peak_value > e.baseline + 0.2
        assert e.precursor_step == p.step - 3  # gradient norm rose first (BLOOM)
        assert e.kind == "seed-specific"


def test_no_false_alarm_on_early_drop_noise_or_drift():
    h = make_history(60_000, seed=3, spikes=0)
    # add a slow upward drift of the loss on top (e.g. a data-mix change)
    drifted = h.loss + np.linspace(0.0, 0.4, len(h.loss))
    for loss in (h.loss, drifted):
        detector, events = RunSpikeDetector.rebuild("r", h.steps, loss, h.grad_norm)
        assert events == []
        assert detector.score("loss") < 0.01


def test_streaming_equals_batch_and_restart_rebuild():
    h = make_history(12_000, seed=11, spikes=3)
    streaming = RunSpikeDetector("r")
    live = []
    for s, loss, g in zip(h.steps.tolist(), h.loss.tolist(), h.grad_norm.tolist(), strict=True):
        live += streaming.feed(s, loss, g)
    _, batch = RunSpikeDetector.rebuild("r", h.steps, h.loss, h.grad_norm)
    # a monitor restarted half-way rebuilds from storage, then goes on step by step
    half = 6_000
    restarted, first = RunSpikeDetector.rebuild(
        "r", h.steps[:half], h.loss[:half], h.grad_norm[:half]
    )
    rest = []
    for s, loss, g in zip(
        h.steps[half:].tolist(), h.loss[half:].tolist(), h.grad_norm[half:].tolist(), strict=True
    ):
        rest += restarted.feed(s, loss, g)
    key = lambda e: (e.signal, e.onset_step, e.peak_step, e.recovery_step, e.status)  # noqa: E731
    assert [key(e) for e in live] == [key(e) for e in batch] == [key(e) for e in first + rest]
    for a, b in zip(live, batch, strict=True):
        assert a.magnitude == pytest.approx(b.magnitude, rel=1e-9)
    assert streaming.score("loss") == pytest.approx(restarted.score("loss"))
    assert streaming.baseline("loss") == pytest.approx(restarted.baseline("loss"))


def test_flagged_points_stay_out_of_the_baseline():
    steps = np.arange(1, 2_001)
    rng = np.random.default_rng(0)
    loss = 3.0 + rng.normal(0, 0.01, 2_000)
    loss[1000:1010] += 1.0  # a long plateau-like spike
    loss[1100] += 0.2  # a second, smaller one right after: must not be masked
    _, events = RunSpikeDetector.rebuild(
        "r", steps, loss, settings=SpikeSettings(signals=("loss",))
    )
    assert [e.onset_step for e in events if e.status == "open"] == [1001, 1101]


def test_level_shift_is_reported_unrecovered_then_relearned():
    steps = np.arange(1, 3_001)
    rng = np.random.default_rng(1)
    loss = 3.0 + rng.normal(0, 0.01, 3_000)
    loss[1000:] += 0.5
    settings = SpikeSettings(signals=("loss",), recovery_steps=200)
    detector, events = RunSpikeDetector.rebuild("r", steps, loss, settings=settings)
    assert [(e.status, e.onset_step) for e in events] == [("open", 1001), ("unrecovered", 1001)]
    assert events[1].recovery_step is None
    assert detector.open_spikes() == []
    assert detector.baseline("loss")[0] == pytest.approx(3.5, abs=0.01)


def test_non_finite_loss_is_a_spike():
    d = RunSpikeDetector("r", SpikeSettings(signals=("loss",)))
    for s in range(1, 101):
        d.feed(s, 3.0 + 0.01 * math.sin(s))
    events = d.feed(101, float("nan"))
    assert len(events) == 1 and events[0].magnitude == math.inf
    assert events[0].to_dict()["magnitude"] is None


def test_spike_score_counts_large_deviations():
    steps = np.arange(1, 3_001)
    rng = np.random.default_rng(2)
    loss = 3.0 + rng.normal(0, 0.01, 3_000)
    loss[[2_500, 2_600, 2_700]] += 1.0
    detector, _ = RunSpikeDetector.rebuild(
        "r", steps, loss, settings=SpikeSettings(signals=("loss",))
    )
    assert detector.score("loss") == pytest.approx(3 / 1000)


def test_steps_must_increase_and_settings_are_checked():
    d = RunSpikeDetector("r")
    d.feed(5, 1.0, 1.0)
    with pytest.raises(ValueError, match="steps must increase"):
        d.feed(5, 1.0, 1.0)
    with pytest.raises(ValueError, match="min_history"):
        SpikeSettings(window=16, min_history=32)
    with pytest.raises(ValueError, match="signals"):
        SpikeSettings(signals=("perplexity",))
