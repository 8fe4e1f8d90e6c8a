"""Training data: indexed token datasets (GPT-NeoX/Megatron), per-seed order, batches.

The trainer calls :func:`open_training_data` with the run config's typed ``data`` block
(:class:`DataConfig`) and reads batches by index with :meth:`TrainingData.batch`;
:func:`batch_index` maps an optimiser step to the batch it consumes when batches are skipped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from polypythia.errors import UsageError
from polypythia_trainer.config import DataConfig
from polypythia_trainer.data import generated, megatron
from polypythia_trainer.data.indexed import IndexedDataset, IndexedDatasetBuilder, IndexFormatError
from polypythia_trainer.data.megatron import MegatronOrder
from polypythia_trainer.data.order import batch_index
from polypythia_trainer.data.sources import fetch_remote_file, is_remote, open_source
from polypythia_trainer.data.split import DATASET_NAME as SPLIT_DATASET_NAME
from polypythia_trainer.data.split import split_indices
from polypythia_trainer.data.tokenizer import HF_FILES, load
from polypythia_trainer.data.training import TrainingData, load_stored_order, local_dataset

__all__ = [
    "DataConfig",
    "IndexedDataset",
    "IndexedDatasetBuilder",
    "TrainingData",
    "batch_index",
    "open_training_data",
]


def _check_vocab(tokenizer_vocab: int, vocab_size: int, what: str) -> None:
    if tokenizer_vocab > vocab_size:
        raise UsageError(
            f"spec.model.vocabSize: {vocab_size} is smaller than the vocabulary of {what} "
            f"({tokenizer_vocab} tokens); pick a size whose vocabulary is at least that"
        )


def _fetch_remote_tokenizer(
    uri: str, cache_dir: Path, storage: Mapping[str, Any] | None
) -> Path | None:
    """Download a remote tokenizer (folder or tokenizer.json) into the cache; None if absent."""
    local = cache_dir / "tokenizers" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if uri.endswith(".json"):
        found = fetch_remote_file(uri, local / "tokenizer.json", storage)
        return local / "tokenizer.json" if found else None
    folder = uri.rstrip("/")
    fetched = [
        name for name in HF_FILES if fetch_remote_file(f"{folder}/{name}", local / name, storage)
    ]
    return local if fetched else None


def _resolve_tokenizer(
    spec: DataConfig, cache_dir: Path, storage: Mapping[str, Any] | None
) -> Path:
    """The tokenizer named in the spec, else one next to the dataset (``PREFIX.tokenizer/``)."""
    assert spec.path is not None
    if spec.tokenizer is not None:
        if is_remote(spec.tokenizer):
            found = _fetch_remote_tokenizer(spec.tokenizer, cache_dir, storage)
            if found is None:
                raise UsageError(f"spec.data.tokenizer: {spec.tokenizer} does not exist")
            return found
        return Path(spec.tokenizer).expanduser()
    candidate = f"{spec.path}.tokenizer"
    if is_remote(candidate):
        found = _fetch_remote_tokenizer(candidate, cache_dir, storage)
        if found is not None:
            return found
    elif (Path(candidate) / "tokenizer.json").is_file():
        return Path(candidate)
    raise UsageError(
        "spec.data.tokenizer: required for format megatron when no tokenizer lies next to the "
        f"dataset ({candidate}/); checkpoints carry it so that evaluation can load them"
    )


def open_training_data(
    data: DataConfig | dict,
    *,
    sequence_length: int,
    vocab_size: int,
    data_seed: int,
    cache_dir: str | Path,
    storage: Mapping[str, Any] | None = None,
    train_iters: int | None = None,
    global_batch_size: int | None = None,
    require_tokenizer: bool = True,
) -> TrainingData:
    """Open the dataset a run config's ``data`` block names, building the demo one if needed.

    Training needs a tokenizer (checkpoints carry it); the batch viewer passes
    ``require_tokenizer=False`` and shows token ids when there is none.

    ``storage`` is the run config's storage block (``endpoint``, ``secure``, ``region``)
    for ``s3://`` paths; without it the endpoint comes from the environment. The megatron
    order needs ``train_iters`` and ``global_batch_size``: they fix GPT-NeoX's sample count.
    """
    spec = data if isinstance(data, DataConfig) else DataConfig.from_dict(data)
    if sequence_length < 1:
        raise UsageError(f"spec.training.sequenceLength: must be >= 1, got {sequence_length}")
    cache_dir = Path(cache_dir).expanduser()
    if spec.format == "generated":
        _check_vocab(generated.VOCAB_SIZE, vocab_size, "the generated corpus's tokenizer")
        folder = generated.ensure(cache_dir)
        path, name = str(folder / generated.PREFIX), "the generated corpus"
        dataset, tokenizer = (
            local_dataset(folder / generated.PREFIX),
            folder / generated.TOKENIZER_DIR,
        )
        train_items = None
    else:
        assert spec.path is not None
        path = name = spec.path
        dataset, tokenizer = _open_dataset(spec, vocab_size, cache_dir, storage, require_tokenizer)
        train_items = _train_items(spec, dataset)
    order = stored = None
    if spec.order == "megatron":
        order = _megatron_order(
            spec, path, dataset, sequence_length, data_seed, cache_dir, storage,
            train_iters, global_batch_size, train_items,
        )  # fmt: skip
    elif spec.format != "generated":
        stored = load_stored_order(path, data_seed, cache_dir, storage)
    return TrainingData(
        dataset,
        sequence_length=sequence_length,
        vocab_size=vocab_size,
        data_seed=data_seed,
        tokenizer=tokenizer,
        stored_order=stored,
        megatron=order,
        name=name,
        train_items=train_items,
    )


def _open_dataset(
    spec: DataConfig,
    vocab_size: int,
    cache_dir: Path,
    storage: Mapping[str, Any] | None,
    require_tokenizer: bool,
) -> tuple[IndexedDataset, Path | None]:
    """The dataset at ``spec.path`` and its tokenizer (checked against the model's vocabulary)."""
    assert spec.path is not None
    tokenizer: Path | None = None
    try:
        tokenizer = _resolve_tokenizer(spec, cache_dir, storage)
    except UsageError:
        if require_tokenizer:
            raise
    if tokenizer is not None:
        _check_vocab(
            load(tokenizer, "spec.data.tokenizer").get_vocab_size(with_added_tokens=True),
            vocab_size,
            f"tokenizer {tokenizer}",
        )
    index = open_source(f"{spec.path}.idx", field="spec.data.path", storage=storage)
    tokens = open_source(f"{spec.path}.bin", field="spec.data.path", storage=storage)
    try:
        return IndexedDataset(index, tokens), tokenizer
    except IndexFormatError as exc:
        raise UsageError(f"spec.data.path: {exc}") from None


def _train_items(spec: DataConfig, dataset: IndexedDataset) -> int | None:
    """With ``data.split``, the number of leading items training may read (GPT-NeoX's
    ``[0, s1)``); None without a split (every item, as Pythia's ``train-data-paths``)."""
    if spec.split is None:
        return None
    _, train_end, valid_end, _ = split_indices(spec.split, dataset.num_items)
    if train_end < 1:
        raise UsageError(
            f"spec.data.split: {spec.split!r} leaves no training documents of the "
            f"{dataset.num_items} in {spec.path}"
        )
    return train_end


def _megatron_order(
    spec: DataConfig,
    path: str,
    dataset: IndexedDataset,
    sequence_length: int,
    data_seed: int,
    cache_dir: Path,
    storage: Mapping[str, Any] | None,
    train_iters: int | None,
    global_batch_size: int | None,
    train_items: int | None = None,
) -> MegatronOrder:
    """GPT-NeoX's index maps for this run: from ``indexDir`` as they are, else built once
    next to a local dataset (or in the cache when that folder is not writable/remote).

    With ``train_items`` (``data.split``) they are those of GPT-NeoX's ``data-path`` route:
    the first ``train_items`` documents, ``train_iters x batch`` samples, name ``train``."""
    if train_iters is None or global_batch_size is None:
        raise UsageError(
            "spec.data.order: megatron needs the run's training.steps and globalBatchSize"
        )
    if dataset.num_items < 1 or dataset.total_tokens < 2:
        raise UsageError(f"spec.data.path: {path} holds no tokens to order")
    if train_items is None:
        docs, tokens = dataset.num_items, dataset.total_tokens
        samples = megatron.num_samples(train_iters, global_batch_size)
        dataset_name = megatron.DATASET_NAME
    else:
        docs, tokens = train_items, dataset.item_start(train_items)
        samples = train_iters * global_batch_size
        dataset_name = SPLIT_DATASET_NAME
    if tokens < 2:
        raise UsageError(f"spec.data.split: the training documents of {path} hold {tokens} tokens")
    expected = megatron.Expected(
        num_docs=docs, tokens_per_epoch=tokens, seq_length=sequence_length, samples=samples
    )
    data_name = path.rstrip("/").rpartition("/")[2]
    index_dir = build_dir = None
    if spec.index_dir is not None:
        index_dir = _local_index_dir(
            spec.index_dir, data_name, expected, data_seed, cache_dir, storage, dataset_name
        )
    else:
        build_dir = _build_dir(path, cache_dir)
    return megatron.open_order(
        data_name=data_name,
        sizes_fn=lambda: dataset.sizes[:docs],
        expected=expected,
        seed=data_seed,
        build_dir=build_dir,
        index_dir=index_dir,
        dataset_name=dataset_name,
    )


def _build_dir(path: str, cache_dir: Path) -> Path:
    """Next to a local dataset when that folder is writable (GPT-NeoX's place), else cache."""
    if not is_remote(path):
        folder = Path(path).expanduser().absolute().parent
        if os.access(folder, os.W_OK):
            return folder
    return cache_dir / "indexmaps" / hashlib.sha256(path.encode()).hexdigest()[:16]


def _local_index_dir(
    index_dir: str,
    data_name: str,
    expected: megatron.Expected,
    seed: int,
    cache_dir: Path,
    storage: Mapping[str, Any] | None,
    dataset_name: str = megatron.DATASET_NAME,
) -> Path:
    """A local ``indexDir`` as it is; a remote one's three files fetched into the cache."""
    if not is_remote(index_dir):
        return Path(index_dir).expanduser()
    local = cache_dir / "indexmaps" / hashlib.sha256(index_dir.encode()).hexdigest()[:16]
    files = megatron.index_files(
        local, data_name, expected.samples, expected.seq_length, seed, dataset_name
    )
    folder = index_dir.rstrip("/")
    for path in files.paths().values():
        if not path.is_file() and not fetch_remote_file(f"{folder}/{path.name}", path, storage):
            raise UsageError(f"spec.data.indexDir: {folder}/{path.name} is missing")
    return local
