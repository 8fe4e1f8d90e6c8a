"""The GPT-NeoX/Megatron indexed format: byte layout, round trips, and the build tool."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from polypythia.cli import main as cli_main
from polypythia_trainer.data.indexed import (
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexFormatError,
)
from polypythia_trainer.data.sources import LocalFile
from polypythia_trainer.data.training import local_dataset


def reference_read(prefix: Path) -> tuple[np.dtype, np.ndarray, np.ndarray, np.ndarray, bytes]:
    """Read an index the way GPT-NeoX's MMapIndexedDataset.Index does, field by field."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", raw[9:17])
    assert version == 1
    (code,) = struct.unpack("<B", raw[17:18])
    dtype = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}[code]
    n, n_doc = struct.unpack("<QQ", raw[18:34])
    sizes = np.frombuffer(raw, np.int32, n, 34)
    pointers = np.frombuffer(raw, np.int64, n, 34 + 4 * n)
    doc_idx = np.frombuffer(raw, np.int64, n_doc, 34 + 12 * n)
    return np.dtype(dtype), sizes, pointers, doc_idx, Path(f"{prefix}.bin").read_bytes()


def reference_write(prefix: Path, documents: list[list[int]], dtype=np.uint16) -> None:
    """Write a dataset as GPT-NeoX's MMapIndexedDatasetBuilder does (one item per document)."""
    sizes = [len(d) for d in documents]
    pointers = (
        np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) * np.dtype(dtype).itemsize
    )
    doc_idx = np.arange(len(documents) + 1, dtype=np.int64)
    with open(f"{prefix}.bin", "wb") as f:
        for d in documents:
            f.write(np.asarray(d, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8))
        f.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx)))
        f.write(np.asarray(sizes, np.int32).tobytes() + pointers.tobytes() + doc_idx.tobytes())


def random_documents(n: int, seed: int, vocab: int = 50000) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, rng.integers(0, 40)).tolist() for _ in range(n)]


def test_builder_writes_the_megatron_layout(tmp_path: Path) -> None:
    docs = random_documents(50, 0)
    builder = IndexedDatasetBuilder(tmp_path / "d", np.uint16)
    for doc in docs:
        builder.add_item(doc)
        builder.end_document()
    builder.finalize()
    dtype, sizes, pointers, doc_idx, data = reference_read(tmp_path / "d")
    assert dtype == np.uint16
    assert sizes.tolist() == [len(d) for d in docs]
    assert doc_idx.tolist() == list(range(51))
    flat = np.frombuffer(data, np.uint16)
    for doc, size, pointer in zip(docs, sizes, pointers, strict=True):
        assert flat[pointer // 2 : pointer // 2 + size].tolist() == doc


def test_reader_reads_a_reference_dataset(tmp_path: Path) -> None:
    docs = random_documents(30, 1)
    reference_write(tmp_path / "ref", docs)
    ds = local_dataset(tmp_path / "ref")
    assert len(ds) == ds.num_docs == 30
    assert [ds[i].tolist() for i in range(30)] == docs
    assert [ds.document(i).tolist() for i in range(30)] == docs
    flat = [t for d in docs for t in d]
    assert ds.total_tokens == len(flat)
    assert ds.tokens(5, 17).tolist() == flat[5:22]
    assert ds[-1].tolist() == docs[-1]


def test_documents_of_several_items_and_wide_dtypes(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "w", np.int32)
    builder.add_item([70000, 1])
    builder.add_item([2])
    builder.end_document()
    builder.add_item([3, 4, 5])
    builder.end_document()
    builder.finalize()
    ds = local_dataset(tmp_path / "w")
    assert ds.dtype == np.int32 and len(ds) == 3 and ds.num_docs == 2
    assert ds.document(0).tolist() == [70000, 1, 2]
    assert ds.document(1).tolist() == [3, 4, 5]
    assert ds.doc_idx.tolist() == [0, 2, 3]


def test_builder_rejects_ids_that_do_not_fit(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "x", np.uint16)
    with pytest.raises(ValueError, match="outside the range"):
        builder.add_item([70000])
    builder.abort()
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_visible_before_finalize(tmp_path: Path) -> None:
    builder = IndexedDatasetBuilder(tmp_path / "p", np.uint16)
    builder.add_item([1, 2, 3])
    assert not (tmp_path / "p.bin").exists() and not (tmp_path / "p.idx").exists()
    builder.finalize()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.bin", "p.idx"]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: b"NOTIDX\x00\x00\x00" + raw[9:], "not a Megatron/GPT-NeoX index"),
        (lambda raw: raw[:17] + b"\x06" + raw[18:], "not an integer token type"),
        (lambda raw: raw[:-8], "the header promises"),
    ],
)
def test_reader_rejects_broken_indexes(tmp_path: Path, corrupt, message: str) -> None:
    reference_write(tmp_path / "b", random_documents(5, 2))
    idx = tmp_path / "b.idx"
    idx.write_bytes(corrupt(idx.read_bytes()))
    with pytest.raises(IndexFormatError, match=message):
        local_dataset(tmp_path / "b")


