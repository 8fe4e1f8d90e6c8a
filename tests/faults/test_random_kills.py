"""SIGKILL the trainer at seeded random points (after a step, or inside a checkpoint write
after its files but before COMPLETE), rerun it each time, and compare with a run never
disturbed: the same losses for every step exactly once, the same checkpoints, the same
final weights, no lease left behind.

Each kill is a real SIGKILL of the training process (no handler runs, buffered telemetry
is lost), delivered by the process itself at the chosen point so the point is exact. The
undisturbed run trains in a child process like the others, all with one intra-op thread:
a CPU reduction's bits depend on the thread count, and the pytest process's count depends
on what ran before it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import losses, nano_config

from polypythia.storage import RunStore
from polypythia.storage.lease import LEASE
from polypythia.storage.verify import sound_checkpoints

STEPS = 12
CHECKPOINTS = {"steps": [0, 6, STEPS], "resumeEvery": 2, "keepResume": 2}
SEED = 20261209  # a seed whose plan kills inside the planned step-6 checkpoint too
ROOT = Path(__file__).resolve().parents[2]

# The child: train once, SIGKILL itself at the point named on the command line.
CHILD = """
import json, os, signal, sys
from polypythia.storage import layout
from polypythia_trainer.launch import run_local

config, kind, at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if kind == "checkpoint":
    write_json = layout.RunStore._write_json
    def _write_json(self, rel, obj):
        if rel == f"checkpoints/step{at}/{layout.COMPLETE}":
            die()  # files written, COMPLETE not: the checkpoint must stay invisible
        write_json(self, rel, obj)
    layout.RunStore._write_json = _write_json
on_progress = (lambda r: r["step"] == at and die()) if kind == "step" else None
print(json.dumps(run_local(config, on_progress=on_progress)))
"""


def kill_plan(seed: int) -> list[tuple[str, int]]:
    """Three kills at increasing steps, each after a step or inside a checkpoint write
    (resume checkpoints are every 2 steps, so even steps have one)."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, STEPS), 3))
    plan = []
    for step in steps:
        kind = rng.choice(["step", "checkpoint"]) if step % 2 == 0 else "step"
        plan.append((kind, step))
    return plan


def train_child(config: dict, kind: str, at: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("operator", "trainer_image", "eval_image")
        ),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config), kind, str(at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def final_weights(run_uri: str, tmp: Path) -> dict[str, torch.Tensor]:
    folder = RunStore.open(run_uri).fetch_checkpoint(STEPS, tmp)
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[float], list[int], dict]:
    store = tmp_path_factory.mktemp("undisturbed") / "run"
    result = train_child(nano_config(store, steps=STEPS, checkpoints=CHECKPOINTS), "step", 0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "completed"
    run = RunStore.open(str(store))
    return (
        losses(str(store)),
        run.complete_checkpoints(),
        final_weights(str(store), store.parent / "w"),
    )


def test_the_kill_plan_is_seeded_and_hits_steps_and_checkpoint_writes() -> None:
    assert kill_plan(SEED) == kill_plan(SEED)
    assert {kind for kind, _ in kill_plan(SEED)} == {"step", "checkpoint"}
    plans = [kill_plan(seed) for seed in range(50)]
    assert all([s for _, s in plan] == sorted({s for _, s in plan}) for plan in plans)


@pytest.mark.slow
@pytest.mark.fault_suite
def test_random_kills_lose_and_double_nothing(run_uri: str, tmp_path: Path, reference) -> None:
    expected_losses, expected_checkpoints, expected_weights = reference
    config = nano_config(run_uri, steps=STEPS, checkpoints=CHECKPOINTS)
    plan = kill_plan(SEED)
    for kind, at in plan:
        result = train_child(config, kind, at)
        assert result.returncode == -signal.SIGKILL, (
            f"{kind} kill at {at} did not happen: rc {result.returncode}\n{result.stderr[-3000:]}"
        )
        run = RunStore.open(run_uri)
        assert run.store.exists(run.key(LEASE))  # the dead trainer's lease stayed behind
        if kind == "checkpoint":
            assert at not in run.complete_checkpoints()  # files without COMPLETE: invisible
    result = train_child(config, "step", STEPS + 1)  # the rerun that is left alone
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["attempt"] == len(plan)

    run = RunStore.open(run_uri)
    records = run.read_telemetry()
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # each step once
    assert [r["loss"] for r in records] == expected_losses  # bit-identical to undisturbed
    assert run.complete_checkpoints() == expected_checkpoints
    checked = sound_checkpoints(run)
    assert checked.damaged == {} and checked.sound == expected_checkpoints
    got = final_weights(run_uri, tmp_path / "w")
    assert all(torch.equal(got[k], expected_weights[k]) for k in expected_weights)
    assert not run.store.exists(run.key(LEASE))  # the last trainer released it
