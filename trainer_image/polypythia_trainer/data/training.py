"""What the trainer reads: fixed-length samples in a per-seed order, batch by batch.

Two orders. ``megatron`` (the default for megatron datasets) is GPT-NeoX v1.0's, read
from its index maps (:mod:`megatron`): what Pythia and PolyPythias trained on. With
``permutation`` (ours, not PolyPythias'), documents (each ending in the EOD token) lie back to back and the stream
is cut into samples of ``sequence_length + 1`` tokens (inputs and shifted labels). Sample
``i`` is tokens ``[i * (L + 1), (i + 1) * (L + 1))``: with Pythia's pre-shuffled Pile,
whose items are exactly 2049 tokens long, sample ``i`` is item ``i``, as in Pythia's
``batch_viewer.py``. The tail shorter than one sample is never used.

Global batch ``b`` of size ``B`` takes stream positions ``b*B ... b*B + B - 1``; position
``p`` is sample ``order(p)`` (see :mod:`order`), so a batch depends only on
``(data_seed, b)``: a run resumed or rewound at any step reads the same batches. The
positions are split across data-parallel ranks as GPT-NeoX's DistributedBatchSampler does:
each micro-batch round of ``micro x world`` positions gives rank ``r`` its ``r``-th slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polypythia.errors import UsageError
from polypythia_trainer.data import order
from polypythia_trainer.data.indexed import IndexedDataset
from polypythia_trainer.data.megatron import MegatronOrder
from polypythia_trainer.data.sources import LocalFile, fetch_remote_file, is_remote
from polypythia_trainer.data.tokenizer import copy_hf

_REMOTE_READERS = 8


@dataclass(frozen=True)
class RankShare:
    """The slice of every global batch one data-parallel rank reads, as GPT-NeoX's
    DistributedBatchSampler cuts it; a trainer holds one for its whole life."""

    rank: int = 0
    world_size: int = 1
    micro_batch_size: int | None = None  # None: the rank's whole share in one micro-batch

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank {self.rank} of world_size {self.world_size}: need 0 <= rank < size"
            )

    def positions(self, batch_index: int, batch_size: int) -> np.ndarray:
        """Stream positions of this rank's share of global batch ``batch_index``, in the
        order its micro-batches take them (GPT-NeoX: micro-batch round ``a`` of
        ``micro x world`` positions, rank ``r`` takes slice ``r``)."""
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        world = self.world_size
        if batch_size < 1 or batch_size % world:
            raise ValueError(
                f"batch size {batch_size} must be a positive multiple of world_size {world}"
            )
        share = batch_size // world
        micro = self.micro_batch_size or share
        if micro < 1 or share % micro:
            raise ValueError(f"micro-batch {micro} must divide the per-rank share {share}")
        rounds = np.arange(share // micro, dtype=np.int64)[:, None] * (micro * world)
        within = self.rank * micro + np.arange(micro, dtype=np.int64)[None, :]
        return (batch_index * batch_size + rounds + within).reshape(-1)


WHOLE_BATCH = RankShare()


class TrainingData:
    """Samples of ``sequence_length + 1`` tokens from an indexed dataset, in seed order."""

    def __init__(
        self,
        dataset: IndexedDataset,
        *,
        sequence_length: int,
        vocab_size: int,
        data_seed: int,
        tokenizer: Path | None,
        stored_order: np.ndarray | None = None,
        megatron: MegatronOrder | None = None,
        name: str = "dataset",
        train_items: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.sequence_length = sequence_length
        self.sample_length = sequence_length + 1
        self.vocab_size = vocab_size
        self.data_seed = data_seed
        self.tokenizer = Path(tokenizer) if tokenizer is not None else None
        self.name = name
        self.megatron = megatron
        self.order_name = "megatron" if megatron is not None else "permutation"
        # ``data.split``: only the stream of the first ``train_items`` items is trained on.
        train_tokens = (
            dataset.total_tokens if train_items is None else dataset.item_start(train_items)
        )
        self.num_samples = (
            megatron.num_samples if megatron is not None else train_tokens // self.sample_length
        )
        if self.num_samples < 1:
            raise UsageError(
                f"spec.data.path: {name} has {dataset.total_tokens} tokens, fewer than one "
                f"sample of sequenceLength + 1 = {self.sample_length}"
            )
        if stored_order is not None and stored_order.shape != (self.num_samples,):
            raise UsageError(
                f"spec.data.path: the stored order for seed {data_seed} has shape "
                f"{stored_order.shape}, the dataset has {self.num_samples} samples of "
                f"{self.sample_length} tokens"
            )
        self.stored_order = stored_order

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        """Indices of the samples at stream ``positions`` (from :meth:`RankShare.positions`)."""
        if self.megatron is not None:
            return self.megatron.sample_ids(positions)
        return order.sample_ids(positions, self.num_samples, self.data_seed, self.stored_order)

    def sample(self, sample_id: int) -> np.ndarray:
        """The tokens of sample ``sample_id``, as stored."""
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"sample {sample_id} outside [0, {self.num_samples})")
        if self.megatron is not None:
            return self._join(self.megatron.pieces(int(sample_id)))
        return self.dataset.tokens(int(sample_id) * self.sample_length, self.sample_length)

    def read_samples(self, sample_ids: np.ndarray) -> list[tuple[np.ndarray, list[int]]]:
        """(tokens, document ids) of each sample, gathering the index maps once."""
        if self.megatron is None:
            return [(self.sample(int(i)), self.documents(int(i))) for i in sample_ids]
        return [
            (self._join(pieces), [doc for doc, _, _ in pieces])
            for pieces in self.megatron.pieces_many(np.asarray(sample_ids))
        ]

    def _join(self, pieces) -> np.ndarray:
        """One Megatron sample from its (document, offset, length) pieces (-1: to the end)."""
        parts = [
            self.dataset.get(doc, offset, None if length < 0 else length)
            for doc, offset, length in pieces
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def documents(self, sample_id: int) -> list[int]:
        """Ids of the documents sample ``sample_id`` draws on (for the batch viewer)."""
        if self.megatron is not None:
            return [doc for doc, _, _ in self.megatron.pieces(int(sample_id))]
        start = int(sample_id) * self.sample_length
        items = self.dataset.item_starts()
        first = int(np.searchsorted(items, start, side="right")) - 1
        last = int(np.searchsorted(items, start + self.sample_length - 1, side="right")) - 1
        return list(range(first, last + 1))

    def batch(
        self, batch_index: int, batch_size: int, share: RankShare = WHOLE_BATCH
    ) -> np.ndarray:
        """int64 ``(batch_size // world_size, sequence_length + 1)``: a rank's share of a batch."""
        ids = self.sample_ids(share.positions(batch_index, batch_size))
        if self.dataset.remote:
            with ThreadPoolExecutor(min(_REMOTE_READERS, len(ids))) as pool:
                rows = list(pool.map(self.sample, ids))
        else:
            rows = [self.sample(i) for i in ids]
        out = np.stack(rows).astype(np.int64)
        top = int(out.max())
        if top >= self.vocab_size:
            raise UsageError(
                f"spec.data.path: {self.name} holds token id {top}, outside the model's "
                f"vocabulary of {self.vocab_size} (spec.model.vocabSize)"
            )
        return out

    def save_tokenizer(self, out_dir: Path) -> None:
        """Write the tokenizer as HF files, so ``out_dir`` loads with ``AutoTokenizer``."""
        if self.tokenizer is None:
            raise UsageError(f"spec.data.tokenizer: {self.name} has no tokenizer to save")
        copy_hf(self.tokenizer, Path(out_dir))


def load_stored_order(
    path: str, seed: int, cache_dir: Path, storage: Mapping[str, Any] | None
) -> np.ndarray | None:
    """PolyPythias-style stored order ``<path>.order-seed<k>.npy``, if there is one."""
    name = f"{path}.order-seed{seed}.npy"
    if is_remote(name):
        file = name.rpartition("/")[2]
        local = cache_dir / "orders" / hashlib.sha256(name.encode()).hexdigest()[:16] / file
        if not local.is_file() and not fetch_remote_file(name, local, storage):
            return None
        name = str(local)
    elif not Path(name).is_file():
        return None
    try:
        stored = np.load(name, mmap_mode="r")
    except ValueError as exc:
        raise UsageError(f"spec.data.path: {name} is not a .npy array ({exc})") from None
    if stored.ndim != 1 or stored.dtype.kind not in "iu":
        raise UsageError(f"spec.data.path: {name} must be a 1-D integer array of sample indices")
    return stored


def local_dataset(prefix: Path) -> IndexedDataset:
    return IndexedDataset(LocalFile(f"{prefix}.idx"), LocalFile(f"{prefix}.bin"))
