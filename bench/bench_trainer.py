"""Trainer throughput on CPU, printed as JSON lines.

Per tiny preset: tokens/s of our training loop against a plain PyTorch loop on the same
model and batches (the ratio is the figure; target >= 0.9), the telemetry overhead
(instrumented step vs the same loop with the instability telemetry off; target < 5%),
and MFU where a device peak is known ($POLYPYTHIA_PEAK_FLOPS on CPU). Then the Ray
start-up overhead of one run (seconds from `run_training` to its first step).

    PYTHONPATH=operator:trainer_image python bench/bench_trainer.py [--steps N] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from polypythia import presets
from polypythia_trainer.config import RunConfig
from polypythia_trainer.loop import open_data, open_run_store
from polypythia_trainer.model import build_model, reference_loss
from polypythia_trainer.schedule import pythia_scheduler
from polypythia_trainer.telemetry import device_peak_flops, flops_per_token
from polypythia_trainer.trainer import Trainer

SEQ, GLOBAL, MICRO = 128, 16, 8


def run_config(size: str, store: str, steps: int, workers: int = 1) -> dict:
    preset = presets.get(size)
    return {
        "sweep": "bench",
        "run": f"bench-{size}",
        "weightSeed": 0,
        "dataSeed": 0,
        "model": preset.model_block(),
        "training": {
            "steps": steps,
            "globalBatchSize": GLOBAL,
            "microBatchSize": MICRO,
            "sequenceLength": SEQ,
            "learningRate": preset.learning_rate,
            "minLearningRate": preset.min_learning_rate,
            "warmupSteps": 1,
            "precision": "fp32",
            "strategy": "ddp",
            "workers": workers,
        },
        "data": {"format": "generated"},
        "checkpoints": {"steps": []},
        "telemetry": {"flushEvery": 25},
        "storage": {"uri": store},
        "runUri": store,
    }


def our_step(cfg: RunConfig, data, store, instrument: bool, work: Path):
    """One step of Trainer.train_step plus telemetry buffering (and its periodic flush)."""
    trainer = Trainer(
        cfg,
        data=data,
        store=store,
        device=torch.device("cpu"),
        work_dir=work,
        instrument=instrument,
    )
    return lambda i: trainer.buffer.add(trainer.train_step())


def plain_step(cfg: RunConfig, data):
    """One step of the textbook loop: same model, batches, AdamW, clipping and schedule."""
    t = cfg.training
    model = build_model(cfg.model, cfg.weight_seed)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        eps=t.adam_eps,
        weight_decay=t.weight_decay,
        foreach=True,
    )
    sched = pythia_scheduler(
        opt,
        peak=t.learning_rate,
        minimum=t.min_learning_rate,
        warmup_steps=t.warmup_steps,
        total_steps=t.steps,
    )

    def step(i: int) -> float:
        batch = torch.from_numpy(data.batch(i, t.global_batch_size))
        total = 0.0
        for chunk in batch.split(t.micro_batch_size):
            loss = reference_loss(model(chunk[:, :-1]).logits, chunk[:, 1:])
            (loss / t.accumulation_steps).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return total

    return step


def bench_preset(size: str, steps: int) -> dict:
    """Steps of the three loops taken in turn, so a busy neighbour slows all three alike."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = run_config(size, f"{tmp}/store", steps + 1)
        cfg = RunConfig.from_dict(raw)
        data = open_data(cfg, Path(os.environ.get("POLYPYTHIA_CACHE", Path(tmp) / "cache")))
        store = open_run_store(cfg)
        loops = {
            "plain": plain_step(cfg, data),
            "ours": our_step(cfg, data, store, True, Path(tmp) / "ours"),
            "bare": our_step(cfg, data, store, False, Path(tmp) / "bare"),
        }
        times: dict[str, list[float]] = {name: [] for name in loops}
        for i in range(steps + 1):
            for name, step in loops.items():
                t0 = time.perf_counter()
                step(i)
                if i:  # the first step of each warms up
                    times[name].append(time.perf_counter() - t0)
    tokens = GLOBAL * SEQ
    # The fastest step of each loop: neighbours on a shared machine only ever add time.
    plain_s, ours_s, bare_s = (min(times[n]) for n in ("plain", "ours", "bare"))
    peak = device_peak_flops(torch.device("cpu"))
    model = build_model(cfg.model, 0)
    fpt = flops_per_token(model.config, SEQ)
    return {
        "bench": "trainer_throughput",
        "size": size,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": tokens,
        "plain_tokens_per_s": round(tokens / plain_s, 1),
        "ours_tokens_per_s": round(tokens / ours_s, 1),
        "ratio": round(plain_s / ours_s, 3),
        "telemetry_overhead_pct": round(100 * (ours_s - bare_s) / bare_s, 2),
        "mfu": round(tokens / ours_s * fpt / peak, 5) if peak else None,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "median_ratio": round(
            statistics.median(times["plain"]) / statistics.median(times["ours"]), 3
        ),
    }


def bench_ray_startup(size: str) -> dict:
    from polypythia_trainer.launch import run_training

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_training(run_config(size, f"{tmp}/store", 3))
        wall = time.perf_counter() - t0
    return {
        "bench": "ray_startup",
        "size": size,
        "workers": 1,
        "status": summary["status"],
        "startup_s": round(summary["startup_s"], 2) if summary["startup_s"] else None,
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sizes", default="nano,micro")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray start-up figure")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        print(json.dumps(bench_preset(size, args.steps)), flush=True)
    if not args.no_ray:
        print(json.dumps(bench_ray_startup(args.sizes.split(",")[0])), flush=True)


if __name__ == "__main__":
    main()
