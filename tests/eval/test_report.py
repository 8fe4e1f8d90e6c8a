"""`polypythia report` on a synthetic sweep (planted spike, outlier seed) and on real Pythia files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polypythia import cli
from polypythia.storage import RunStore
from polypythia_eval.report import render_report
from polypythia_eval.weightstats import StatsConfig, weight_statistics

PYTHIA_EVALS = Path(__file__).resolve().parents[1] / "fixtures" / "pythia-evals"
STEPS = 300
EVAL_STEPS = [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300]
SPIKE_RUN, SPIKE_STEP = "sw-micro-s1", 200
OUTLIER_RUN = "sw-micro-s3"


def _loss(seed: int, step: int, rng) -> float:
    loss = 2.0 + 5.0 * math.exp(-step / 60) + rng.normal(0, 0.02)
    if seed == 1 and SPIKE_STEP <= step < SPIKE_STEP + 3:
        loss += 3.0
    return loss


def _weights(seed: int, step: int) -> dict:
    g = torch.Generator().manual_seed(seed * 1000 + step)
    scale = 0.02 * (1 + step / 100)
    if seed == 3 and step >= 150:  # the outlier's weights drift off
        scale *= 4
    return {
        "gpt_neox.embed_in.weight": torch.randn(64, 16, generator=g) * scale,
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": torch.randn(32, 16, generator=g) * scale,
    }


def _eval(seed: int, step: int) -> dict:
    acc = 0.5 + 0.4 * step / STEPS + 0.01 * seed
    if seed == 3 and step >= 150:
        acc = 0.3
    preds = [int((i * (seed + 1) + step) % 3 == 0) for i in range(20)]
    return {
        "results": {"pp_cloze": {"alias": "pp_cloze", "acc,none": acc, "acc_stderr,none": 0.01}},
        "versions": {"pp_cloze": 1.0},
        "predictions": {"pp_cloze": {"doc_id": list(range(20)), "pred": preds}},
        "weight_stats": weight_statistics(_weights(seed, step), StatsConfig(fit_sample_size=2000)),
        "validation": {"loss": 6.0 - step / 100 + 0.01 * seed, "tokens": 4096, "dataset": "d1"},
    }


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store") / "sw"
    for seed in range(5):
        name = f"sw-micro-s{seed}"
        store = RunStore.open(str(root / name))
        store.write_run_config(
            {"sweep": "sw", "run": name, "size": "micro", "seed": seed, "dataSeed": seed,
             "training": {"steps": STEPS}}
        )  # fmt: skip
        rng = np.random.default_rng(seed)
        records = [
            {"step": s, "loss": _loss(seed, s, rng), "grad_norm": 1.0 + rng.normal(0, 0.01)}
            for s in range(1, STEPS + 1)
        ]
        store.append_telemetry(records, attempt=0)
        for step in EVAL_STEPS:
            store.write_eval(step, _eval(seed, step))
    # A second size whose only run failed before writing anything but its config.
    RunStore.open(str(root / "sw-nano-s0")).write_run_config(
        {"sweep": "sw", "run": "sw-nano-s0", "size": "nano", "seed": 0}
    )
    return root


def test_report_of_a_sweep_shows_spikes_outliers_and_maps(sweep_dir, tmp_path):
    index = render_report(str(sweep_dir), tmp_path, run_errors={"sw-nano-s0": "worker OOM-killed"})
    page = index.read_text()
    for png in ("loss-micro.png", "heldout-micro.png", "evals-micro.png", "weights-micro.png",
                "map-micro.png", "kappa-micro.png"):  # fmt: skip
        assert (tmp_path / png).stat().st_size > 5000, png
        assert f'src="{png}"' in page
    summary = json.loads((tmp_path / "summary.json").read_text())
    loss_spikes = [s for s in summary["spikes"] if s["signal"] == "loss"]
    assert [(s["run"], s["onset_step"]) for s in loss_spikes] == [(SPIKE_RUN, SPIKE_STEP)]
    flagged = {(v["run"], v["signal"]) for v in summary["outliers"]}
    assert (OUTLIER_RUN, "eval:pp_cloze/acc") in flagged
    assert all(run == OUTLIER_RUN for run, _ in flagged)
    # The map (z-scored per run, as Hu et al.) sees the outlier's x4 weights as the same
    # phases, one checkpoint early: no departure; the cross-seed test is what flags it.
    tmap = summary["training_maps"]["micro"]
    assert set(tmap["paths"]) == {f"sw-micro-s{s}" for s in range(5)}
    assert all(len(p) == len(EVAL_STEPS) for p in tmap["paths"].values())
    bic = tmap["heldout_bic"]  # JSON: keys are strings
    assert str(tmap["n_states"]) == min(bic, key=bic.get)
    assert all(tmap["departures"][f"sw-micro-s{s}"] is None for s in (0, 1, 2, 4))
    # The failed run and the missing pieces are said, not crashed on.
    assert "FAILED: worker OOM-killed" in page
    assert "No training telemetry yet" in page and "No evaluation results yet" in page


def test_report_of_an_empty_sweep_is_refused(tmp_path, capsys):
    # Issue #14: a report of nothing used to exit 0 with an empty page.
    (tmp_path / "sweep").mkdir()
    assert cli.main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 2
    assert "no runs in it" in capsys.readouterr().err
    assert not (tmp_path / "out" / "index.html").exists()


def test_report_bad_source_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_report_renders_the_real_pythia_evaluations(tmp_path):
    index = render_report(str(PYTHIA_EVALS), tmp_path)
    page = index.read_text()
    for size in ("70m", "160m", "410m"):
        assert (tmp_path / f"evals-{size}.png").stat().st_size > 20_000
        assert f"pythia-{size}" in page
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runs"]["pythia-410m"]["size"] == "410m"
    # The same files also render as a reference section next to a sweep.
    ref = render_report(str(tmp_path / "none"), tmp_path / "with-ref", pythia_evals=PYTHIA_EVALS)
    assert "Reference: pythia-evals" in ref.read_text()
    assert (tmp_path / "with-ref" / "evals-ref-70m.png").exists()
