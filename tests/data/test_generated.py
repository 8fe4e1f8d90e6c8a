"""The generated demo dataset: built once per cache, safely under concurrency, identical everywhere."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polypythia.errors import UsageError
from polypythia_trainer.data import generated, open_training_data

GENERATED = {"format": "generated", "path": None, "tokenizer": None, "skipBatches": []}

# Builds a small generated dataset in a child process; prints BUILT when it built it.
CHILD = """
import sys
from pathlib import Path
from polypythia_trainer.data import generated
real = generated.build
def build(out, documents):
    print("BUILT", flush=True)
    return real(out, documents)
generated.build = build
print(generated.ensure(Path(sys.argv[1]), documents=int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    data = open_training_data(
        GENERATED, sequence_length=128, vocab_size=1024, data_seed=0, cache_dir=cache
    )
    return cache, data


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("corpus.bin", "corpus.idx", "tokenizer/tokenizer.json"):
        h.update((folder / name).read_bytes())
    return h.hexdigest()


def test_the_demo_dataset_is_grammar_text_with_eod_between_documents(demo) -> None:
    from transformers import AutoTokenizer

    cache, data = demo
    assert data.num_samples * 129 > 2_000_000 // 2
    data.save_tokenizer(cache / "ckpt")
    tok = AutoTokenizer.from_pretrained(cache / "ckpt")
    assert len(tok) <= 1024 and tok.eos_token == "<|endoftext|>"
    batch = data.batch(0, 4)
    assert batch.shape == (4, 129) and batch.max() < 1024
    text = tok.decode(data.dataset.tokens(0, 400))
    assert text.startswith(generated.corpus.generate_documents(1, generated.CORPUS_SEED)[0])
    assert "<|endoftext|>" in text
    eod = tok.convert_tokens_to_ids("<|endoftext|>")
    assert data.dataset.document(0)[-1] == eod
    assert data.dataset.num_docs == generated.DOCUMENTS


def test_the_fast_encoder_matches_the_tokenizer(demo) -> None:
    """The build encodes piece by piece; the result must be the tokenizer's own."""
    from tokenizers import Tokenizer

    cache, data = demo
    tok = Tokenizer.from_file(str(data.tokenizer / "tokenizer.json"))
    docs = generated.corpus.generate_documents(300, generated.CORPUS_SEED)
    eod = tok.token_to_id("<|endoftext|>")
    for i, doc in enumerate(docs):
        assert data.dataset.document(i).tolist() == tok.encode(doc).ids + [eod]


def test_data_seeds_order_the_same_corpus_differently(demo) -> None:
    cache, a = demo
    b = open_training_data(
        GENERATED, sequence_length=128, vocab_size=1024, data_seed=1, cache_dir=cache
    )
    assert not np.array_equal(a.batch(0, 8), b.batch(0, 8))
    assert a.num_samples == b.num_samples and a.dataset.total_tokens == b.dataset.total_tokens


def test_an_existing_build_is_reused(demo, monkeypatch) -> None:
    cache, data = demo

    def no_build(*_args, **_kwargs):
        raise AssertionError("rebuilt a cached dataset")

    monkeypatch.setattr(generated, "build", no_build)
    again = open_training_data(
        GENERATED, sequence_length=128, vocab_size=50304, data_seed=0, cache_dir=cache
    )
    assert np.array_equal(again.batch(3, 8), data.batch(3, 8))


def test_a_model_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="spec.model.vocabSize: 512 is smaller"):
        open_training_data(
            GENERATED, sequence_length=8, vocab_size=512, data_seed=0, cache_dir=tmp_path
        )
    assert not any(tmp_path.iterdir())


def test_concurrent_builds_build_once_and_identically(tmp_path: Path) -> None:
    common, other = tmp_path / "common", tmp_path / "other"
    env = {"PYTHONPATH": ":".join(sys.path), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(cache), "1500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for cache in (common, common, common, other)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    common_out = [out for out, _ in outputs[:3]]
    assert sum(out.count("BUILT") for out in common_out) == 1
    assert len({out.splitlines()[-1] for out in common_out}) == 1
    assert [p.name for p in common.iterdir() if not p.name.endswith(".lock")] == [
        generated.dataset_dir(common, 1500).name
    ]
    assert _digest(generated.dataset_dir(common, 1500)) == _digest(
        generated.dataset_dir(other, 1500)
    )


def test_a_crashed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    real = generated.build

    def crash(out: Path, documents: int) -> dict:
        (out / "corpus.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(generated, "build", crash)
    with pytest.raises(KeyboardInterrupt):
        generated.ensure(tmp_path, documents=200)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(generated, "build", real)
    killed = tmp_path / f".{generated.dataset_dir(tmp_path, 200).name}.tmp-dead"
    killed.mkdir()  # what a SIGKILLed builder leaves; the next builder clears it
    folder = generated.ensure(tmp_path, documents=200)
    assert (folder / "corpus.idx").is_file() and (folder / "tokenizer" / "tokenizer.json").is_file()
    assert not killed.exists()
