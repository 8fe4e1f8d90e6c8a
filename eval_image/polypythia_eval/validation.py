"""The held-out loss: one fixed token set that no run trains on, the same for every seed
and checkpoint of a sweep, and the mean token loss of a checkpoint on it.

Pythia compared checkpoints on a fixed validation split; comparing seeds on each seed's
own training batches mixes model differences with batch differences. Where the tokens
come from (``data`` block of the run config):

- ``generated`` (the demo corpus): documents of the same grammar drawn with their own
  corpus seed, minus any document whose text is also a training document;
- ``megatron`` with ``validationPath``: the first documents of that indexed dataset
  (documents held out of the training files by whoever built them);
- ``megatron`` with ``split`` (GPT-NeoX's ``"969,30,1"``) and no ``validationPath``: the
  first documents of the validation part ``[s1, s2)`` of the training file itself, which
  the trainer then never reads (it trains on ``[0, s1)``).

``dataset`` is the SHA-256 of the exact token sequence (first 16 hex digits), so two
results with the same identifier were computed on exactly the same tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from polypythia_trainer.config import DataConfig

VALIDATION_SEED = 1_000_003  # corpus seed of the held-out documents (training uses 0)
VALIDATION_DOCUMENTS = 400
MAX_TOKENS = 32_768  # tokens read from a validationPath dataset


@dataclass(frozen=True)
class ValidationSet:
    """The held-out token stream (documents back to back, each ending in EOD)."""

    tokens: np.ndarray
    dataset: str
    source: str


def _identify(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


@cache
def held_out_documents() -> tuple[str, ...]:
    """The held-out grammar documents: drawn with their own seed, training texts removed."""
    from polypythia import corpus
    from polypythia_trainer.data import generated

    training = set(corpus.generate_documents(generated.DOCUMENTS, generated.CORPUS_SEED))
    docs = corpus.generate_documents(2 * VALIDATION_DOCUMENTS, VALIDATION_SEED)
    return tuple(d for d in docs if d not in training)[:VALIDATION_DOCUMENTS]


def generated_set(encode, eod: int) -> ValidationSet:
    """Held-out grammar documents tokenised with ``encode`` (text -> ids), never trained on."""
    docs = held_out_documents()
    ids: list[int] = []
    for doc in docs:
        ids.extend(encode(doc))
        ids.append(eod)
    tokens = np.asarray(ids, dtype=np.int64)
    return ValidationSet(tokens, _identify(tokens), f"generated corpus, seed {VALIDATION_SEED}")


def _indexed(path: str, field: str, storage: dict | None):
    """The indexed dataset ``path`` (``.idx`` + ``.bin``, local or s3://) the field names."""
    from polypythia_trainer.data.indexed import IndexedDataset
    from polypythia_trainer.data.sources import open_source

    return IndexedDataset(
        open_source(f"{path}.idx", field=field, storage=storage),
        open_source(f"{path}.bin", field=field, storage=storage),
    )


def indexed_set(path: str, storage: dict | None = None) -> ValidationSet:
    """The first documents (up to MAX_TOKENS tokens) of the indexed dataset at ``path``."""
    dataset = _indexed(path, "spec.data.validationPath", storage)
    tokens = np.asarray(dataset.tokens(0, min(MAX_TOKENS, dataset.total_tokens)), dtype=np.int64)
    return ValidationSet(tokens, _identify(tokens), path)


def split_set(path: str, split: str, storage: dict | None = None) -> ValidationSet | None:
    """The first documents (up to MAX_TOKENS tokens) of the validation part of ``path``
    under GPT-NeoX's ``split``; None when that part is empty."""
    from polypythia_trainer.data.split import split_indices

    dataset = _indexed(path, "spec.data.path", storage)
    _, first, end, _ = split_indices(split, dataset.num_items)
    if end <= first:
        return None
    start, stop = dataset.item_start(first), dataset.item_start(end)
    tokens = np.asarray(dataset.tokens(start, min(MAX_TOKENS, stop - start)), dtype=np.int64)
    source = f"{path} split {split}: validation documents [{first}, {end})"
    return ValidationSet(tokens, _identify(tokens), source)


def heldout_loss(model, tokens: np.ndarray, sequence_length: int, batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy over windows of ``sequence_length + 1`` tokens (the
    tail shorter than a window is left out, as in training)."""
    import torch

    window = sequence_length + 1
    count = len(tokens) // window
    if count < 1:
        raise ValueError(f"validation set: {len(tokens)} tokens, fewer than one window of {window}")
    device = next(model.parameters()).device
    windows = torch.as_tensor(tokens[: count * window].reshape(count, window), device=device)
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = windows[start : start + batch_size]
            logits = model(input_ids=batch[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            n += batch[:, 1:].numel()
    mean = total / n
    return {"loss": mean if math.isfinite(mean) else None, "tokens": n}


def validation_set(
    data: DataConfig | dict, tokenizer, storage: dict | None = None
) -> ValidationSet | None:
    """The sweep's held-out set for a run config's ``data`` block; None when it has none
    (megatron data with neither ``validationPath`` nor a ``split`` with a validation part)."""
    spec = data if isinstance(data, DataConfig) else DataConfig.from_dict(data)
    if spec.format == "generated":
        eod = tokenizer.eos_token_id
        if eod is None:
            raise ValueError("validation set: the checkpoint's tokenizer has no EOD token")

        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        return generated_set(encode, eod)
    if spec.validation_path:
        return indexed_set(spec.validation_path, storage)
    if spec.split and spec.path:
        return split_set(spec.path, spec.split, storage)
    return None
