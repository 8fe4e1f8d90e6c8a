"""Shared builders for the trainer tests: tiny run configs, process groups, telemetry."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

NANO_MODEL = {
    "numLayers": 2,
    "hiddenSize": 64,
    "numHeads": 4,
    "intermediateSize": 256,
    "vocabSize": 1024,
    "maxPositionEmbeddings": 256,
    "rotaryPct": 0.25,
    "rotaryEmbBase": 10000,
    "parallelResidual": True,
    "tieWordEmbeddings": False,
    "zLoss": 0.0,
    "qkLayerNorm": False,
}


def nano_config(store: Path | str, *, steps: int = 6, seed: int = 0, **overrides) -> dict:
    """A resolved run config for the nano preset, small enough for a test.

    ``overrides`` update the `training` block, except the keys `model`, `checkpoints`,
    `weightSeed`, `dataSeed`, `data`, `storage` which replace/merge their blocks.
    """
    store = str(store)
    cfg = {
        "apiVersion": "polypythia.io/v1alpha1",
        "sweep": "t",
        "namespace": "default",
        "run": f"t-nano-s{seed}",
        "size": "nano",
        "seed": seed,
        "weightSeed": seed,
        "dataSeed": seed,
        "init": {"strategy": "pythia"},
        "model": copy.deepcopy(NANO_MODEL),
        "training": {
            "steps": steps,
            "globalBatchSize": 8,
            "microBatchSize": 2,
            "sequenceLength": 32,
            "learningRate": 0.003,
            "minLearningRate": 0.0003,
            "warmupSteps": 2,
            "adamBeta1": 0.9,
            "adamBeta2": 0.95,
            "adamEps": 1e-8,
            "weightDecay": 0.01,
            "gradientClipping": 1.0,
            "precision": "fp32",
            "strategy": "ddp",
            "zeroStage": 0,
            "workers": 1,
            "gpusPerWorker": 0,
            "cpusPerWorker": 1,
        },
        "data": {"format": "generated", "path": None, "tokenizer": None, "skipBatches": []},
        "checkpoints": {"steps": [0, 1, 2, 4], "resumeEvery": None, "keepResume": 2},
        "telemetry": {"flushEvery": 2},
        "storage": {"uri": store, "endpoint": None, "secure": True, "region": "us-east-1"},
        "runUri": store,
    }
    for key in ("model", "checkpoints", "storage", "data"):
        if key in overrides:
            cfg[key].update(overrides.pop(key))
    for key in ("weightSeed", "dataSeed", "runUri"):
        if key in overrides:
            cfg[key] = overrides.pop(key)
    cfg["training"].update(overrides)
    return cfg


def losses(store_uri: str, **store_kwargs) -> list[float]:
    """The run's loss history as storage readers see it (highest attempt per step)."""
    from polypythia.storage import RunStore

    return [r["loss"] for r in RunStore.open(store_uri, **store_kwargs).read_telemetry()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _group_worker(rank: int, world_size: int, port: int, config: dict, cache: str) -> None:
    os.environ["POLYPYTHIA_CACHE"] = cache
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        from polypythia_trainer.loop import run_worker

        run_worker(config, rank=rank, world_size=world_size)
    finally:
        torch.distributed.destroy_process_group()


def run_group(config: dict, world_size: int = 2) -> None:
    """Train ``config`` in a gloo group of ``world_size`` spawned processes (no Ray)."""
    mp.spawn(
        _group_worker,
        args=(world_size, free_port(), config, os.environ["POLYPYTHIA_CACHE"]),
        nprocs=world_size,
        join=True,
    )