def test_reader_rejects_a_truncated_bin(tmp_path: Path) -> None:
    reference_write(tmp_path / "t", [[1, 2, 3], [4, 5]])
    (tmp_path / "t.bin").write_bytes((tmp_path / "t.bin").read_bytes()[:-2])
    with pytest.raises(IndexFormatError, match="back to back"):
        IndexedDataset(LocalFile(tmp_path / "t.idx"), LocalFile(tmp_path / "t.bin"))


def _write_inputs(tmp_path: Path) -> tuple[list[Path], list[str]]:
    texts = ["The cat sat on the mat.\nIt was happy.", "Ein Hund bellt. ü ß", "third one", ""]
    (tmp_path / "one.txt").write_text(texts[0], encoding="utf-8")
    lines = [json.dumps({"text": texts[1], "id": 1}), "", json.dumps({"text": texts[2]})]
    (tmp_path / "more.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    return [tmp_path / "one.txt", tmp_path / "more.jsonl", tmp_path / "empty.txt"], texts


def test_data_build_round_trip(tmp_path: Path, capsys) -> None:
    inputs, texts = _write_inputs(tmp_path)
    out = tmp_path / "out" / "mine"
    (tmp_path / "out").mkdir()  # a missing --out folder is refused (tests/faults)
    argv = ["data", "build", *map(str, inputs), "--out", str(out), "--train-tokenizer", "300"]
    assert cli_main([*argv, "--append-eod"]) == 0
    assert "4 documents" in capsys.readouterr().out
    tok = Tokenizer.from_file(str(out) + ".tokenizer/tokenizer.json")
    eod = tok.token_to_id("<|endoftext|>")
    expected = [tok.encode(t, add_special_tokens=False).ids + [eod] for t in texts]
    ds = local_dataset(out)
    assert [ds.document(i).tolist() for i in range(ds.num_docs)] == expected
    assert ds.sizes.tolist() == [len(e) for e in expected]
    assert [tok.decode(ds.document(i).tolist()[:-1]) for i in range(4)] == texts


def test_data_build_with_an_existing_tokenizer(tmp_path: Path) -> None:
    inputs, texts = _write_inputs(tmp_path)
    first = tmp_path / "first"
    cli_main(["data", "build", str(inputs[0]), "--out", str(first), "--train-tokenizer", "280"])
    second = tmp_path / "second"
    code = cli_main(
        ["data", "build", str(inputs[1]), "--out", str(second), "--tokenizer", f"{first}.tokenizer"]
    )
    assert code == 0
    tok = Tokenizer.from_file(f"{first}.tokenizer/tokenizer.json")
    ds = local_dataset(second)
    assert ds.document(1).tolist() == tok.encode(texts[2], add_special_tokens=False).ids
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(f"{second}.tokenizer").decode(ds.document(0)) == texts[1]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": broken}\n', "bad.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n\n{"body": "no text"}\n', "bad.jsonl:3: expected an object with"),
        ('["a list"]\n', "bad.jsonl:1: expected an object"),
    ],
)
def test_data_build_names_the_bad_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(content)
    argv = ["data", "build", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o")]
    assert cli_main([*argv, "--train-tokenizer", "300"]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("o*"))


def test_data_build_usage_errors(tmp_path: Path, capsys) -> None:
    argv = ["data", "build", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]
    assert cli_main([*argv, "--train-tokenizer", "300"]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    argv = ["data", "build", str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "o")]
    assert cli_main([*argv, "--train-tokenizer", "300"]) == 2
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("hello")
    argv = ["data", "build", str(tmp_path / "a.txt"), "--out", str(tmp_path / "o")]
    assert cli_main([*argv, "--tokenizer", str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # neither tokenizer option: argparse refuses
        cli_main(argv)
    assert exc.value.code == 2
