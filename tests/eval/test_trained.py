"""The real trainer's checkpoint (planner -> trainer, no Ray) evaluated by the real harness."""

from __future__ import annotations

import json

import pytest

from polypythia import cli
from polypythia.planner import plan_sweep
from polypythia.spec import sweep_from_object
from support.sweeps import sweep_object

SWEEP = sweep_object(
    "ev",
    {
        "sizes": ["nano"],
        "seeds": {"list": [0]},
        "training": {"steps": 30, "globalBatchSize": 8, "sequenceLength": 64},
        "data": {"format": "generated"},
        "checkpoints": {"schedule": "pythia", "count": 2},
        "resources": {"default": {"workers": 1, "cpusPerWorker": 1}},
    },
)


@pytest.mark.slow
def test_a_trained_checkpoint_evaluates(tmp_path, monkeypatch, capsys):
    from polypythia_trainer.launch import run_local

    monkeypatch.setenv("POLYPYTHIA_CACHE", str(tmp_path / "cache"))
    config = plan_sweep(sweep_from_object(SWEEP), base_uri=str(tmp_path / "store"))[0].config
    run_local(config)
    argv = ["evaluate", config["runUri"], "--steps", "latest", "--limit", "10", "--pairs", "20",
            "--cloze-items", "20"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "evaluated 1, skipped 0, failed 0" in capsys.readouterr().out
    result = json.loads(
        (tmp_path / "store" / "ev" / "ev-nano-s0" / "evals" / "step30.json").read_text()
    )
    assert set(result["results"]) == {
        "pp_subject_verb_agreement", "pp_anaphor_gender_agreement", "pp_cloze"
    }  # fmt: skip
    assert result["polypythia"]["size"] == "nano" and result["polypythia"]["seed"] == 0
    # Trained weights are no longer the initial Gaussian: statistics are finite and recorded.
    emb = result["weight_stats"]["kinds"]["embedding"]
    assert emb["numel"] == 1024 * 64 and emb["kurtosis"] is not None
    qkv = result["weight_stats"]["tensors"]["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert qkv["fit"]["best"] in ("gaussian", "logistic", "student_t")
    assert result["weight_stats"]["kinds"]["attn_qkv"]["nu"]["tensors"] >= 1
    held = result["validation"]  # the demo corpus's held-out documents
    assert held["tokens"] > 1000 and 0 < held["loss"] < 8 and len(held["dataset"]) == 16
