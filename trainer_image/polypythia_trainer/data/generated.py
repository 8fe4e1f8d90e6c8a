"""The demo dataset: the project's grammar corpus, its BPE tokenizer and token files, cached.

Built once per cache folder. Concurrent runs (several Ray workers on one machine) take
a file lock, so one builds while the others wait; the build happens in a temporary
folder renamed into place at the end, so a crash never leaves a half-built dataset.
Every build is identical (fixed corpus seed, deterministic tokenizer training), so
workers on different machines building their own copies train on the same tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer

from polypythia import corpus
from polypythia_trainer.data.indexed import IndexedDatasetBuilder, best_dtype
from polypythia_trainer.data.tokenizer import EOD, save_hf, train_bpe

DOCUMENTS = 48_000  # about 2.1M tokens: several epochs' worth of room for the demo runs
VOCAB_SIZE = 1024
TOKENIZER_DOCUMENTS = 8_000  # the grammar's every word occurs many times in these
CORPUS_SEED = 0  # one corpus for all runs; data seeds change its order, not its content
PREFIX = "corpus"  # <dir>/corpus.bin, corpus.idx
TOKENIZER_DIR = "tokenizer"


def dataset_dir(cache_dir: str | Path, documents: int = DOCUMENTS) -> Path:
    """Where the generated dataset lives; the name changes whenever its content would."""
    name = f"generated-c{corpus.CORPUS_VERSION}-d{documents}-v{VOCAB_SIZE}"
    return Path(cache_dir).expanduser().absolute() / name


# The grammar writes letters, single spaces and full stops only; on such text the byte-level
# pre-tokenizer splits exactly here, and BPE never merges across pieces.
_PIECE = re.compile(r" ?[A-Za-z]+|\.")


def _piece_encoder(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    """Encode grammar text piece by piece with a cache: several times faster than encoding.

    Any text the pieces do not cover exactly goes to the tokenizer itself.
    """
    cache: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        pieces = _PIECE.findall(text)
        if sum(map(len, pieces)) != len(text):
            return tokenizer.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for piece in pieces:
            found = cache.get(piece)
            if found is None:
                found = cache[piece] = tokenizer.encode(piece, add_special_tokens=False).ids
            ids.extend(found)
        return ids

    return encode


def build(out_dir: Path, documents: int = DOCUMENTS) -> dict:
    """Generate, tokenise and write the corpus into ``out_dir``; returns its statistics."""
    started = time.perf_counter()
    docs = corpus.generate_documents(documents, CORPUS_SEED)
    tokenizer = train_bpe(docs[:TOKENIZER_DOCUMENTS], VOCAB_SIZE)
    eod = tokenizer.token_to_id(EOD)
    builder = IndexedDatasetBuilder(out_dir / PREFIX, best_dtype(VOCAB_SIZE))
    tokens = 0
    encode = _piece_encoder(tokenizer)
    for doc in docs:
        ids = encode(doc)
        ids.append(eod)
        builder.add_item(np.asarray(ids, dtype=np.int64))
        builder.end_document()
        tokens += len(ids)
    builder.finalize()
    save_hf(tokenizer, out_dir / TOKENIZER_DIR)
    stats = {
        "corpusVersion": corpus.CORPUS_VERSION,
        "documents": documents,
        "tokens": tokens,
        "vocabSize": VOCAB_SIZE,
        "buildSeconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / "dataset.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def ensure(cache_dir: str | Path, documents: int = DOCUMENTS) -> Path:
    """The generated dataset's folder, building it first if no earlier run did."""
    final = dataset_dir(cache_dir, documents)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process built it while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed builder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; other users of the cache read it
            build(tmp, documents)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
