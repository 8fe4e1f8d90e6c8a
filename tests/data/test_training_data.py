"""TrainingData over a megatron-format dataset: samples, batches, ranks, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypythia.errors import UsageError
from polypythia_trainer.data import IndexedDatasetBuilder, open_training_data
from polypythia_trainer.data.tokenizer import save_hf, train_bpe
from polypythia_trainer.data.training import RankShare

SEQ = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A dataset of 1000 tokens (0..999 mod 300) in ragged documents, with a tokenizer."""
    root = tmp_path_factory.mktemp("mega")
    flat = np.arange(1000) % 300
    builder = IndexedDatasetBuilder(root / "d", np.uint16)
    cuts = [0, 5, 50, 51, 400, 999, 1000]
    for a, b in zip(cuts, cuts[1:], strict=False):
        builder.add_item(flat[a:b])
        builder.end_document()
    builder.finalize()
    save_hf(train_bpe(["some text for a tokenizer"] * 10, 300), Path(f"{root / 'd'}.tokenizer"))
    return root / "d", flat


def _open(prefix: Path, tmp_path: Path, seed: int = 0, **data) -> object:
    block = {
        "format": "megatron",
        "path": str(prefix),
        "tokenizer": None,
        "skipBatches": [],
        "order": "permutation",
    }
    return open_training_data(
        {**block, **data}, sequence_length=SEQ, vocab_size=512, data_seed=seed, cache_dir=tmp_path
    )


def test_samples_are_consecutive_cuts_of_the_token_stream(dataset, tmp_path: Path) -> None:
    prefix, flat = dataset
    data = _open(prefix, tmp_path)
    assert data.num_samples == 1000 // (SEQ + 1)
    for i in (0, 1, 57, data.num_samples - 1):
        assert data.sample(i).tolist() == flat[i * 9 : i * 9 + 9].tolist()


def test_batches_cover_every_sample_once_per_epoch(dataset, tmp_path: Path) -> None:
    prefix, flat = dataset
    data = _open(prefix, tmp_path, seed=3)
    n = data.num_samples  # 111
    rows = np.concatenate([data.batch(b, 37) for b in range(3)])
    assert rows.shape == (n, SEQ + 1) and rows.dtype == np.int64
    starts = sorted((rows[:, 0] - 0).tolist())
    assert sorted(r.tolist() for r in rows) == sorted(
        flat[i * 9 : i * 9 + 9].tolist() for i in range(n)
    )
    assert len(set(starts)) >= 100
    wrapped = data.batch(3, 37)  # the next epoch, in a fresh order
    assert wrapped.shape == (37, SEQ + 1)
    assert not np.array_equal(wrapped, rows[:37])


def test_batches_are_deterministic_per_seed(dataset, tmp_path: Path) -> None:
    prefix, _ = dataset
    a, b, other = (_open(prefix, tmp_path, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.batch(4, 16), b.batch(4, 16))
    assert not np.array_equal(a.batch(4, 16), other.batch(4, 16))


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_split_the_global_batch(dataset, tmp_path: Path, world_size: int) -> None:
    prefix, _ = dataset
    data = _open(prefix, tmp_path, seed=1)
    whole = data.batch(2, 16)
    parts = [data.batch(2, 16, RankShare(r, world_size)) for r in range(world_size)]
    assert all(p.shape == (16 // world_size, SEQ + 1) for p in parts)
    assert np.array_equal(np.concatenate(parts), whole)


def test_batch_arguments_are_checked(dataset, tmp_path: Path) -> None:
    data = _open(dataset[0], tmp_path)
    with pytest.raises(ValueError, match="multiple of world_size"):
        data.batch(0, 6, RankShare(0, 4))
    with pytest.raises(ValueError, match="need 0 <= rank"):
        data.batch(0, 8, RankShare(2, 2))
    with pytest.raises(ValueError, match="batch_index must be >= 0"):
        data.batch(-1, 8)


def test_a_stored_order_file_sets_the_first_epoch(dataset, tmp_path: Path) -> None:
    prefix, flat = dataset
    n = 1000 // 9
    stored = np.random.default_rng(0).permutation(n)
    order_file = Path(f"{prefix}.order-seed9.npy")
    np.save(order_file, stored)
    try:
        data = _open(prefix, tmp_path, seed=9)
        first = data.batch(0, 4)
        assert [row.tolist() for row in first] == [
            flat[i * 9 : i * 9 + 9].tolist() for i in stored[:4]
        ]
        np.save(order_file, stored[:-1])
        with pytest.raises(UsageError, match="stored order for seed 9 has shape"):
            _open(prefix, tmp_path, seed=9)
    finally:
        order_file.unlink()


def test_token_ids_beyond_the_model_vocabulary_are_refused(dataset, tmp_path: Path) -> None:
    data = open_training_data(
        {"format": "megatron", "path": str(dataset[0]), "order": "permutation"},
        sequence_length=SEQ,
        vocab_size=290,
        data_seed=0,
        cache_dir=tmp_path,
    )
    with pytest.raises(UsageError, match="outside the model's vocabulary of 290"):
        for b in range(20):
            data.batch(b, 8)


def test_save_tokenizer_makes_a_loadable_checkpoint_folder(dataset, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    _open(dataset[0], tmp_path).save_tokenizer(tmp_path / "ckpt")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert tok.decode(tok("some text")["input_ids"]) == "some text"
    assert tok.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    "block, field",
    [
        ({"format": "parquet"}, "spec.data.format"),
        ({"format": "megatron"}, "spec.data.path"),
        ({"format": "megatron", "path": ""}, "spec.data.path"),
        ({"format": "generated", "path": "/x"}, "spec.data.path"),
        ({"format": "generated", "skipBatches": [[5, 5]]}, r"spec.data.skipBatches\[0\]"),
        ({"format": "generated", "skipBatches": [[0, 3], [-1, 2]]}, r"spec.data.skipBatches\[1\]"),
        ({"format": "generated", "skipBatches": "1-2"}, "spec.data.skipBatches"),
        ({"format": "generated", "shuffle": True}, "spec.data.shuffle"),
        ({"format": "megatron", "path": "/no/such/prefix", "tokenizer": "/no/tok"}, "spec.data"),
    ],
)
def test_bad_data_blocks_name_the_field(block: dict, field: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"^{field}"):
        open_training_data(
            block, sequence_length=8, vocab_size=2048, data_seed=0, cache_dir=tmp_path
        )


def test_megatron_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "bare", np.uint16)
    builder.add_item(np.arange(100))
    builder.end_document()
    builder.finalize()
    with pytest.raises(UsageError, match="spec.data.tokenizer: required for format megatron"):
        _open(tmp_path / "bare", tmp_path)


def test_a_dataset_smaller_than_one_sample_is_refused(tmp_path: Path, dataset) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "tiny", np.uint16)
    builder.add_item([1, 2, 3])
    builder.end_document()
    builder.finalize()
    tok = f"{dataset[0]}.tokenizer"
    with pytest.raises(UsageError, match="fewer than one sample"):
        _open(tmp_path / "tiny", tmp_path, tokenizer=tok)


def test_pickling_ships_paths_not_tokens(dataset, tmp_path: Path) -> None:
    """Ray pickles what the train loop captures: a reader must not drag its files along."""
    import pickle

    data = _open(dataset[0], tmp_path, seed=2)
    blob = pickle.dumps(data)
    assert len(blob) < Path(f"{dataset[0]}.bin").stat().st_size
    assert np.array_equal(pickle.loads(blob).batch(1, 8), data.batch(1, 8))
