"""Text files to an indexed token dataset: what ``polypythia data build`` does.

Inputs are plain text files (one document each) or JSON-lines files (``.jsonl``, one
document per line in a ``text`` field). Documents stream through: memory holds one
chunk of documents at a time, never the corpus.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from polypythia.errors import UsageError
from polypythia.jsonlines import json_lines
from polypythia_trainer.data.indexed import IndexedDatasetBuilder, best_dtype
from polypythia_trainer.data.tokenizer import EOD, copy_hf, load, save_hf, train_bpe

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CHUNK = 1024


@dataclass(frozen=True)
class BuildResult:
    prefix: Path
    tokenizer_dir: Path
    documents: int
    tokens: int
    vocab_size: int
    seconds: float


def tokenizer_dir(prefix: Path) -> Path:
    """The tokenizer written next to a dataset: ``PREFIX.tokenizer/`` (found by the reader)."""
    return Path(f"{prefix}.tokenizer")


def check_inputs(inputs: list[Path]) -> None:
    if not inputs:
        raise UsageError("INPUT: give at least one text or .jsonl file")
    for path in inputs:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")


def read_documents(inputs: list[Path], text_field: str = "text") -> Iterator[str]:
    """Every document of every input, in order; bad lines raise UsageError naming file:line."""
    for path in inputs:
        try:
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from _jsonl_documents(path, text_field)
            else:
                yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror})") from None


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for number, record in json_lines(f, path):
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise UsageError(
                    f"{path}:{number}: expected an object with a string field {text_field!r}"
                )
            yield text


def eod_id(tokenizer: Tokenizer) -> int:
    """The end-of-document token's id; a tokenizer without ``<|endoftext|>`` cannot mark EOD."""
    found = tokenizer.token_to_id(EOD)
    if found is None:
        raise UsageError(f"--append-eod: the tokenizer has no {EOD} token")
    return found


def build_dataset(
    inputs: list[Path],
    prefix: Path,
    *,
    tokenizer: Path | None = None,
    train_vocab: int | None = None,
    append_eod: bool = False,
    text_field: str = "text",
) -> BuildResult:
    """Tokenise ``inputs`` into ``PREFIX.bin``/``.idx`` and write ``PREFIX.tokenizer/``."""
    started = time.perf_counter()
    check_inputs(inputs)
    folder = Path(prefix).parent
    if not folder.is_dir():
        raise UsageError(f"--out {prefix}: folder {folder} does not exist (create it first)")
    if (tokenizer is None) == (train_vocab is None):
        raise UsageError("give exactly one of --tokenizer PATH and --train-tokenizer VOCAB")
    if train_vocab is not None:
        tok = train_bpe(read_documents(inputs, text_field), train_vocab)
    else:
        tok = load(tokenizer, "--tokenizer")
    eod = eod_id(tok) if append_eod else None
    vocab = tok.get_vocab_size(with_added_tokens=True)
    builder = IndexedDatasetBuilder(prefix, best_dtype(vocab))
    documents = tokens = 0
    try:
        docs = read_documents(inputs, text_field)
        while chunk := list(islice(docs, CHUNK)):
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                ids = enc.ids + [eod] if eod is not None else enc.ids
                builder.add_item(np.asarray(ids, dtype=np.int64))
                builder.end_document()
                documents += 1
                tokens += len(ids)
    except BaseException:
        builder.abort()
        raise
    if tokens == 0:
        builder.abort()
        names = ", ".join(str(i) for i in inputs)
        raise UsageError(f"{names}: no text in the input (0 tokens); nothing to build")
    builder.finalize()
    out_tok = tokenizer_dir(prefix)
    if tokenizer is not None:
        copy_hf(tokenizer, out_tok)
    else:
        save_hf(tok, out_tok)
    return BuildResult(
        prefix, out_tok, documents, tokens, vocab, round(time.perf_counter() - started, 2)
    )
