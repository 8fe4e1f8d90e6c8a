"""The batch viewer (Pythia's ``utils/batch_viewer.py``, for any seed and either order).

``view_batch`` reads global batch ``K`` of a run's order, sample by sample from memory-mapped
files, and nothing else; ``as_json`` and ``as_table`` render it. Batch ``K`` is the one the
update from step ``K`` to ``K + 1`` trains on (no batches skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from polypythia_trainer.data.training import WHOLE_BATCH, TrainingData

HEAD_CHARS = 60


@dataclass(frozen=True)
class ViewedSample:
    index: int  # position in the shuffled order: K x B + j
    documents: list[int]
    tokens: list[int]


def view_batch(data: TrainingData, step: int, global_batch_size: int) -> list[ViewedSample]:
    """The samples of global batch ``step``, in order."""
    positions = WHOLE_BATCH.positions(step, global_batch_size)
    ids = data.sample_ids(positions)
    return [
        ViewedSample(int(p), docs, tokens.tolist())
        for p, (tokens, docs) in zip(positions, data.read_samples(ids), strict=True)
    ]


def as_json(step: int, samples: list[ViewedSample]) -> str:
    """``{"step": K, "samples": [{"index": i, "tokens": [...L+1 ids...]}, ...]}``."""
    return json.dumps(
        {"step": step, "samples": [{"index": s.index, "tokens": s.tokens} for s in samples]}
    )


def as_table(
    samples: list[ViewedSample], decode: Callable[[list[int]], str] | None, full: bool = False
) -> list[list[str]]:
    """Rows of (index, documents, text head or first ids); ``full`` keeps the whole text."""
    rows = []
    for s in samples:
        if decode is not None:
            text = decode(s.tokens)
            shown = text if full else _head(text)
        else:
            shown = " ".join(map(str, s.tokens if full else s.tokens[:12]))
        docs = ",".join(map(str, s.documents[:4])) + ("..." if len(s.documents) > 4 else "")
        rows.append([str(s.index), docs, shown])
    return rows


def _head(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= HEAD_CHARS else flat[: HEAD_CHARS - 3] + "..."
