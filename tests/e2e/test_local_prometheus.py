"""End to end: a real Prometheus scrapes `polypythia run` while a spike is injected.

User story: a researcher watches a sweep in Prometheus/Grafana; when a run's loss
spikes, the spike counter moves and the PolyPythiaLossSpike alert fires.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e_helpers import command, write_sweep
from e2e_helpers import env as run_env

from support.prometheus import PrometheusServer, free_port, prometheus_binary

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "polypythia" / "files" / "prometheus-rules.yaml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.e2e,
    pytest.mark.skipif(prometheus_binary() is None, reason="needs the Debian prometheus package"),
]


def test_injected_spike_reaches_prometheus_and_fires_the_alert(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "spike",
        {
            "sizes": ["nano"],
            "seeds": {"list": [0]},
            "training": {
                "steps": 500,
                "globalBatchSize": 8,
                "sequenceLength": 32,
                "precision": "fp32",
                # A learning-rate blow-up: 100x for 5 steps from step 300, once the
                # loss has flattened.
                "perturbations": [{"step": 300, "steps": 5, "learningRateFactor": 100}],
            },
            "checkpoints": {"schedule": "every", "every": 250},
            "evaluation": {"tasks": [], "schedule": "none"},
        },
    )
    port = free_port()
    env = run_env(tmp_path / "cache")
    cmd = command(sweep, tmp_path / "work", "--no-report", "--no-ray", metrics_port=port)
    with PrometheusServer(f"127.0.0.1:{port}", rule_files=[RULES]) as prom:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            up = prom.wait_for(lambda: prom.query('up{job="polypythia"} == 1'), timeout=240)
            assert up
            spikes = prom.wait_for(
                lambda: prom.query('polypythia_spikes_total{sweep="spike",signal="loss"} > 0'),
                timeout=400,
            )
            assert spikes[0]["metric"]["size"] == "nano"
            alert = prom.wait_for(
                lambda: [
                    a for a in prom.alerts() if a["labels"]["alertname"] == "PolyPythiaLossSpike"
                ],
                timeout=60,
            )
            assert alert[0]["state"] in ("pending", "firing")
            assert alert[0]["labels"]["sweep"] == "spike"
            loss = prom.query('polypythia_run_loss{sweep="spike"}')
            assert loss and float(loss[0]["value"][1]) > 0
        finally:
            out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "spike-nano-s0" in out
