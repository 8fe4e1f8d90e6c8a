"""A resume after accepted config changes (`--allow-changes`) trains with the new values.

From the checkpoint: weights, Adam's moments and step counts, the schedule's position,
RNG and data cursor. From the new run.json (what run.json and history.json say ran):
learning rate, floor, warm-up, schedule length, perturbations, betas, eps, weight decay
and gradient clipping. A resume without changes stays bit for bit (test_trainer_loop).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch
from trainer_helpers import nano_config, run_group

from polypythia.storage import RunStore
from polypythia_trainer.checkpoint import STATE_DIR, optimizer_file, read_optimizer_states
from polypythia_trainer.config import RunConfig, TrainingConfig
from polypythia_trainer.launch import run_local
from polypythia_trainer.schedule import pythia_lr, shock

STEPS = 8
RESUME_AT = 4
CHECKPOINTS = {"steps": [0, RESUME_AT]}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the original recipe stopped right after its step-4 checkpoint."""
    store = tmp_path_factory.mktemp("stopped") / "run"
    stop = threading.Event()

    def on_progress(record: dict) -> None:
        if record["step"] >= RESUME_AT - 1:  # the next step is the last one started
            stop.set()

    summary = run_local(
        nano_config(store, steps=STEPS, checkpoints=CHECKPOINTS),
        stop_event=stop,
        on_progress=on_progress,
    )
    assert (summary["status"], summary["step"]) == ("stopped", RESUME_AT)
    return store


CHANGES = {
    "schedule": {"learningRate": 0.006, "minLearningRate": 0.0006, "warmupSteps": 3},
    "length": {"steps": 12},
    "perturbation": {"perturbations": [{"step": 6, "steps": 2, "learningRateFactor": 5.0}]},
    "adam": {
        "weightDecay": 0.05,
        "adamBeta1": 0.8,
        "adamBeta2": 0.99,
        "adamEps": 1e-6,
        "gradientClipping": 0.5,
    },
}


@pytest.mark.parametrize("name", CHANGES)
def test_a_resume_after_accepted_changes_trains_with_the_new_values(
    stopped: Path, tmp_path: Path, name: str
) -> None:
    store = tmp_path / "run"
    shutil.copytree(stopped, store)
    changes = {"steps": STEPS, **CHANGES[name]}
    config = nano_config(store, checkpoints=CHECKPOINTS, **changes)
    summary = run_local(config, allow_changes=True)
    training = RunConfig.from_dict(config).training
    assert (summary["status"], summary["resumed_from"]) == ("completed", RESUME_AT)
    assert summary["optimizer"] == "restored"
    run = RunStore.open(str(store))
    assert {c["field"].split(".")[-1] for c in run.read_history()} == {
        k.split(".")[-1] for k in CHANGES[name]
    }
    for r in resumed_records(run, training):
        assert r["clipped"] == (r["grad_norm"] > training.gradient_clipping)
    saved = torch.load(
        run.local_path(training.steps) / STATE_DIR / optimizer_file(None), weights_only=False
    )["optimizer"]
    assert_adam_follows(saved, training)


def rate(training: TrainingConfig, n: int) -> float:
    """The new schedule's rate after ``n`` applied updates."""
    perturbations = [p.as_dict() for p in training.perturbations]
    schedule = {
        "peak": training.learning_rate,
        "minimum": training.min_learning_rate,
        "warmup_steps": training.warmup_steps,
        "total_steps": training.steps,
    }
    return pythia_lr(n, **schedule) * shock(n + 1, perturbations)


def resumed_records(run: RunStore, training: TrainingConfig) -> list[dict]:
    """The resumed steps' telemetry, after checking each used the new schedule's rate."""
    resumed = [r for r in run.read_telemetry() if r["step"] > RESUME_AT]
    assert [r["step"] for r in resumed] == list(range(RESUME_AT + 1, training.steps + 1))
    assert [r["lr"] for r in resumed] == [rate(training, r["step"] - 1) for r in resumed]
    return resumed


def assert_adam_follows(saved: dict, training: TrainingConfig) -> None:
    """A torch AdamW state_dict: the new settings, and state carried from the checkpoint."""
    decay, no_decay = saved["param_groups"]
    for group, weight_decay in ((decay, training.weight_decay), (no_decay, 0.0)):
        assert group["lr"] == rate(training, training.steps)  # the next update's rate
        assert tuple(group["betas"]) == (training.adam_beta1, training.adam_beta2)
        assert group["eps"] == training.adam_eps
        assert group["weight_decay"] == weight_decay
    # Adam's step counts continue from the checkpoint's (its moments came back with them).
    assert {float(s["step"]) for s in saved["state"].values()} == {float(training.steps)}


def test_a_zero1_resume_takes_clipping_and_adam_settings_from_the_new_config(
    tmp_path: Path,
) -> None:
    """DeepSpeed's ZeRO wrapper also saves its gradient clipping and brings it back."""
    zero1 = {"strategy": "deepspeed", "zeroStage": 1, "checkpoints": CHECKPOINTS}
    run_group(nano_config(tmp_path, steps=RESUME_AT, **zero1), world_size=1)
    config = nano_config(tmp_path, steps=STEPS, **zero1, **CHANGES["adam"])
    run_group(config, world_size=1)  # a fresh process: DeepSpeed keeps its groups
    training = RunConfig.from_dict(config).training
    run = RunStore.open(str(tmp_path))
    resumed_records(run, training)
    (saved,) = read_optimizer_states(run.local_path(STEPS), 1, sharded=True)
    assert saved["optimizer"]["clip_grad"] == training.gradient_clipping
    assert_adam_follows(saved["optimizer"]["base_optimizer_state"], training)
