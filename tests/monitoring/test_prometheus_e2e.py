"""End to end with a real Prometheus: the exporter fed a training history with a spike,
scraped by Prometheus running the project's alert rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypythia.monitoring.exporter import RunLabels, SweepExporter
from polypythia.monitoring.spikes import RunSpikeDetector
from polypythia.monitoring.synthetic import make_history
from support.prometheus import PrometheusServer, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/polypythia/files/prometheus-rules.yaml"

pytestmark = pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed")


def _feed(ex, detector, run, h, lo, hi):
    records, events = [], []
    for s, loss, g in zip(
        h.steps[lo:hi].tolist(), h.loss[lo:hi].tolist(), h.grad_norm[lo:hi].tolist(), strict=True
    ):
        events += detector.feed(s, loss, g)
        records.append({"step": s, "loss": loss, "grad_norm": g, "tokens_per_s": 1e4})
    ex.observe_telemetry(run, records)
    ex.observe_spikes(run, events)
    ex.set_spike_score(run, "loss", detector.score("loss"))
    return events


def _loss_alerts(prom):
    return [a for a in prom.alerts() if a["labels"]["alertname"] == "PolyPythiaLossSpike"]


def test_spike_counter_and_alert_state_in_prometheus():
    h = make_history(6_000, seed=21, spikes=1)
    onset = h.planted[0].step
    run = RunLabels("default", "e2e", "nano", "0", "pythia", "e2e-nano-s0")
    quiet = RunLabels("default", "e2e", "nano", "1", "pythia", "e2e-nano-s1")
    ex = SweepExporter()
    for r in (run, quiet):
        ex.set_phase(r, "Running")
    detector = RunSpikeDetector("e2e-nano-s0")
    server = ex.serve(port=0)
    try:
        with PrometheusServer(f"127.0.0.1:{server.port}", rule_files=[RULES]) as prom:
            _feed(ex, detector, run, h, 0, onset - 10)
            ex.observe_telemetry(quiet, [{"step": 1, "loss": 3.0}])
            prom.wait_for(lambda: prom.query('polypythia_run_step{sweep="e2e",seed="0"}'))
            assert _loss_alerts(prom) == []

            events = _feed(ex, detector, run, h, onset - 10, onset + 2)
            assert [e.status for e in events if e.signal == "loss"] == ["open"]
            result = prom.wait_for(
                lambda: prom.query('polypythia_spikes_total{sweep="e2e",signal="loss"} == 1')
            )
            assert result[0]["metric"]["seed"] == "0"
            assert result[0]["metric"]["kind"] == "seed-specific"
            firing = prom.wait_for(
                lambda: [a for a in _loss_alerts(prom) if a["state"] == "firing"]
            )
            assert [a["labels"]["seed"] for a in firing] == ["0"]

            _feed(ex, detector, run, h, onset + 2, len(h.steps))
            prom.wait_for(
                lambda: prom.query('polypythia_spike_in_progress{sweep="e2e",signal="loss"} == 0')
            )
            prom.wait_for(lambda: _loss_alerts(prom) == [] or None)
            assert (
                prom.query('polypythia_spikes_total{sweep="e2e",signal="loss"}')[0]["value"][1]
                == "1"
            )
    finally:
        server.close()
