"""Reading a dataset from S3 (a real moto server): byte ranges, never the whole file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypythia.errors import UsageError
from polypythia.storage import S3Store, open_store
from polypythia_trainer.data import IndexedDatasetBuilder, open_training_data
from polypythia_trainer.data.tokenizer import save_hf, train_bpe
from polypythia_trainer.data.training import RankShare
from support.fixtures import s3_endpoint  # noqa: F401

SEQ = 16


def _make_local(root: Path) -> Path:
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(root / "d", np.uint16)
    for _ in range(200):
        builder.add_item(rng.integers(0, 280, rng.integers(1, 60)))
        builder.end_document()
    builder.finalize()
    save_hf(train_bpe(["a small tokenizer for the test"] * 5, 280), Path(f"{root / 'd'}.tokenizer"))
    np.save(f"{root / 'd'}.order-seed2.npy", rng.permutation(_n(root)))
    return root / "d"


def _n(root: Path) -> int:
    from polypythia_trainer.data.training import local_dataset

    return local_dataset(root / "d").total_tokens // (SEQ + 1)


def _upload(local: Path, endpoint) -> str:
    store, _ = open_store(endpoint.uri, **endpoint.store_kwargs())
    for path in local.parent.rglob("*"):
        if path.is_file():
            store.put_file(f"corpora/{path.relative_to(local.parent)}", path)
    return f"{endpoint.uri}/corpora/{local.name}"


def _open(path: str, tmp_path: Path, seed: int, **extra):
    return open_training_data(
        {"format": "megatron", "path": path, "order": "permutation", **extra},
        sequence_length=SEQ,
        vocab_size=512,
        data_seed=seed,
        cache_dir=tmp_path / "cache",
    )


def test_s3_dataset_reads_like_the_local_one(s3_endpoint, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    local = _make_local(tmp_path / "src")
    remote = _upload(local, s3_endpoint)
    reads: list[int] = []
    real = S3Store.get_range

    def counting(self, key: str, offset: int, length: int) -> bytes:
        reads.append(length)
        return real(self, key, offset, length)

    monkeypatch.setattr(S3Store, "get_range", counting)
    for seed in (0, 2):  # seed 2 has a stored order file next to the dataset
        here = _open(str(local), tmp_path, seed)
        there = _open(remote, tmp_path, seed)
        assert there.num_samples == here.num_samples
        for b in range(4):
            assert np.array_equal(
                there.batch(b, 8, RankShare(1, 2)), here.batch(b, 8, RankShare(1, 2))
            )
    bin_size = Path(f"{local}.bin").stat().st_size
    assert reads and max(reads) <= (SEQ + 1) * 2 < bin_size
    assert not list((tmp_path / "cache").rglob("*.bin"))
    there.save_tokenizer(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.json").read_bytes() == (
        Path(f"{local}.tokenizer") / "tokenizer.json"
    ).read_bytes()


def test_s3_errors_name_the_field(s3_endpoint, tmp_path: Path) -> None:  # noqa: F811
    local = _make_local(tmp_path / "src")
    remote = _upload(local, s3_endpoint)
    with pytest.raises(UsageError, match=r"^spec.data.path: .*missing.idx does not exist"):
        _open(f"{s3_endpoint.uri}/corpora/missing", tmp_path, 0, tokenizer=f"{remote}.tokenizer")
    with pytest.raises(UsageError, match=r"^spec.data.tokenizer: .* does not exist"):
        _open(remote, tmp_path, 0, tokenizer=f"{s3_endpoint.uri}/nothing/here")
