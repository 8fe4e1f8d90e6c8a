"""GPU throughput of the trainer's model: tokens/s and MFU for Pythia 70m, 160m, 410m,
bf16 autocast, SDPA attention, torch.compile off and on. JSON lines on stdout.

Runs the same model, loss, optimiser and clipping as the trainer (one GPU, no data
loading: random tokens) so the figure is the model step itself. Needs an NVIDIA GPU:
without one it says so and exits 2.

    PYTHONPATH=operator:trainer_image python bench/gpu_throughput.py [--sizes 70m,160m,410m]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from polypythia import presets
from polypythia_trainer.config import ModelConfig, TrainingConfig
from polypythia_trainer.model import build_model, lm_loss
from polypythia_trainer.parallel import make_optimizer
from polypythia_trainer.telemetry import device_peak_flops, flops_per_token

SEQ = 2048


def bench(size: str, micro_batch: int, compiled: bool, steps: int, warmup: int) -> dict:
    preset = presets.get(size)
    device = torch.device("cuda", 0)
    model = build_model(ModelConfig.from_dict(preset.model_block()), weight_seed=0).to(device)
    training = TrainingConfig.from_dict(
        {
            "steps": steps,
            "globalBatchSize": micro_batch,
            "microBatchSize": micro_batch,
            "sequenceLength": SEQ,
            "learningRate": preset.learning_rate,
            "minLearningRate": preset.min_learning_rate,
            "gpusPerWorker": 1,
        }
    )
    opt = make_optimizer(model, training)
    forward = torch.compile(model) if compiled else model
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        batch = torch.randint(
            0, preset.vocab_size, (micro_batch, SEQ + 1), device=device, generator=gen
        )
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(batch[:, :-1]).logits
        loss, _, _ = lm_loss(logits, batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    tokens_per_s = micro_batch * SEQ / per_step
    peak = device_peak_flops(device)
    fpt = flops_per_token(model.config, SEQ)
    return {
        "bench": "gpu_throughput",
        "device": torch.cuda.get_device_name(device),
        "size": size,
        "precision": "bf16",
        "attention": model.config._attn_implementation,
        "compile": compiled,
        "micro_batch": micro_batch,
        "sequence_length": SEQ,
        "tokens_per_s": round(tokens_per_s),
        "mfu": round(tokens_per_s * fpt / peak, 4) if peak else None,
        "peak_flops": peak,
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="70m,160m,410m")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; run it on a machine with an NVIDIA GPU")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    for size in args.sizes.split(","):
        for compiled in (False, True):
            result = bench(size, args.micro_batch, compiled, args.steps, args.warmup)
            print(json.dumps(result), flush=True)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
