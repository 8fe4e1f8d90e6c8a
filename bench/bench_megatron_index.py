"""Benchmark of GPT-NeoX's index-map build (doc/sample/shuffle idx) at Pile scale, on one core.

Synthetic document sizes (geometric, mean 1,585 tokens: about the standard Pile's 333B
tokens in 210M documents, so one epoch covers Pythia's 147,164,160 samples, as the released
files' sizes say), no data needed. Prints JSON lines: seconds per map, peak resident memory,
file sizes, and how long the batch viewer's lookups of one global batch take on the maps
(the first after opening them, then another batch; reading its tokens adds one read per piece).

    PYTHONPATH=operator:trainer_image python bench/bench_megatron_index.py          # 1/10 Pile
    PYTHONPATH=operator:trainer_image python bench/bench_megatron_index.py --full   # the Pile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from polypythia_trainer.data import megatron as mg  # noqa: E402

PILE_DOCS = 210_607_728  # documents of pile_20B_tokenizer_text_document (0.84 GB doc_idx / 4)
MEAN_TOKENS = 1_585
SEQ = 2048
BATCH = 1024
STEPS = 143_000


def emit(**fields: object) -> None:
    print(json.dumps({"bench": "megatron_index", **fields}), flush=True)


def synthetic_sizes(docs: int, seed: int = 0) -> np.ndarray:
    """Geometric document sizes (>= 1 token), made in chunks so no int64 copy of all exists."""
    rng = np.random.default_rng(seed)
    sizes = np.empty(docs, dtype=np.int32)
    for start in range(0, docs, 1 << 24):
        n = min(1 << 24, docs - start)
        sizes[start : start + n] = rng.geometric(1.0 / MEAN_TOKENS, size=n)
    return sizes


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the Pile: 210.6M documents")
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the Pile")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the maps")
    args = parser.parse_args(argv)
    scale = 1.0 if args.full else args.scale

    docs = int(PILE_DOCS * scale)
    steps = max(1, int(STEPS * scale))
    samples = mg.num_samples(steps, BATCH)
    t0 = time.perf_counter()
    sizes = synthetic_sizes(docs)
    tokens = int(sizes.sum(dtype=np.int64))
    emit(metric="sizes_s", value=round(time.perf_counter() - t0, 2), docs=docs, tokens=tokens)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        files = mg.index_files(tmp, "pile_synthetic", samples, SEQ, args.seed)
        epochs = mg.num_epochs(tokens, SEQ, samples)
        rng = np.random.RandomState(args.seed)
        t = time.perf_counter()
        doc_idx = mg.build_doc_idx(docs, epochs, rng)
        mg._save(files.doc, doc_idx)
        emit(metric="doc_idx_s", value=round(time.perf_counter() - t, 2), epochs=epochs)
        t = time.perf_counter()
        sample_idx = mg.build_sample_idx(sizes, doc_idx, SEQ, epochs, tokens)
        mg._save(files.sample, sample_idx)
        built = sample_idx.shape[0] - 1
        del doc_idx, sample_idx
        emit(metric="sample_idx_s", value=round(time.perf_counter() - t, 2), samples=built)
        t = time.perf_counter()
        mg._save(files.shuffle, mg.build_shuffle_idx(built, rng))
        emit(metric="shuffle_idx_s", value=round(time.perf_counter() - t, 2))
        total = time.perf_counter() - t0
        emit(metric="build_total_s", value=round(total, 1), target_s=600, scale=scale)
        emit(metric="peak_rss_gb", value=round(peak_rss_gb(), 2), target_gb=8)
        emit(
            metric="file_gb",
            **{k: round(p.stat().st_size / 1e9, 3) for k, p in files.paths().items()},
        )

        t = time.perf_counter()
        os.sync()  # the maps' dirty pages go to disk first: lookups should not wait on them
        emit(metric="sync_s", value=round(time.perf_counter() - t, 2))
        expected = mg.Expected(docs, tokens, SEQ, samples)
        for label, step in (("first", steps * 7 // 10), ("next", steps * 3 // 10)):
            t = time.perf_counter()
            order = mg.MegatronOrder(files, expected)
            ids = order.sample_ids(np.arange(step * BATCH, (step + 1) * BATCH))
            pieces = order.pieces_many(ids)
            emit(
                metric=f"batch_lookup_{label}_s",
                value=round(time.perf_counter() - t, 3),
                target_s=1.0,
                step=step,
                pieces=sum(len(p) for p in pieces),
            )
    return 0


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.exit(main())
