"""A damaged newest checkpoint costs steps, never the run: the trainer quarantines it,
resumes from the newest sound one and ends with exactly the losses and weights of a run
that was never disturbed. A second trainer on a run is refused naming the holder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import losses, nano_config

from polypythia.storage import COMPLETE, LeaseHeld, RunLease, RunStore
from polypythia_trainer.launch import run_local

STEPS = 8
CHECKPOINTS = {"steps": [0, 4, STEPS], "resumeEvery": 2, "keepResume": 4}


def train(store: Path) -> dict:
    return run_local(nano_config(store, steps=STEPS, checkpoints=CHECKPOINTS))


def weights(store: Path) -> dict[str, torch.Tensor]:
    return load_file(store / "checkpoints" / f"step{STEPS}" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], dict]:
    store = tmp_path_factory.mktemp("reference") / "run"
    assert train(store)["status"] == "completed"
    return losses(str(store)), weights(store)


def crash_back_to(store: Path, step: int) -> None:
    """What a crash right after ``step``'s checkpoint leaves: later checkpoints gone."""
    run = RunStore.open(str(store))
    for later in [s for s in run.complete_checkpoints() if s > step]:
        run.delete_checkpoint(later)


@pytest.mark.parametrize("rel", ["trainer_state/optimizer.pt", "model.safetensors"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, reference, rel: str, capsys: pytest.CaptureFixture
) -> None:
    expected_losses, expected_weights = reference
    store = tmp_path / "run"
    train(store)
    crash_back_to(store, 6)
    damaged = store / "checkpoints" / "step6" / rel
    damaged.write_bytes(damaged.read_bytes()[:100])  # a disk that lost the tail

    summary = train(store)
    assert summary["status"] == "completed" and summary["resumed_from"] == 4
    assert "step4" in capsys.readouterr().out
    assert losses(str(store)) == expected_losses
    got = weights(store)
    assert all(torch.equal(got[k], expected_weights[k]) for k in expected_weights)
    quarantined = list((store / "quarantine").glob(f"step6-*/{rel}"))
    assert len(quarantined) == 1  # kept for a post-mortem, not deleted


def test_a_crash_inside_a_checkpoint_write_is_invisible(tmp_path: Path, reference) -> None:
    store = tmp_path / "run"
    train(store)
    crash_back_to(store, 4)
    # Killed half way through writing step 6: files there, COMPLETE never written.
    partial = store / "checkpoints" / "step6"
    shutil.copytree(store / "checkpoints" / "step4", partial)
    (partial / COMPLETE).unlink()
    (partial / "model.safetensors").write_bytes(b"half")
    summary = train(store)
    assert summary["resumed_from"] == 4
    assert losses(str(store)) == reference[0]


def test_a_second_trainer_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "run"
    holder = RunLease(RunStore.open(str(store)), owner="polypythia train (first)")
    holder.acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"polypythia train \(first\)"):
            train(store)
        assert RunStore.open(str(store)).complete_checkpoints() == []
    finally:
        holder.release()
