"""A synthetic sweep with everything the report must show, written with RunStore (no Ray):
five seeds of one size with a planted seed-specific spike, a spike shared by every run, an
outlier seed and a rewound seed, a run branched from a seed, and a size whose run failed."""

from __future__ import annotations

import math
from pathlib import Path

REPORT_STEPS = 300
REPORT_EVAL_STEPS = list(range(0, REPORT_STEPS + 1, 30))
SPIKE_RUN, SPIKE_STEP = "sw-micro-s1", 200  # seed 1: loss jumps by 3 for 3 steps, recovers
COMMON_STEP = 250  # every seed: a shared jump (a schedule or system shock, orders differ)
OUTLIER_RUN = "sw-micro-s3"  # seed 3: its score falls to 0.3 from step 150
REWIND_RUN, REWIND_STEP = "sw-micro-s4", 100  # seed 4 was rewound to step 100
BRANCH_RUN, BRANCH_STEP = "sw-micro-s1-b190", 190  # branched from seed 1 before its spike


def _lr(step: int) -> float:
    warm = 30
    if step <= warm:
        return 1e-3 * step / warm
    return 1e-4 + 0.45e-3 * (1 + math.cos(math.pi * (step - warm) / (REPORT_STEPS - warm)))


def _train_loss(seed: int, step: int, rng, spike: bool = True) -> float:
    loss = 2.0 + 5.0 * math.exp(-step / 60) + rng.normal(0, 0.02)
    if spike and seed == 1 and SPIKE_STEP <= step < SPIKE_STEP + 3:
        loss += 3.0
    if COMMON_STEP <= step < COMMON_STEP + 2:
        loss += 1.5
    return loss


def _report_weights(seed: int, step: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed * 1000 + step)
    scale = 0.02 * (1 + step / 100)
    if seed == 3 and step >= 150:  # the outlier's weights drift off
        scale *= 4
    return {
        "gpt_neox.embed_in.weight": torch.randn(64, 16, generator=g) * scale,
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": torch.randn(32, 16, generator=g) * scale,
    }


def report_eval(seed: int, step: int) -> dict:
    """One evaluation file: a score, per-item predictions, weight statistics, held-out loss."""
    from polypythia_eval.weightstats import StatsConfig, weight_statistics

    acc = 0.5 + 0.4 * step / REPORT_STEPS + 0.01 * seed
    if seed == 3 and step >= 150:
        acc = 0.3
    preds = [int((i * (seed + 1) + step) % 3 == 0) for i in range(20)]
    stats = weight_statistics(_report_weights(seed, step), StatsConfig(fit_sample_size=2000))
    return {
        "results": {"pp_cloze": {"alias": "pp_cloze", "acc,none": acc, "acc_stderr,none": 0.01}},
        "versions": {"pp_cloze": 1.0},
        "predictions": {"pp_cloze": {"doc_id": list(range(20)), "pred": preds}},
        "weight_stats": stats,
        "validation": {"loss": 6.0 - step / 100 + 0.01 * seed, "tokens": 4096, "dataset": "d1"},
    }


def _config(name: str, seed: int, **extra) -> dict:
    return {"sweep": "sw", "run": name, "size": "micro", "seed": seed, "dataSeed": seed,
            "training": {"steps": REPORT_STEPS}, **extra}  # fmt: skip


def _records(seed: int, steps, rng, spike: bool = True) -> list[dict]:
    return [
        {"step": s, "loss": _train_loss(seed, s, rng, spike), "lr": _lr(s),
         "grad_norm": 1.0 + rng.normal(0, 0.01)}
        for s in steps
    ]  # fmt: skip


def write_restart_checkpoint(store, step: int, staging: Path) -> None:
    """The complete checkpoint a rewind restarts from (choosing it pins it, so it must exist)."""
    folder = staging / f"step{step}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"stand-in weights")
    store.commit_checkpoint(step, folder, attempt=0)


def write_report_sweep(root: Path, evals: dict[tuple[int, int], dict] | None = None) -> Path:
    """Five seeds of one size (spike, shared spike, outlier, rewind), a branched run, and a
    second size whose only run failed. ``evals`` caches evaluation files between calls."""
    import numpy as np

    from polypythia.storage import RunStore

    evals = {} if evals is None else evals
    for seed in range(5):
        name = f"sw-micro-s{seed}"
        store = RunStore.open(str(root / name))
        store.write_run_config(_config(name, seed))
        rng = np.random.default_rng(seed)
        if name == REWIND_RUN:
            store.append_telemetry(_records(seed, range(1, 131), rng), attempt=0)
            write_restart_checkpoint(store, REWIND_STEP, root.parent / f"{root.name}-staging")
            spike = {"signal": "loss", "onsetStep": 120, "attempt": 0}
            store.record_rewind(REWIND_STEP, (REWIND_STEP, REWIND_STEP + 20), spike)
            store.append_telemetry(_records(seed, range(101, REPORT_STEPS + 1), rng), attempt=1)
        else:
            store.append_telemetry(_records(seed, range(1, REPORT_STEPS + 1), rng), attempt=0)
        for step in REPORT_EVAL_STEPS:
            if (seed, step) not in evals:
                evals[(seed, step)] = report_eval(seed, step)
            store.write_eval(step, evals[(seed, step)])
    branch = RunStore.open(str(root / BRANCH_RUN))
    branch.write_run_config(
        _config(BRANCH_RUN, 1, branch={"parent": f"s3://bucket/sweeps/sw/{SPIKE_RUN}",
                                       "step": BRANCH_STEP, "checksum": "sha256:" + "ab" * 32,
                                       "optimizer": "fresh"})
    )  # fmt: skip
    rng = np.random.default_rng(11)
    branch.append_telemetry(_records(1, range(BRANCH_STEP + 1, REPORT_STEPS + 1), rng, False), 0)
    RunStore.open(str(root / "sw-nano-s0")).write_run_config(
        {"sweep": "sw", "run": "sw-nano-s0", "size": "nano", "seed": 0}
    )
    return root
