"""A branch from a Hugging Face GPT-NeoX folder without optimiser state (issue #19).

User story: a researcher has a published revision (`save_pretrained` output: config.json
and model.safetensors, no optimiser) and branches it at its step. The run starts from
those weights at that step, with a fresh optimiser at the schedule position of the step,
and says so in run.json.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import yaml

from polypythia import planner, presets
from polypythia.spec import sweep_from_object
from polypythia.storage import RunStore
from support.sweeps import sweep_object

STEPS, START = 40, 30


def _hf_folder(folder: Path) -> torch.nn.Module:
    """What a user downloads: transformers' own GPT-NeoX, saved by transformers."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    nano = presets.get("nano").model_block()
    torch.manual_seed(11)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            num_hidden_layers=nano["numLayers"],
            hidden_size=nano["hiddenSize"],
            num_attention_heads=nano["numHeads"],
            intermediate_size=nano["intermediateSize"],
            vocab_size=nano["vocabSize"],
            max_position_embeddings=nano["maxPositionEmbeddings"],
            rotary_pct=0.25,
            hidden_act="gelu_pytorch_tanh",
        )
    )
    model.save_pretrained(folder)
    return model.eval()


def test_branch_from_a_saved_hf_folder_starts_fresh_at_the_schedule_position(
    tmp_path: Path, monkeypatch
) -> None:
    from polypythia_trainer.config import RunConfig
    from polypythia_trainer.launch import run_local
    from polypythia_trainer.loop import open_data

    monkeypatch.setenv("POLYPYTHIA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pythia-nano" / f"step{START}"
    hf_model = _hf_folder(folder)
    doc = sweep_object(
        "hf",
        {
            "sizes": ["nano"],
            "seeds": {"list": [2], "axis": "data"},
            "training": {"steps": STEPS, "globalBatchSize": 8, "sequenceLength": 32},
            "data": {"format": "generated"},
            "checkpoints": {"schedule": "list", "steps": [STEPS]},
            "evaluation": {"schedule": "none"},
            "branch": {"from": {"uri": str(folder), "step": START}},
        },
    )
    sweep = sweep_from_object(yaml.safe_load(yaml.safe_dump(doc)))
    config = planner.plan_sweep(sweep, base_uri=str(tmp_path / "store"))[0].config

    summary = run_local(config)

    assert summary["status"] == "completed"
    run = RunStore.open(config["runUri"])
    records = {r["step"]: r for r in run.read_telemetry()}
    assert sorted(records) == list(range(START + 1, STEPS + 1))
    # The first update uses the rate after START scheduler steps (GPT-NeoX AnnealingLR).
    peak, warmup = presets.get("nano").learning_rate, 0.01 * STEPS
    rate = peak / 2 * (math.cos(math.pi * (START - warmup) / STEPS) + 1)
    assert records[START + 1]["lr"] == rate
    # ... on the folder's weights: step 31's loss is the HF model's on batch 30 of seed 2.
    cfg = RunConfig.from_dict(config)
    batch = torch.from_numpy(open_data(cfg, tmp_path / "cache").batch(START, 8))
    with torch.no_grad():
        logits = hf_model(batch[:, :-1]).logits
    want = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    assert abs(records[START + 1]["loss"] - float(want)) < 1e-4
    # A fresh Adam: its step count at the end is the branch's updates, not the step number.
    optimizer = torch.load(
        Path(config["runUri"]) / "checkpoints" / f"step{STEPS}" / "trainer_state" / "optimizer.pt",
        weights_only=False,
    )
    adam = optimizer["optimizer"]["state"].values()
    assert {int(s["step"]) for s in adam} == {STEPS - START}

    stored = run.read_run_config()["branch"]
    listing = "".join(
        f"{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(folder.iterdir())
    )
    assert stored == {
        "parent": str(folder),
        "step": START,
        "checksum": "sha256:" + hashlib.sha256(listing.encode()).hexdigest(),
        "optimizer": "fresh",
    }
