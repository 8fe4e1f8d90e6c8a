"""A small sweep folder written through the storage contract, without Ray or a trainer:
6 seeds of one size, telemetry in several chunks per run, evaluations at 5 checkpoints.

Planted, so commands run on it have something to find: seed 2 spikes (loss and gradient
norm) for 3 steps from step ``SPIKE_STEP``; seed 4's held-out loss and cloze accuracy
fall behind the other seeds' from step ``OUTLIER_FROM`` on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from polypythia.storage import RunStore

SWEEP = "fx"
SIZE = "nano"
SEEDS = tuple(range(6))
STEPS = 120
CHUNK = 20
CHECKPOINTS = (0, 30, 60, 90, 120)
SPIKE_SEED, SPIKE_STEP = 2, 80
OUTLIER_SEED, OUTLIER_FROM = 4, 30


def run_name(seed: int) -> str:
    return f"{SWEEP}-{SIZE}-s{seed}"


def _telemetry(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for step in range(1, STEPS + 1):
        loss = 3.0 + 4.0 * math.exp(-step / 25) + rng.normal(0, 0.01)
        grad = 1.0 + rng.normal(0, 0.02)
        if seed == SPIKE_SEED and SPIKE_STEP <= step < SPIKE_STEP + 3:
            loss, grad = loss + 3.0, grad * 20
        out.append({"step": step, "loss": loss, "grad_norm": grad, "attempt": 0})
    return out


def _evaluation(seed: int, step: int) -> dict:
    behind = seed == OUTLIER_SEED and step >= OUTLIER_FROM
    held_out = 7.0 - 3.0 * step / STEPS + 0.01 * seed + (1.0 if behind else 0.0)
    accuracy = 0.3 + 0.5 * step / STEPS + 0.005 * seed - (0.25 if behind else 0.0)
    return {
        "results": {"pp_cloze": {"alias": "pp_cloze", "acc,none": accuracy}},
        "versions": {"pp_cloze": 1.0},
        "validation": {"loss": held_out, "tokens": 4096, "dataset": "fixture0000000000"},
    }


def write_sweep(root: Path) -> Path:
    """The sweep folder ``root/fx`` (``STORE/SWEEP`` in the docs' commands)."""
    write_sweep_at(str(root))
    return root / SWEEP


def write_sweep_at(storage_uri: str, **store_kwargs) -> str:
    """The sweep under any storage URI (a folder or s3://bucket/prefix); returns its URI."""
    sweep = f"{storage_uri.rstrip('/')}/{SWEEP}"
    for seed in SEEDS:
        name = run_name(seed)
        store = RunStore.open(f"{sweep}/{name}", **store_kwargs)
        store.write_run_config(
            {
                "sweep": SWEEP,
                "run": name,
                "size": SIZE,
                "seed": seed,
                "dataSeed": seed,
                "weightSeed": seed,
                "init": {"strategy": "pythia", "name": None, "reference": None},
                "training": {"steps": STEPS},
                "checkpoints": {"steps": list(CHECKPOINTS)},
            }
        )
        records = _telemetry(seed)
        for first in range(0, STEPS, CHUNK):
            store.append_telemetry(records[first : first + CHUNK], attempt=0)
        for step in CHECKPOINTS:
            store.write_eval(step, _evaluation(seed, step))
    return sweep
