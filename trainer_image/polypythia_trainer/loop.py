"""One worker's whole life: open storage and data, build the Trainer, train, close.

The same function runs inside a Ray Train worker (`launch.py`), in-process for a
single worker (`polypythia train --no-ray`), and in the tests' torch.multiprocessing
groups; the process group, if any, is set up by the caller.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from polypythia_trainer.config import RunConfig

CACHE_ENV = "POLYPYTHIA_CACHE"


def cache_dir() -> Path:
    """Where datasets are cached and checkpoints staged: $POLYPYTHIA_CACHE or ~/.cache/polypythia."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "polypythia")


def open_run_store(cfg: RunConfig):
    """The run's storage; calls ride out outages of $POLYPYTHIA_STORAGE_RETRY_S (300 s)."""
    from polypythia.storage import RunStore
    from polypythia.storage.retry import retry_seconds

    return RunStore.open(cfg.run_uri, retry_s=retry_seconds(), **cfg.storage.connection())


def open_data(cfg: RunConfig, root: Path):
    from polypythia_trainer.data import open_training_data

    return open_training_data(
        cfg.data,
        sequence_length=cfg.training.sequence_length,
        vocab_size=cfg.model.vocab_size,
        data_seed=cfg.data_seed,
        cache_dir=root / "data",
        train_iters=cfg.training.steps,
        global_batch_size=cfg.training.global_batch_size,
        storage=cfg.storage.connection(),
    )


def run_worker(
    config: dict,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_record: Callable[[dict], None] | None = None,
    instrument: bool = True,
    lease_token: str | None = None,
) -> dict:
    """Train ``config`` on this rank until done or stopped; return the run summary.

    ``lease_token``: the run's lease the launcher took; checked before each commit.
    """
    from polypythia_trainer.trainer import Trainer

    cfg = RunConfig.from_dict(config)
    device = device or torch.device("cpu")
    root = cache_dir()
    work_dir = root / "runs" / cfg.sweep / cfg.run / f"rank{rank}"
    work_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        cfg,
        data=open_data(cfg, root),
        store=open_run_store(cfg),
        device=device,
        rank=rank,
        world_size=world_size,
        work_dir=work_dir,
        instrument=instrument,
        on_record=on_record,
        lease_token=lease_token,
    )
    try:
        return trainer.train(should_stop)
    finally:
        trainer.close()
