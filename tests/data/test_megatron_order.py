"""GPT-NeoX v1.0's data order (gpt2_dataset.py, helpers.cpp, data_utils.py), checked against
hand-worked examples and GPT-NeoX's own Python loop, not against this project's code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from polypythia.errors import UsageError
from polypythia_trainer.data import IndexedDatasetBuilder, open_training_data
from polypythia_trainer.data import megatron as mg
from polypythia_trainer.data.tokenizer import save_hf, train_bpe
from polypythia_trainer.data.training import RankShare

RELEASED = "pile_20B_tokenizer_text_document_train_0_indexmap_147164160ns_2048sl_1234s_{}_idx.npy"


def test_pythia_sample_count_and_released_file_names() -> None:
    """143000 steps x 1024 x 1.005 = 147,164,160: the number in the released names."""
    n = mg.num_samples(143_000, 1024)
    assert n == 147_164_160
    files = mg.index_files("/d/seed0", "pile_20B_tokenizer_text_document", n, 2048, 1234)
    assert files.doc == Path("/d/seed0") / RELEASED.format("doc")
    assert files.sample == Path("/d/seed0") / RELEASED.format("sample")
    assert files.shuffle == Path("/d/seed0") / RELEASED.format("shuffle")
    assert mg.parse_index_name(RELEASED.format("shuffle")) == {
        "prefix": "pile_20B_tokenizer_text_document",
        "name": "train_0",
        "samples": 147_164_160,
        "seq_length": 2048,
        "seed": 1234,
        "kind": "shuffle",
    }
    assert mg.parse_index_name("pile.bin") is None


def test_num_epochs_by_hand() -> None:
    # 10 tokens, L = 3: one epoch gives (10 - 1) // 3 = 3 samples, two give 19 // 3 = 6.
    assert mg.num_epochs(10, 3, 3) == 1
    assert mg.num_epochs(10, 3, 4) == 2
    assert mg.num_epochs(10, 3, 6) == 2
    assert mg.num_epochs(10, 3, 7) == 3


# Worked by hand from helpers.cpp: sizes [3, 5, 0, 2], doc_idx [1, 0, 2, 3], L = 3.
# Stream: doc1 (5 tokens), doc0 (3), doc2 (0), doc3 (2) = 10 tokens, (10 - 1) // 3 = 3 samples.
#   sample 0: (0, 0)
#   sample 1: r = 4, doc1 has 5 -> r = -1, offset 0 + (-1 + 5 - 1) = 3        -> (0, 3)
#   sample 2: r = 4, doc1 has 2 -> r = 2, next; doc0 has 3 -> r = -1, offset 1 -> (1, 1)
#   sample 3: r = 4, doc0 has 2 -> r = 2; doc2 has 0 -> r = 2; doc3 has 2 -> r = 0,
#             offset 0 + (0 + 2 - 1) = 1                                       -> (3, 1)
HAND_SIZES = np.array([3, 5, 0, 2], dtype=np.int32)
HAND_DOC_IDX = np.array([1, 0, 2, 3], dtype=np.int32)
HAND_SAMPLE_IDX = [[0, 0], [0, 3], [1, 1], [3, 1]]


def test_sample_idx_of_the_hand_worked_example() -> None:
    got = mg.build_sample_idx(HAND_SIZES, HAND_DOC_IDX, 3, 1, 10)
    assert got.dtype == np.int32 and got.shape == (4, 2)
    assert got.tolist() == HAND_SAMPLE_IDX


def _gpt_neox_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """GPT-NeoX v1.0's pure-Python ``_build_sample_idx`` (gpt2_dataset.py), as published."""
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    sample_idx = np.zeros([num_samples + 1, 2], dtype=np.int32)
    sample_index = 0
    doc_idx_index = 0
    doc_offset = 0
    sample_idx[sample_index][0] = doc_idx_index
    sample_idx[sample_index][1] = doc_offset
    sample_index += 1
    while sample_index <= num_samples:
        remaining_seq_length = seq_length + 1
        while remaining_seq_length != 0:
            doc_id = doc_idx[doc_idx_index]
            doc_length = sizes[doc_id] - doc_offset
            remaining_seq_length -= doc_length
            if remaining_seq_length <= 0:
                doc_offset += remaining_seq_length + doc_length - 1
                remaining_seq_length = 0
            else:
                doc_idx_index += 1
                doc_offset = 0
        sample_idx[sample_index][0] = doc_idx_index
        sample_idx[sample_index][1] = doc_offset
        sample_index += 1
    return sample_idx


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_sample_idx_equals_gpt_neox_loop(seed: int, monkeypatch) -> None:
    monkeypatch.setattr(mg, "_CHUNK_DOCS", 7)  # many chunk borders
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=60).astype(np.int32)
    sizes[rng.integers(0, 60, size=10)] = 0
    seq = int(rng.integers(2, 30))
    tokens = int(sizes.sum())
    epochs = 1 + seed % 3
    doc_idx = np.tile(np.arange(60, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    want = _gpt_neox_sample_idx(sizes, doc_idx, seq, epochs, tokens)
    assert np.array_equal(mg.build_sample_idx(sizes, doc_idx, seq, epochs, tokens), want)


def test_one_random_state_shuffles_documents_then_samples(tmp_path: Path) -> None:
    """FIDELITY.md: RandomState(seed) shuffles doc_idx (epochs x docs, int32) first, then
    arange(samples) (uint32); files are np.save'd with GPT-NeoX's names and dtypes."""
    sizes = np.array([4, 7, 1, 9, 3, 6], dtype=np.int32)  # 30 tokens
    files = mg.index_files(tmp_path, "ds", 12, 4, 77)
    mg.build_index_files(files, sizes, 4, 77, 12)  # 12 samples of L=4 need 2 epochs (59 // 4)
    rng = np.random.RandomState(77)
    doc_idx = np.array([0, 1, 2, 3, 4, 5] * 2, dtype=np.int32)
    rng.shuffle(doc_idx)
    shuffle = np.arange(14, dtype=np.uint32)
    rng.shuffle(shuffle)
    assert np.load(files.doc).dtype == np.int32
    assert np.load(files.doc).tolist() == doc_idx.tolist()
    assert np.load(files.sample).shape == (15, 2)
    assert np.load(files.shuffle).dtype == np.uint32
    assert np.load(files.shuffle).tolist() == shuffle.tolist()
    expected_bytes = tmp_path / "want.npy"
    np.save(str(expected_bytes), shuffle, allow_pickle=True)
    assert files.shuffle.read_bytes() == expected_bytes.read_bytes()


@pytest.fixture
def hand_dataset(tmp_path: Path) -> Path:
    """HAND_SIZES as a megatron dataset: doc0 [1,2,3], doc1 [10..14], doc2 [], doc3 [30,31]."""
    builder = IndexedDatasetBuilder(tmp_path / "hand", np.uint16)
    for doc in ([1, 2, 3], [10, 11, 12, 13, 14], [], [30, 31]):
        builder.add_item(np.array(doc, dtype=np.int64))
        builder.end_document()
    builder.finalize()
    save_hf(train_bpe(["a tokenizer for tests"] * 10, 300), Path(f"{tmp_path / 'hand'}.tokenizer"))
    return tmp_path / "hand"


def _open(prefix: Path, seed: int, seq: int = 3, steps: int = 1, batch: int = 2, **data):
    return open_training_data(
        {"format": "megatron", "path": str(prefix), **data},
        sequence_length=seq,
        vocab_size=512,
        data_seed=seed,
        cache_dir=prefix.parent / "cache",
        train_iters=steps,
        global_batch_size=batch,
    )


def test_samples_read_as_gpt2_dataset_does(hand_dataset: Path) -> None:
    """With the hand example's maps in place, sample i is read across documents by hand."""
    files = mg.index_files(hand_dataset.parent, "hand", mg.num_samples(1, 2), 3, 5)
    np.save(files.doc, HAND_DOC_IDX, allow_pickle=True)
    np.save(files.sample, np.array(HAND_SAMPLE_IDX, dtype=np.int32), allow_pickle=True)
    np.save(files.shuffle, np.array([2, 0, 1], dtype=np.uint32), allow_pickle=True)
    data = _open(hand_dataset, seed=5)
    assert data.order_name == "megatron" and data.num_samples == 3
    assert data.sample(0).tolist() == [10, 11, 12, 13]
    assert data.sample(1).tolist() == [13, 14, 1, 2]
    assert data.sample(2).tolist() == [2, 3, 30, 31]  # the empty doc2 is stepped over
    assert data.batch(0, 2).tolist() == [[2, 3, 30, 31], [10, 11, 12, 13]]  # shuffle [2, 0]
    assert data.documents(2) == [0, 2, 3]


def test_index_maps_are_built_once_next_to_the_data(hand_dataset: Path) -> None:
    data = _open(hand_dataset, seed=9)
    files = mg.index_files(hand_dataset.parent, "hand", 3, 3, 9)
    assert all(p.is_file() for p in files.paths().values())
    stamp = files.doc.stat().st_mtime_ns
    again = _open(hand_dataset, seed=9)
    assert files.doc.stat().st_mtime_ns == stamp
    assert np.array_equal(again.batch(0, 2), data.batch(0, 2))


def test_ranks_take_gpt_neox_slices_of_each_micro_batch_round() -> None:
    """DistributedBatchSampler(interleave=False): round a of micro x world, rank r's slice."""
    pos = [RankShare(r, 2, micro_batch_size=2).positions(3, 8) for r in (0, 1)]
    assert pos[0].tolist() == [24, 25, 28, 29]
    assert pos[1].tolist() == [26, 27, 30, 31]


def test_released_files_in_index_dir_are_used_as_they_are(hand_dataset: Path, tmp_path) -> None:
    index_dir = tmp_path / "seed0"
    index_dir.mkdir()
    files = mg.index_files(index_dir, "hand", 3, 3, 1234)
    np.save(files.doc, HAND_DOC_IDX, allow_pickle=True)
    np.save(files.sample, np.array(HAND_SAMPLE_IDX, dtype=np.int32), allow_pickle=True)
    np.save(files.shuffle, np.array([1, 2, 0], dtype=np.uint32), allow_pickle=True)
    data = _open(hand_dataset, seed=1234, indexDir=str(index_dir))
    assert data.batch(0, 2).tolist() == [[13, 14, 1, 2], [2, 3, 30, 31]]
    assert not list(hand_dataset.parent.glob("hand_train_0_indexmap_*"))  # nothing built


def test_a_bad_index_dir_is_refused_naming_the_file(hand_dataset: Path, tmp_path) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    with pytest.raises(UsageError, match=r"spec.data.indexDir: .*_3sl_7s_doc_idx.npy is missing"):
        _open(hand_dataset, seed=7, indexDir=str(index_dir))
    # maps for another sequence length: named as what was found instead
    other = mg.index_files(index_dir, "hand", 3, 4, 7)
    for path in other.paths().values():
        np.save(path, np.zeros(2, dtype=np.int32))
    with pytest.raises(UsageError, match=r"found instead: hand_train_0_indexmap_3ns_4sl_7s"):
        _open(hand_dataset, seed=7, indexDir=str(index_dir))
    # right names, wrong sizes for this dataset
    files = mg.index_files(index_dir, "hand", 3, 3, 7)
    np.save(files.doc, np.zeros(5, dtype=np.int32))
    np.save(files.sample, np.zeros((4, 2), dtype=np.int32))
    np.save(files.shuffle, np.zeros(3, dtype=np.uint32))
    with pytest.raises(UsageError, match=r"_doc_idx.npy holds int32 \(5,\), expected int32 \(4,\)"):
        _open(hand_dataset, seed=7, indexDir=str(index_dir))


def test_order_field_is_checked(hand_dataset: Path) -> None:
    with pytest.raises(UsageError, match="spec.data.order: must be one of"):
        _open(hand_dataset, seed=1, order="shuffled")
    with pytest.raises(UsageError, match="spec.data.indexDir: only used with order megatron"):
        _open(hand_dataset, seed=1, order="permutation", indexDir="/x")


def test_positions_past_the_built_samples_are_refused(hand_dataset: Path) -> None:
    data = _open(hand_dataset, seed=2)
    with pytest.raises(UsageError, match="past the 3 samples"):
        data.batch(5, 2)


def _hand_maps(folder: Path, seed: int, shuffle: list[int]) -> None:
    files = mg.index_files(folder, "hand", mg.num_samples(1, 2), 3, seed)
    np.save(files.doc, HAND_DOC_IDX, allow_pickle=True)
    np.save(files.sample, np.array(HAND_SAMPLE_IDX, dtype=np.int32), allow_pickle=True)
    np.save(files.shuffle, np.array(shuffle, dtype=np.uint32), allow_pickle=True)


BATCH_ARGS = ["--seq-length", "3", "--global-batch-size", "2", "--train-iters", "1"]


def test_batch_viewer_prints_a_global_batch_as_json(hand_dataset: Path, tmp_path, capsys) -> None:
    from polypythia.cli import main as cli_main

    released = tmp_path / "seed3"
    released.mkdir()
    _hand_maps(released, 3, [1, 2, 0])
    argv = ["data", "batch", str(hand_dataset), "--seed", "3", *BATCH_ARGS, "--step", "0"]
    assert cli_main([*argv, "--index-dir", str(released), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "step": 0,
        "samples": [{"index": 0, "tokens": [13, 14, 1, 2]}, {"index": 1, "tokens": [2, 3, 30, 31]}],
    }
    assert cli_main([*argv, "--index-dir", str(released)]) == 0
    table = capsys.readouterr().out
    assert "1,0" in table and "0,2,3" in table  # documents of samples 1 and 2
    assert "order megatron, seed 3" in table


def test_batch_viewer_refuses_a_bad_index_dir(hand_dataset: Path, tmp_path, capsys) -> None:
    from polypythia.cli import main as cli_main

    argv = ["data", "batch", str(hand_dataset), "--seed", "4", *BATCH_ARGS, "--step", "0"]
    assert cli_main([*argv, "--index-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "_4s_doc_idx.npy is missing" in err and "Traceback" not in err


def test_gathered_pieces_equal_sample_by_sample_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(0, 9, size=40).astype(np.int32)
    files = mg.index_files(tmp_path, "r", 20, 5, 11)
    mg.build_index_files(files, sizes, 5, 11, 20)
    tokens = int(sizes.sum())
    order = mg.MegatronOrder(files, mg.Expected(40, tokens, 5, 20))
    ids = order.sample_ids(np.arange(order.num_samples))
    assert order.pieces_many(ids) == [order.pieces(int(i)) for i in ids]


def test_a_file_that_is_not_npy_is_refused(hand_dataset: Path, tmp_path) -> None:
    index_dir = tmp_path / "junk"
    index_dir.mkdir()
    _hand_maps(index_dir, 6, [0, 1, 2])
    files = mg.index_files(index_dir, "hand", 3, 3, 6)
    files.sample.write_bytes(b"not an array")
    with pytest.raises(UsageError, match=r"_sample_idx.npy is not a .npy array"):
        _open(hand_dataset, seed=6, indexDir=str(index_dir))


def test_index_benchmark_runs_and_reports_its_figures(capsys) -> None:
    import importlib.util

    bench = Path(__file__).resolve().parents[2] / "bench/bench_megatron_index.py"
    spec = importlib.util.spec_from_file_location("bench_megatron_index", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--scale", "0.0005"]) == 0
    lines = {m["metric"]: m for m in map(json.loads, capsys.readouterr().out.splitlines())}
    built = lines["sample_idx_s"]["samples"]
    assert built >= mg.num_samples(71, 1024)  # 0.0005 x 143000 steps, with the 1.005 slack
    assert lines["batch_lookup_first_s"]["pieces"] >= 1024
