"""`checkpoints.optimizerState: latest` in a real training run: analysis checkpoints lose
their optimiser state once a newer checkpoint is complete, a resume still continues bit for
bit, and a rewind to a checkpoint without it restarts Adam and says so."""

from __future__ import annotations

from trainer_helpers import losses, nano_config

from polypythia import estimate
from polypythia.storage import RunStore
from polypythia_trainer import checkpoint as ckpt
from polypythia_trainer.loop import run_worker

STEPS = 8
PLANNED = [0, 2, 4, 8]
OPTIMIZER = "trainer_state/optimizer.pt"
SPIKE = {"signal": "loss", "onsetStep": 5, "magnitude": 8.0, "attempt": 0}


def _config(uri, policy: str):
    return nano_config(uri, steps=STEPS, checkpoints={"steps": PLANNED, "optimizerState": policy})


def _has_optimizer(store: RunStore, step: int) -> bool:
    return store.store.exists(store.checkpoint_key(step, OPTIMIZER))


def test_latest_keeps_optimizer_state_on_the_newest_checkpoint_only(tmp_path) -> None:
    every, latest = str(tmp_path / "all"), str(tmp_path / "latest")
    run_worker(_config(every, "all"))
    run_worker(_config(latest, "latest"))
    kept_all, kept_latest = RunStore.open(every), RunStore.open(latest)
    assert kept_latest.complete_checkpoints() == kept_all.complete_checkpoints() == PLANNED
    assert [_has_optimizer(kept_all, s) for s in PLANNED] == [True] * 4
    assert [_has_optimizer(kept_latest, s) for s in PLANNED] == [False, False, False, True]
    for step in PLANNED:
        kept_latest.verify_checkpoint(step)  # sound, with their manifests rewritten
    assert losses(latest) == losses(every)  # dropping files never touches training
    # Measured: the bytes saved are the three dropped optimiser files (the same files the
    # `all` run keeps). After the first update each is the estimate's optimiser bytes per
    # checkpoint (fp32 DDP: 8 bytes of Adam moments per parameter) plus torch's pickle
    # framing; at step 0 Adam has no moments yet (torch creates them lazily).
    dropped = [d for s in PLANNED[:3] for d in kept_latest.read_manifest(s)["dropped"]]
    assert [d["path"] for d in dropped] == [OPTIMIZER] * 3
    assert [d["size"] for d in dropped] == [
        kept_all.store.size(kept_all.checkpoint_key(s, OPTIMIZER)) for s in PLANNED[:3]
    ]
    params = estimate.parameter_count(_config(latest, "latest")["model"])
    _, per_parameter = estimate.checkpoint_bytes_per_parameter(
        {"strategy": "ddp", "precision": "fp32", "gpusPerWorker": 0}
    )
    step0, step2, step4 = (d["size"] for d in dropped)
    assert step0 < 0.01 * params * per_parameter
    for size in (step2, step4):
        assert params * per_parameter <= size < 1.02 * params * per_parameter


def test_resume_from_the_newest_restores_the_optimizer_bit_for_bit(tmp_path) -> None:
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    run_worker(_config(whole, "latest"))
    calls = iter(range(10**9))
    run_worker(_config(resumed, "latest"), should_stop=lambda: next(calls) >= 5)
    store = RunStore.open(resumed)
    assert store.complete_checkpoints() == [0, 2, 4]
    assert [_has_optimizer(store, s) for s in (0, 2, 4)] == [False, False, True]
    summary = run_worker(_config(resumed, "latest"))
    assert summary["resumed_from"] == 4 and summary["optimizer"] == "restored"
    assert losses(resumed) == losses(whole)
    assert store.read_optimizer_restarts() == []


def test_a_rewind_to_a_checkpoint_without_optimizer_state_restarts_adam_and_records_it(
    tmp_path,
) -> None:
    uri = str(tmp_path / "run")
    run_worker(_config(uri, "latest"))
    store = RunStore.open(uri)
    reference = losses(uri)
    store.record_rewind(2, (3, 4), SPIKE)
    summary = run_worker(_config(uri, "latest"))
    assert summary["status"] == "completed" and summary["resumed_from"] == 2
    assert summary["optimizer"] == "fresh"
    (restart,) = store.read_optimizer_restarts()
    assert (restart["step"], restart["attempt"]) == (2, 1)
    assert "holds no optimiser state" in restart["reason"]
    state = ckpt.read_state(store.local_path(STEPS))
    assert state["attempt"] == 1
    got = losses(uri)
    assert got[:2] == reference[:2] and len(got) == STEPS
    # The new timeline's newest checkpoint keeps its optimiser state again.
    assert [_has_optimizer(store, s) for s in PLANNED] == [False, False, False, True]
