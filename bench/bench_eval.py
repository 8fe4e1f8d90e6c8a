"""Evaluation benchmarks, one JSON line each: weight statistics of a 70m-shaped checkpoint
on CPU, and lm-eval (offline pp_* tasks) on a tiny checkpoint.

Run: PYTHONPATH=operator:trainer_image:eval_image .venv/bin/python bench/bench_eval.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def _seventy_m_state() -> dict[str, torch.Tensor]:
    """Random weights with the exact parameter shapes of Pythia-70m (50304 x 512 embeddings)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, rotary_pct=0.25, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in GPTNeoXForCausalLM(config).named_parameters()}
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}


def bench_weight_stats(fit_sample_size: int) -> list[dict]:
    from polypythia_eval.weightstats import StatsConfig, weight_statistics

    state = _seventy_m_state()
    out = []
    for fit in (False, True):
        config = StatsConfig(fit=fit, fit_sample_size=fit_sample_size)
        t0 = time.perf_counter()
        stats = weight_statistics(state, config)
        seconds = time.perf_counter() - t0
        methods = {t.get("svd_method", "").split(" ")[0] for t in stats["tensors"].values()}
        out.append(
            {
                "bench": "weight_stats_70m_cpu",
                "seconds_per_checkpoint": round(seconds, 2),
                "fits": fit,
                "fit_sample_size": fit_sample_size if fit else None,
                "tensors": len(stats["tensors"]),
                "parameters": sum(v.numel() for v in state.values()),
                "svd": sorted(m for m in methods if m),
                "threads": torch.get_num_threads(),
            }
        )
    return out


def bench_lm_eval(limit: int, checkpoints: int) -> dict:
    from polypythia_eval.evaluate import EvaluateOptions, evaluate_checkpoint
    from polypythia_eval.offline_tasks import OfflineItems
    from polypythia_eval.tiny import build_tokenizer, save_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("HF_HOME", str(Path(tmp) / "hf"))
        os.environ["HF_HUB_OFFLINE"] = "1"
        tokenizer = build_tokenizer(256, docs=60)
        options = EvaluateOptions(limit=limit, batch_size=16, items=OfflineItems(limit, limit))
        times, parts = [], []
        for i in range(checkpoints + 1):  # the first one warms caches and is not counted
            folder = save_tiny_checkpoint(Path(tmp) / f"ck{i}", seed=i, tokenizer=tokenizer)
            t0 = time.perf_counter()
            result = evaluate_checkpoint(folder, options, Path(tmp) / "work")
            if i:
                times.append(time.perf_counter() - t0)
                parts.append(result["timing_s"])
    return {
        "bench": "lm_eval_tiny_cpu",
        "seconds_per_checkpoint": round(sum(times) / len(times), 2),
        "tasks": options.tasks,
        "items_per_task": limit,
        "model": "GPT-NeoX 2 layers, d=64, vocab 1024",
        "breakdown_s": {
            k: round(sum(p.get(k, 0) for p in parts) / len(parts), 2)
            for k in ("load", "weight_stats", "lm_eval")
        },  # fmt: skip
        "checkpoints": checkpoints,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fit-sample", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=100, help="items per lm-eval task")
    parser.add_argument("--checkpoints", type=int, default=2)
    args = parser.parse_args()
    # Libraries (and native code) print progress to stdout: point fd 1 at stderr while
    # working and keep the real stdout for the JSON lines only.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    with contextlib.redirect_stdout(sys.stderr):
        for line in bench_weight_stats(args.fit_sample):
            print(json.dumps(line), file=out, flush=True)
        print(json.dumps(bench_lm_eval(args.limit, args.checkpoints)), file=out, flush=True)


if __name__ == "__main__":
    main()
