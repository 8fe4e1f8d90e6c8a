"""`data.split`: GPT-NeoX's train/valid/test split of one data file, its arithmetic worked by
hand, training that never reads the validation documents, and the held-out set they give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypythia.errors import UsageError
from polypythia.spec import SpecError, sweep_from_object
from polypythia_eval.validation import split_set, validation_set
from polypythia_trainer.data import IndexedDatasetBuilder, open_training_data
from polypythia_trainer.data.split import split_indices

SEQ = 8
DOCS = 100
DOC_TOKENS = 20


@pytest.mark.parametrize(
    ("split", "size", "expected"),
    [
        # 969/1000 of 1000 is 969, 30/1000 is 30, 1/1000 is 1: no correction.
        ("969,30,1", 1000, (0, 969, 999, 1000)),
        # 0.969 x 2001 = 1938.969 -> 1939; 0.03 x 2001 = 60.03 -> 60; 0.001 x 2001 = 2.001 -> 2.
        ("969,30,1", 2001, (0, 1939, 1999, 2001)),
        # 9.69 -> 10, 0.3 -> 0, 0.01 -> 0: a small file has no validation documents.
        ("969,30,1", 10, (0, 10, 10, 10)),
        # 10/3 = 3.33 -> 3 each, ending at 9: every boundary moves up by 1 (train gains it).
        ("1,1,1", 10, (0, 4, 7, 10)),
        # 8/3 = 2.67 -> 3 each, ending at 9: every boundary moves down by 1.
        ("1,1,1", 8, (0, 2, 5, 8)),
        # 2.5 rounds half to even (Python's round): 2, then 4; shifted up by 1.
        ("1,1", 5, (0, 3, 5, 5)),
        ("0.9/0.1", 11, (0, 10, 11, 11)),
        ("100", 7, (0, 7, 7, 7)),
    ],
)
def test_split_indices_are_gpt_neox_arithmetic_worked_by_hand(split, size, expected) -> None:
    assert split_indices(split, size) == expected


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("a,b", "spec.data.split: 'a,b' is not a GPT-NeoX split"),
        ("1,2/3", "spec.data.split: '1,2/3' is not a GPT-NeoX split"),
        ("1,-1", "spec.data.split: '1,-1' is not a GPT-NeoX split"),
        ("0,0,0", "spec.data.split: '0,0,0' gives every part weight 0"),
    ],
)
def test_a_bad_split_names_the_field(split, message) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        split_indices(split, 10)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """100 documents of 20 tokens; every token of document d is d."""
    root = tmp_path_factory.mktemp("split")
    builder = IndexedDatasetBuilder(root / "d", np.uint16)
    for doc in range(DOCS):
        builder.add_item(np.full(DOC_TOKENS, doc))
        builder.end_document()
    builder.finalize()
    return root / "d"


def _data(prefix: Path, **extra) -> dict:
    return {"format": "megatron", "path": str(prefix), "tokenizer": None, **extra}


@pytest.mark.parametrize("order", ["permutation", "megatron"])
def test_training_reads_only_the_train_documents(dataset, tmp_path, order) -> None:
    data = open_training_data(
        _data(dataset, split="90,8,2", order=order),
        sequence_length=SEQ,
        vocab_size=512,
        data_seed=3,
        cache_dir=tmp_path,
        train_iters=30,
        global_batch_size=4,
        require_tokenizer=False,
    )
    rows = [tokens for tokens, _ in data.read_samples(np.arange(data.num_samples))]
    seen = set(np.unique(np.concatenate(rows)).tolist())
    assert seen == set(range(90))  # every train document, no validation or test one
    if order == "megatron":
        # GPT-NeoX's data-path route: dataset `train`, train_iters x batch samples (no 1.005).
        assert data.megatron.files.doc.name == "d_train_indexmap_120ns_8sl_3s_doc_idx.npy"
        assert data.megatron.expected.num_docs == 90
    else:
        assert data.num_samples == 90 * DOC_TOKENS // (SEQ + 1)


def test_the_validation_documents_are_the_held_out_set(dataset) -> None:
    held = split_set(str(dataset), "90,8,2")
    assert held is not None
    assert held.tokens.tolist() == [d for d in range(90, 98) for _ in range(DOC_TOKENS)]
    assert held.source.endswith("validation documents [90, 98)")
    same = validation_set(_data(dataset, split="90,8,2"), tokenizer=None)
    assert same is not None and same.dataset == held.dataset
    # A validationPath, when given, is the held-out set instead.
    other = validation_set(
        _data(dataset, split="90,8,2", validationPath=str(dataset)), tokenizer=None
    )
    assert other is not None and other.tokens[0] == 0 and other.dataset != held.dataset
    # A split without validation documents gives none.
    assert split_set(str(dataset), "1,0,0") is None


def _sweep(data: dict):
    body = {
        "apiVersion": "polypythia.io/v1alpha1",
        "kind": "PolyPythiaSweep",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"sizes": ["nano"], "seeds": {"list": [0]}, "data": data},
    }
    return sweep_from_object(body, source="test", namespace="default")


def test_the_sweep_carries_the_split_to_the_run_config() -> None:
    from polypythia import planner

    sweep = _sweep({"format": "megatron", "path": "/d/p", "tokenizer": "/d/t", "split": "969,30,1"})
    (run,) = planner.plan_sweep(sweep)
    assert run.config["data"]["split"] == "969,30,1"
    with pytest.raises(SpecError, match="spec.data.split: only used with format megatron"):
        _sweep({"format": "generated", "split": "969,30,1"})
    with pytest.raises(SpecError, match="gives every part weight 0"):
        _sweep({"format": "megatron", "path": "/d/p", "tokenizer": "/d/t", "split": "0,0"})
    with pytest.raises(SpecError, match="spec.data.split"):
        _sweep({"format": "megatron", "path": "/d/p", "tokenizer": "/d/t", "split": "1,2/3"})
