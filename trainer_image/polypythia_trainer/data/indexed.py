"""GPT-NeoX / Megatron-LM indexed token datasets (``.bin`` + ``.idx``, "MMapIndexedDataset").

The format of the pre-tokenised Pile that Pythia trained on. ``PREFIX.bin`` holds the
token ids of every item back to back; ``PREFIX.idx`` holds::

    magic  b"MMIDIDX\\x00\\x00"      9 bytes
    version                         <Q  (1)
    dtype code                      <B  (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)
    number of items                 <Q
    number of doc_idx entries       <Q
    sizes     int32[items]          tokens per item
    pointers  int64[items]          byte offset of each item in .bin
    doc_idx   int64[docs + 1]       item index where each document starts (then the end)

The reader never loads the files whole: locally it maps them (``np.memmap``), remotely
it reads byte ranges through the storage contract.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from polypythia_trainer.data.sources import ByteSource

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, items, doc_idx entries

# GPT-NeoX's codes (6 and 7 are floats there; token files are integers).
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}


class IndexFormatError(ValueError):
    """The .idx/.bin pair is not a valid indexed dataset; the message names the file."""


def best_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (as Megatron does), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


class IndexedDatasetBuilder:
    """Write a dataset item by item; nothing is visible under the prefix until ``finalize``.

    Usage as in Megatron: ``add_item(tokens)`` per item, ``end_document()`` after the
    items of one document (one item per document is usual), then ``finalize()``.
    Both files are written to temporary names and renamed, the index last, so a crash
    never leaves a prefix that opens as a complete dataset.
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype | type = np.uint16) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"dtype {self.dtype}: must be one of {sorted(map(str, CODE_OF))}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_bin = self.prefix.with_name(f"{self.prefix.name}.bin.tmp-{os.getpid()}")
        self._bin = self._tmp_bin.open("wb")
        self._sizes = array("i")
        self._doc_idx = array("q", [0])
        self._max = np.iinfo(self.dtype).max
        self._min = np.iinfo(self.dtype).min

    def add_item(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append one item (a sequence of token ids)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"add_item: expected a 1-D sequence of token ids, got {arr.shape}")
        if arr.size and (int(arr.max()) > self._max or int(arr.min()) < self._min):
            raise ValueError(f"add_item: token ids outside the range of {self.dtype}")
        if arr.size >= 2**31:
            raise ValueError("add_item: an item must have fewer than 2**31 tokens")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(arr.size)

    def end_document(self) -> None:
        """Close the current document (its items are those added since the last call)."""
        self._doc_idx.append(len(self._sizes))

    def abort(self) -> None:
        """Drop everything written so far."""
        self._bin.close()
        self._tmp_bin.unlink(missing_ok=True)

    def finalize(self) -> Path:
        """Write the index and publish both files; returns the prefix."""
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        sizes = np.frombuffer(self._sizes, dtype=np.int32)
        pointers = np.zeros(len(sizes), dtype=np.int64)
        if len(sizes) > 1:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.frombuffer(self._doc_idx, dtype=np.int64)
        tmp_idx = self.prefix.with_name(f"{self.prefix.name}.idx.tmp-{os.getpid()}")
        try:
            with tmp_idx.open("wb") as f:
                f.write(HEADER.pack(MAGIC, VERSION, CODE_OF[self.dtype], len(sizes), len(doc_idx)))
                f.write(sizes.tobytes())
                f.write(pointers.tobytes())
                f.write(doc_idx.tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp_bin, bin_path(self.prefix))
            os.replace(tmp_idx, idx_path(self.prefix))
        except BaseException:
            tmp_idx.unlink(missing_ok=True)
            self._tmp_bin.unlink(missing_ok=True)
            raise
        return self.prefix


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


