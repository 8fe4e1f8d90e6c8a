"""End to end: the tiny initialisation study (manifests/examples/sweep-init-study.yaml).

User story: a researcher asks whether starting from a trained model's weight
distribution speeds training up, runs the study with `polypythia run`, and reads
the comparison in the report. Smaller than the example (2 seeds, 3 strategies,
60 steps) to keep CI short; the same file, the same code path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from polypythia.storage import RunStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_tiny_init_study_runs_and_reports_the_comparison(tmp_path: Path) -> None:
    sweep = yaml.safe_load((REPO / "manifests" / "examples" / "sweep-init-study.yaml").read_text())
    sweep["spec"]["seeds"]["list"] = [0, 1]
    keep = {"base", "permute", "gauss"}
    sweep["spec"]["inits"] = [i for i in sweep["spec"]["inits"] if i["name"] in keep]
    sweep["spec"]["training"]["steps"] = 60
    sweep["spec"]["checkpoints"]["every"] = 30
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(sweep))
    workdir = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, "-m", "polypythia.cli", "run", str(path), "--workdir", str(workdir),
         "--metrics-port", "-1", "--no-ray"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "POLYPYTHIA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    store = workdir / "store" / "init-study"
    reference = load_file(store / "init-study-nano-s0-base/checkpoints/step60/model.safetensors")
    permuted = load_file(store / "init-study-nano-s1-permute/checkpoints/step0/model.safetensors")
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    # step 0 of a permute run is an exact permutation of the reference's final weights
    assert torch.equal(
        reference[name].flatten().sort().values, permuted[name].flatten().sort().values
    )
    assert not torch.equal(reference[name], permuted[name])
    for run in ("init-study-nano-s0-gauss", "init-study-nano-s1-base"):
        history = RunStore.open(str(store / run)).read_telemetry()
        assert [r["step"] for r in history] == list(range(1, 61))
    html = (workdir / "report" / "index.html").read_text()
    assert "Initialisation study" in html
    for strategy in ("permute", "matched-gaussian"):
        assert strategy in html
