"""Loss-spike detector: planted spikes found, no false alarms, streaming == batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from polypythia.monitoring.spikes import RunSpikeDetector, SpikeSettings
from polypythia.monitoring.synthetic import make_history

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
    with pytest.raises(ValueError, match="level_window"):
        SpikeSettings(level_window=0)


def _loss_onsets(events):
    return [e.onset_step for e in events if e.signal == "loss" and e.status == "open"]


@pytest.mark.parametrize("seed", range(8))
def test_spike_during_the_fast_early_drop_is_flagged_on_loss(seed):
    # While the loss still falls fast, the plain window sd is mostly trend (the old
    # rule's threshold sat ~9 loss units above the loss at step 120 here).
    spiked = make_history(2_000, seed=seed, spikes=0, data_spike_steps=(120,), heights=(2.0, 2.0))
    _, events = RunSpikeDetector.rebuild("r", spiked.steps, spiked.loss, spiked.grad_norm)
    assert _loss_onsets(events) == [spiked.planted[0].step] == [121]
    clean = make_history(2_000, seed=seed, spikes=0)
    _, events = RunSpikeDetector.rebuild("r", clean.steps, clean.loss, clean.grad_norm)
    assert events == []


def _nano_run(name):
    rows = [
        line.split(",")
        for line in (FIXTURES / "nano_lr_shock.csv").read_text().splitlines()[1:]
        if line.startswith(name + ",")
    ]
    steps, loss, grad_norm = (np.array([float(r[i]) for r in rows]) for i in (1, 2, 3))
    return steps.astype(np.int64), loss, grad_norm


def test_real_nano_run_lr_shock_is_flagged_on_loss_and_clean_run_is_quiet():
    # Telemetry of two real 400-step nano runs (`polypythia run`, batch 8 x 32 tokens,
    # fp32, CPU): "clean", and "shock" with training.perturbations
    # [{step: 120, learningRateFactor: 100}]; identical up to step 120.
    steps, loss, grad_norm = _nano_run("shock")
    _, events = RunSpikeDetector.rebuild("shock", steps, loss, grad_norm)
    assert _loss_onsets(events) == [121]
    spike = next(e for e in events if e.signal == "loss")
    assert spike.precursor_step == 121 and spike.baseline < 2.5 < 6.0 < spike.peak_value
    steps, loss, grad_norm = _nano_run("clean")
    detector, events = RunSpikeDetector.rebuild("clean", steps, loss, grad_norm)
    assert events == []
    assert detector.score("loss") < 0.01


@pytest.mark.parametrize(("window", "level_window"), [(8, 16), (8, 8), (20, 1), (64, 5)])
def test_streaming_equals_batch_for_small_windows(window, level_window):
    h = make_history(6_000, seed=5, spikes=3)
    loss = h.loss.copy()
    loss[5_000] = math.nan
    settings = SpikeSettings(window=window, min_history=4, level_window=level_window)
    streaming = RunSpikeDetector("r", settings)
    live = []
    for s, x, g in zip(h.steps.tolist(), loss.tolist(), h.grad_norm.tolist(), strict=True):
        live += streaming.feed(s, x, g)
    batch_detector, batch = RunSpikeDetector.rebuild("r", h.steps, loss, h.grad_norm, settings)
    key = lambda e: (e.signal, e.onset_step, e.peak_step, e.recovery_step, e.status)  # noqa: E731
    assert [key(e) for e in live] == [key(e) for e in batch]
    assert 5_001 in [e.onset_step for e in live if e.signal == "loss"]
    assert streaming.baseline("loss") == pytest.approx(batch_detector.baseline("loss"))
