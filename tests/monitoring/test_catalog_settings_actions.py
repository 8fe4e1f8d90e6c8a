"""Metric catalogue conventions, spec.instability mapping, rewind decisions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polypythia.errors import UsageError
from polypythia.monitoring import catalog
from polypythia.monitoring.actions import decide_rewind
from polypythia.monitoring.settings import RewindSettings, settings_from_spec
from polypythia.monitoring.spikes import SpikeEvent

ROOT = Path(__file__).resolve().parents[2]


def test_metric_names_follow_prometheus_conventions():
    names = [m.name for m in catalog.METRICS]
    assert len(names) == len(set(names))
    for m in catalog.METRICS:
        assert re.fullmatch(r"polypythia_[a-z][a-z0-9_]*", m.name)
        assert m.name.endswith("_total") == (m.type == "counter"), m.name
        assert set(m.labels) <= set(catalog.LABELS) and "step" not in m.labels
        assert m.help.endswith(".")
    assert not any(re.search(r"_(ms|milliseconds|minutes|percent)\b", n) for n in names)


def test_metrics_doc_is_generated_from_the_catalogue():
    assert (ROOT / "docs/metrics.md").read_text() == catalog.markdown(), (
        "regenerate: python -m polypythia.monitoring.catalog --markdown > docs/metrics.md"
    )


def test_settings_from_spec_defaults_and_mapping():
    s = settings_from_spec({})
    assert (s.spikes.window, s.spikes.threshold, s.spikes.min_history) == (128, 6.0, 32)
    assert s.spikes.signals == ("loss", "grad_norm") and s.action == "observe"
    assert (s.outliers.false_alarm_rate, s.outliers.consecutive) == (0.05, 2)
    assert s.rewind == RewindSettings(100, 200, 3)
    s = settings_from_spec(
        {
            "signals": ["loss"],
            "window": 64,
            "threshold": 5,
            "scoreWindow": 500,
            "commonModeTolerance": 0,
            "outliers": {"falseAlarmRate": 0.01, "signals": ["eval"]},
            "action": "rewind",
            "rewind": {"stepsBefore": 50, "maxRewinds": 1},
        }
    )
    assert s.spikes.signals == ("loss",) and s.spikes.threshold == 5.0
    assert s.outliers.signals == ("eval",) and s.rewind.steps_before == 50
    assert s.outliers.false_alarm_rate == 0.01


@pytest.mark.parametrize(
    "block, message",
    [
        ({"signals": ["perplexity"]}, "spec.instability.signals: must be a non-empty list"),
        ({"window": "big"}, "spec.instability.window: expected int, got 'big'"),
        ({"minHistory": 500}, "spec.instability: minHistory: must be in [2, window=128]"),
        ({"action": "panic"}, "spec.instability.action: must be one of"),
        ({"rewind": {"skipBatches": -1}}, "spec.instability.rewind.skipBatches: must be >= 0"),
        ({"outliers": {"consecutive": 0}}, "spec.instability.outliers: consecutive"),
        ({"outliers": {"falseAlarmRate": 1}}, "spec.instability.outliers: falseAlarmRate"),
    ],
)
def test_settings_from_spec_rejects_bad_values(block, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        settings_from_spec(block)


def _spike(onset: int) -> SpikeEvent:
    return SpikeEvent("r", "loss", onset, onset + 2, 4.0, 12.0, 2.5, None)


def test_rewind_goes_back_before_the_spike_and_skips_batches():
    d = decide_rewind(_spike(5_230), [0, 1000, 4000, 5000, 5200], RewindSettings(), 0)
    assert d.action == "rewind" and d.restart_step == 5000
    assert d.skip_batches == (5130, 5330)
    d = decide_rewind(_spike(5_100), [0, 1000, 4000, 5000], RewindSettings(), 0)
    assert d.restart_step == 5000 and d.skip_batches == (5000, 5200)


def test_rewind_is_refused_with_a_reason():
    d = decide_rewind(_spike(5_230), [5000], RewindSettings(max_rewinds=2), 2)
    assert d.action == "refuse" and "maxRewinds is 2" in d.reason
    d = decide_rewind(_spike(150), [100, 200], RewindSettings(), 0)
    assert d.action == "refuse" and "no complete checkpoint at or before step 50" in d.reason
