"""A branch that stops before its first checkpoint starts again from its parent; a branch
with `resetOptimizer` keeps the parent's schedule position and RNG but a fresh Adam.

User story: a branch's pod is killed a few steps in (nothing of its own saved yet); the
retry must still be the same continuation. And a researcher asking "is it the optimiser
state?" resets only the optimiser.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from trainer.trainer_helpers import nano_config

from polypythia.storage import RunStore
from polypythia_trainer.launch import run_local
from polypythia_trainer.loop import run_worker
from polypythia_trainer.schedule import pythia_lr

STEPS, START = 6, 4


def _records(uri: str) -> dict[int, dict]:
    return {r["step"]: r for r in RunStore.open(uri).read_telemetry()}


def _parent(tmp_path: Path) -> str:
    uri = str(tmp_path / "store" / "orig" / "orig-nano-s0")
    assert run_local(nano_config(tmp_path, steps=STEPS, runUri=uri))["status"] == "completed"
    return uri


def _branch(tmp_path: Path, parent: str, name: str, optimizer: str) -> dict:
    config = nano_config(tmp_path, steps=STEPS, runUri=str(tmp_path / "store" / "br" / name))
    config["run"] = name
    config["checkpoints"]["steps"] = [STEPS]
    config["branch"] = {"parent": parent, "step": START, "optimizer": optimizer}
    return config


def test_a_branch_stopped_before_its_first_checkpoint_branches_again(tmp_path: Path) -> None:
    parent = _parent(tmp_path)
    config = _branch(tmp_path, parent, "br-nano-s0", "restored")
    first = run_worker(copy.deepcopy(config), should_stop=lambda: True)
    assert first["status"] == "stopped" and first["step"] == START + 1
    assert RunStore.open(config["runUri"]).complete_checkpoints() == []

    assert run_local(config)["status"] == "completed"
    got, want = _records(config["runUri"]), _records(parent)
    assert sorted(got) == [5, 6]
    assert {r["attempt"] for r in got.values()} == {first["attempt"] + 1}
    assert {s: r["loss"] for s, r in got.items()} == {s: want[s]["loss"] for s in (5, 6)}


def test_reset_optimizer_keeps_the_schedule_and_starts_adam_afresh(tmp_path: Path) -> None:
    parent = _parent(tmp_path)
    config = _branch(tmp_path, parent, "br-nano-s0", "fresh")
    assert run_local(config)["status"] == "completed"
    got, want = _records(config["runUri"]), _records(parent)
    assert [got[s]["lr"] for s in (5, 6)] == [want[s]["lr"] for s in (5, 6)]
    assert got[5]["loss"] == want[5]["loss"], "same weights, same batch: same first loss"
    assert got[6]["loss"] != want[6]["loss"], "a fresh Adam takes another first update"
    state = torch.load(
        Path(config["runUri"]) / "checkpoints" / f"step{STEPS}" / "trainer_state" / "optimizer.pt",
        weights_only=False,
    )
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {STEPS - START}
    assert RunStore.open(config["runUri"]).read_run_config()["branch"]["optimizer"] == "fresh"


def test_a_restored_branch_runs_its_own_learning_rate_and_betas(tmp_path: Path) -> None:
    """The parent's optimiser state comes back, its saved settings do not: the learning
    rate and Adam's betas are the branch sweep's (docs/branching.md)."""
    parent = _parent(tmp_path)
    config = _branch(tmp_path, parent, "br-nano-s0", "restored")
    config["training"].update(learningRate=0.006, adamBeta2=0.99)
    assert run_local(config)["status"] == "completed"
    got = _records(config["runUri"])
    schedule = {"peak": 0.006, "minimum": 0.0003, "warmup_steps": 2, "total_steps": STEPS}
    assert [got[s]["lr"] for s in (5, 6)] == [pythia_lr(s - 1, **schedule) for s in (5, 6)]
    state = torch.load(
        Path(config["runUri"]) / "checkpoints" / f"step{STEPS}" / "trainer_state" / "optimizer.pt",
        weights_only=False,
    )["optimizer"]
    assert {tuple(g["betas"]) for g in state["param_groups"]} == {(0.9, 0.99)}
    assert {int(s["step"]) for s in state["state"].values()} == {STEPS}  # the parent's Adam