class IndexedDataset:
    """Read an indexed dataset from two byte sources (.idx and .bin), lazily.

    ``tokens(start, count)`` reads the flat token stream (all items back to back), the
    view GPT-NeoX's sample builder and Pythia's batch viewer take.
    """

    def __init__(self, index: ByteSource, data: ByteSource) -> None:
        self._index = index
        self._data = data
        head = index.read(0, HEADER.size)
        if len(head) < HEADER.size:
            raise IndexFormatError(f"{index.name}: too short for an indexed-dataset header")
        magic, version, code, n_items, n_doc = HEADER.unpack(head)
        if magic != MAGIC:
            raise IndexFormatError(
                f"{index.name}: not a Megatron/GPT-NeoX index (magic {magic!r}, want {MAGIC!r})"
            )
        if version != VERSION:
            raise IndexFormatError(f"{index.name}: index version {version}, only 1 is supported")
        if code not in DTYPE_CODES:
            raise IndexFormatError(
                f"{index.name}: dtype code {code} is not an integer token type "
                f"(allowed {sorted(DTYPE_CODES)})"
            )
        self.dtype = DTYPE_CODES[code]
        self.num_items = n_items
        self.num_doc_idx = n_doc
        self._sizes_at = HEADER.size
        self._pointers_at = self._sizes_at + 4 * n_items
        self._doc_idx_at = self._pointers_at + 8 * n_items
        expected = self._doc_idx_at + 8 * n_doc
        if index.size != expected:
            raise IndexFormatError(
                f"{index.name}: {index.size} bytes, the header promises {expected}"
            )
        self.total_tokens = self._count_tokens()

    def _count_tokens(self) -> int:
        """Tokens in .bin, checked against the index's last item (items are contiguous)."""
        if self.num_items == 0:
            return 0
        last_size = int(self._index.array(self._pointers_at - 4, np.int32, 1)[0])
        last_pointer = int(self._index.array(self._doc_idx_at - 8, np.int64, 1)[0])
        first_pointer = int(self._index.array(self._pointers_at, np.int64, 1)[0])
        end = last_pointer + last_size * self.dtype.itemsize
        if first_pointer != 0 or end != self._data.size:
            raise IndexFormatError(
                f"{self._data.name}: {self._data.size} bytes, the index describes {end} "
                "(items must lie back to back from offset 0)"
            )
        return end // self.dtype.itemsize

    @property
    def remote(self) -> bool:
        """Whether token reads go over the network (then batches read samples in parallel)."""
        return self._data.remote

    @property
    def num_docs(self) -> int:
        return max(self.num_doc_idx - 1, 0)

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per item (a memory map locally; read in full from remote storage)."""
        return self._index.array(self._sizes_at, np.int32, self.num_items)

    @property
    def pointers(self) -> np.ndarray:
        return self._index.array(self._pointers_at, np.int64, self.num_items)

    @property
    def doc_idx(self) -> np.ndarray:
        return self._index.array(self._doc_idx_at, np.int64, self.num_doc_idx)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, i: int) -> np.ndarray:
        """The tokens of item ``i``."""
        if not -self.num_items <= i < self.num_items:
            raise IndexError(f"item {i} out of range ({self.num_items} items)")
        i %= self.num_items
        size = int(self._index.array(self._sizes_at + 4 * i, np.int32, 1)[0])
        pointer = int(self._index.array(self._pointers_at + 8 * i, np.int64, 1)[0])
        return self._data.array(pointer, self.dtype, size)

    def item_starts(self) -> np.ndarray:
        """Token position of each item in the flat stream (pointers / itemsize)."""
        return self.pointers // self.dtype.itemsize

    def item_start(self, i: int) -> int:
        """Token position of item ``i`` in the flat stream (``num_items``: the end), read
        alone (a split boundary needs one pointer, not the whole array)."""
        if not 0 <= i <= self.num_items:
            raise IndexError(f"item {i} out of range ({self.num_items} items)")
        if i == self.num_items:
            return self.total_tokens
        pointer = int(self._index.array(self._pointers_at + 8 * i, np.int64, 1)[0])
        return pointer // self.dtype.itemsize

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset .. offset + length`` of item ``i`` (to its end when ``length`` is
        None): Megatron's ``MMapIndexedDataset.get``, what GPT-NeoX's samples are cut with."""
        if not 0 <= i < self.num_items:
            raise IndexError(f"item {i} out of range ({self.num_items} items)")
        size = int(self._index.array(self._sizes_at + 4 * i, np.int32, 1)[0])
        pointer = int(self._index.array(self._pointers_at + 8 * i, np.int64, 1)[0])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"item {i}: tokens [{offset}, {offset + length}) outside [0, {size})")
        return self._data.array(pointer + offset * self.dtype.itemsize, self.dtype, length)

    def document(self, d: int) -> np.ndarray:
        """The tokens of document ``d`` (its items joined)."""
        first, last = (int(x) for x in self._index.array(self._doc_idx_at + 8 * d, np.int64, 2))
        return np.concatenate([self[i] for i in range(first, last)] or [np.empty(0, self.dtype)])

    def tokens(self, start: int, count: int) -> np.ndarray:
        """``count`` tokens of the flat stream from token ``start``."""
        if start < 0 or count < 0 or start + count > self.total_tokens:
            raise IndexError(f"tokens [{start}, {start + count}) outside [0, {self.total_tokens})")
        return self._data.array(start * self.dtype.itemsize, self.dtype, count)
