"""Two workers in a gloo group (torch.multiprocessing, no Ray): DDP and DeepSpeed ZeRO 0/1/2."""

from __future__ import annotations

import pytest
from trainer_helpers import losses, nano_config, run_group

from polypythia.storage import RunStore
from polypythia_trainer.loop import run_worker

STEPS = 4
FAST = {"steps": STEPS, "checkpoints": {"steps": [0, 2]}}


@pytest.fixture(scope="module")
def ddp_two_workers(tmp_path_factory) -> list[float]:
    store = tmp_path_factory.mktemp("ddp")
    run_group(nano_config(store, workers=2, **FAST))
    return losses(str(store))


def test_ddp_two_workers_match_one_worker(ddp_two_workers, tmp_path) -> None:
    """Same global batch split over two workers: the same losses up to float rounding."""
    run_worker(nano_config(tmp_path, **FAST))
    assert len(ddp_two_workers) == STEPS
    assert losses(str(tmp_path)) == pytest.approx(ddp_two_workers, rel=1e-5)


def test_deepspeed_zero0_matches_ddp(ddp_two_workers, tmp_path) -> None:
    run_group(nano_config(tmp_path, workers=2, strategy="deepspeed", zeroStage=0, **FAST))
    assert losses(str(tmp_path)) == pytest.approx(ddp_two_workers, rel=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_train_and_resume(ddp_two_workers, tmp_path, stage: int) -> None:
    """ZeRO 1/2 shard the optimiser; each shard is saved, and a restart resumes from them."""
    cfg = nano_config(tmp_path, workers=2, strategy="deepspeed", zeroStage=stage, **FAST)
    run_group(cfg)
    got = losses(str(tmp_path))
    assert got == pytest.approx(ddp_two_workers, rel=1e-4)
    run = RunStore.open(str(tmp_path))
    state = run.local_path(2) / "trainer_state"
    assert sorted(p.name for p in state.glob("optimizer*")) == [
        "optimizer.rank0.pt",
        "optimizer.rank1.pt",
    ]
    # Roll back: drop the final checkpoint, so a restart resumes from step 2's shards.
    run.delete_checkpoint(STEPS)
    run_group(cfg)
    assert losses(str(tmp_path)) == got  # exact: the same arithmetic from restored state
    assert run.next_attempt() == 2
