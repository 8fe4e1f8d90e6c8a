"""GPT-NeoX v1.0's per-seed data order: doc/sample/shuffle index maps, byte for byte.

Source: EleutherAI/gpt-neox v1.0, ``megatron/data/gpt2_dataset.py`` (``_build_index_mappings``,
``_num_epochs``, ``_build_doc_idx``, ``_build_shuffle_idx``), ``megatron/data/helpers.cpp``
(``build_sample_idx``) and ``megatron/data/data_utils.py`` (``num_samples`` with the 1.005
factor, dataset name ``train_0`` for the first ``train-data-paths`` entry). One
``numpy.random.RandomState(seed)`` shuffles the documents (repeated per epoch), then the
samples; samples are ``L + 1`` tokens of the shuffled document stream and overlap by one.

``build_sample_idx`` here is vectorised: sample ``k`` starts at token ``k x L`` of the
shuffled stream (each sample takes ``L + 1`` tokens and the next starts on its last), so
its (document, offset) is a sorted search over the stream's document ends, done in chunks.
The files are read memory-mapped; a worker never holds them whole.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from polypythia.errors import UsageError

DATASET_NAME = "train_0"  # data_utils.build_weighted_datasets: f"train_{i}" for path i = 0
BLEND_FACTOR = 1.005  # data_utils.get_normalized_weights_and_num_samples
KINDS = ("doc", "sample", "shuffle")
_CHUNK_DOCS = 1 << 22
_NAME = re.compile(
    r"^(?P<prefix>.+)_(?P<name>[^_]+_\d+)_indexmap_(?P<ns>\d+)ns_(?P<sl>\d+)sl_(?P<seed>\d+)s_(?P<kind>doc|sample|shuffle)_idx\.npy$"
)


def num_samples(train_iters: int, global_batch_size: int) -> int:
    """Samples GPT-NeoX asks of a single ``train-data-paths`` entry (weight 1.0)."""
    weight = 1.0 / 1.0  # normalised weight of the only path
    return int(math.ceil(train_iters * global_batch_size * weight * BLEND_FACTOR))


def num_epochs(tokens_per_epoch: int, seq_length: int, samples: int) -> int:
    """The smallest number of epochs whose tokens give ``samples`` samples (overlap of 1)."""
    if tokens_per_epoch < 2:
        raise ValueError(f"a dataset needs at least 2 tokens, got {tokens_per_epoch}")
    epochs = 0
    total = 0
    while True:
        epochs += 1
        total += tokens_per_epoch
        if (total - 1) // seq_length >= samples:
            return epochs


def samples_built(tokens_per_epoch: int, seq_length: int, epochs: int) -> int:
    """Rows of sample_idx minus one: every sample the epochs hold, not just those asked for."""
    return (epochs * tokens_per_epoch - 1) // seq_length


@dataclass(frozen=True)
class IndexFiles:
    """The three file names of one (dataset, samples, sequence length, seed)."""

    doc: Path
    sample: Path
    shuffle: Path

    def paths(self) -> dict[str, Path]:
        return {"doc": self.doc, "sample": self.sample, "shuffle": self.shuffle}


def index_files(
    folder: str | Path,
    data_name: str,
    samples: int,
    seq_length: int,
    seed: int,
    dataset_name: str = DATASET_NAME,
) -> IndexFiles:
    """``<folder>/<data_name>_<dataset_name>_indexmap_<N>ns_<L>sl_<S>s_{doc,sample,shuffle}_idx.npy``
    (``train_0`` for a ``train-data-paths`` entry, ``train`` for a split ``data-path``)."""
    stem = f"{data_name}_{dataset_name}_indexmap_{samples}ns_{seq_length}sl_{seed}s"
    folder = Path(folder)
    return IndexFiles(*(folder / f"{stem}_{kind}_idx.npy" for kind in KINDS))


def parse_index_name(name: str) -> dict | None:
    """The parts of a GPT-NeoX index-map file name, or None for another file."""
    match = _NAME.match(Path(name).name)
    if match is None:
        return None
    parts = match.groupdict()
    return {
        "prefix": parts["prefix"],
        "name": parts["name"],
        "samples": int(parts["ns"]),
        "seq_length": int(parts["sl"]),
        "seed": int(parts["seed"]),
        "kind": parts["kind"],
    }


def build_doc_idx(num_docs: int, epochs: int, rng: np.random.RandomState) -> np.ndarray:
    """Document ids 0..n-1 repeated ``epochs`` times (int32), shuffled by ``rng``.

    The same values as GPT-NeoX's ``np.mgrid`` construction, without its int64 temporary.
    """
    doc_idx = np.tile(np.arange(num_docs, dtype=np.int32), epochs)
    rng.shuffle(doc_idx)
    return doc_idx


def build_sample_idx(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, epochs: int, tokens_per_epoch: int
) -> np.ndarray:
    """``[samples + 1, 2]`` int32: (position in doc_idx, offset) where each sample starts.

    Equal to helpers.cpp's ``build_sample_idx``: sample k starts at stream token k x L;
    documents of zero tokens are stepped over, and sample 0 is (0, 0) as there.
    """
    total = samples_built(tokens_per_epoch, seq_length, epochs)
    out = np.empty((total + 1, 2), dtype=np.int32)
    base = 0  # stream position of the chunk's first token
    next_sample = 0
    for first in range(0, len(doc_idx), _CHUNK_DOCS):
        if next_sample > total:
            break
        lengths = sizes[doc_idx[first : first + _CHUNK_DOCS]].astype(np.int64)
        ends = np.cumsum(lengths)
        ends += base
        last_sample = min((int(ends[-1]) - 1) // seq_length, total) if len(ends) else -1
        if last_sample >= next_sample:
            positions = np.arange(next_sample, last_sample + 1, dtype=np.int64) * seq_length
            where = np.searchsorted(ends, positions, side="right")
            starts = ends[where] - lengths[where]
            out[next_sample : last_sample + 1, 0] = where + first
            out[next_sample : last_sample + 1, 1] = positions - starts
            next_sample = last_sample + 1
        base = int(ends[-1]) if len(ends) else base
    if next_sample <= total:
        raise ValueError(f"the documents hold {base} tokens, fewer than {total} samples need")
    out[0] = (0, 0)
    return out


def build_shuffle_idx(size: int, rng: np.random.RandomState) -> np.ndarray:
    """``arange(size)`` shuffled by ``rng``: uint32 below 2^32 - 1, else int64 (as GPT-NeoX)."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_idx = np.arange(size, dtype=dtype)
    rng.shuffle(shuffle_idx)
    return shuffle_idx


def _save(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, then rename: a crash never leaves a short file."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            np.save(f, array, allow_pickle=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def build_index_files(
    files: IndexFiles, sizes: np.ndarray, seq_length: int, seed: int, samples: int
) -> None:
    """Write GPT-NeoX's three files for ``sizes`` (tokens per document), in its RNG order."""
    tokens_per_epoch = int(np.sum(sizes, dtype=np.int64))
    epochs = num_epochs(tokens_per_epoch, seq_length, samples)
    rng = np.random.RandomState(seed=seed)
    files.doc.parent.mkdir(parents=True, exist_ok=True)
    doc_idx = build_doc_idx(len(sizes), epochs, rng)
    _save(files.doc, doc_idx)
    sample_idx = build_sample_idx(sizes, doc_idx, seq_length, epochs, tokens_per_epoch)
    del doc_idx
    _save(files.sample, sample_idx)
    count = sample_idx.shape[0] - 1
    del sample_idx
    _save(files.shuffle, build_shuffle_idx(count, rng))


@dataclass(frozen=True)
class Expected:
    """What index maps for one dataset must look like (derived from its .idx header)."""

    num_docs: int
    tokens_per_epoch: int
    seq_length: int
    samples: int

    @property
    def epochs(self) -> int:
        return num_epochs(self.tokens_per_epoch, self.seq_length, self.samples)

    @property
    def built(self) -> int:
        return samples_built(self.tokens_per_epoch, self.seq_length, self.epochs)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
        shuffle_dtype = "uint32" if self.built < np.iinfo(np.uint32).max - 1 else "int64"
        return {
            "doc": ((self.epochs * self.num_docs,), ("int32",)),
            "sample": ((self.built + 1, 2), ("int32",)),
            "shuffle": ((self.built,), (shuffle_dtype,)),
        }


class MegatronOrder:
    """The three index maps of one run, memory-mapped, and the samples they define."""

    def __init__(
        self, files: IndexFiles, expected: Expected, field: str = "spec.data.indexDir"
    ) -> None:
        self.files = files
        self.expected = expected
        self.field = field
        arrays = {
            kind: _open_checked(path, kind, expected, field) for kind, path in files.paths().items()
        }
        self.doc_idx = arrays["doc"]
        self.sample_idx = arrays["sample"]
        self.shuffle_idx = arrays["shuffle"]
        self.num_samples = int(self.shuffle_idx.shape[0])

    def __reduce__(self):
        """Pickle the file names, not the mapped arrays (Ray ships readers between processes)."""
        return (MegatronOrder, (self.files, self.expected, self.field))

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        """The sample_idx row of each dataset position (GPT2Dataset.__getitem__'s first line)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and int(positions.max()) >= self.num_samples:
            raise UsageError(
                f"spec.data: position {int(positions.max())} is past the {self.num_samples} "
                f"samples of {self.files.shuffle.name} (skipBatches or rewinds reach beyond the "
                "samples GPT-NeoX built for this many steps)"
            )
        return self.shuffle_idx[positions].astype(np.int64)

    def pieces_many(self, sample_ids: np.ndarray) -> list[list[tuple[int, int, int]]]:
        """:meth:`pieces` of many samples with one gather per map (the batch viewer's path)."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        first = np.asarray(self.sample_idx[ids])  # (n, 2)
        last = np.asarray(self.sample_idx[ids + 1])
        spans = [np.arange(a, b + 1) for a, b in zip(first[:, 0], last[:, 0], strict=True)]
        docs = np.asarray(self.doc_idx[np.concatenate(spans)]).tolist() if spans else []
        out, at = [], 0
        for (doc_f, off_f), (doc_l, off_l), span in zip(
            first.tolist(), last.tolist(), spans, strict=True
        ):
            mine = docs[at : at + len(span)]
            at += len(span)
            if doc_f == doc_l:
                out.append([(mine[0], off_f, off_l - off_f + 1)])
                continue
            pieces = [(mine[0], off_f, -1)] + [(d, 0, -1) for d in mine[1:-1]]
            out.append(pieces + [(mine[-1], 0, off_l + 1)])
        return out

    def pieces(self, sample_id: int) -> list[tuple[int, int, int]]:
        """(document, offset, length) pieces of sample ``sample_id``, as GPT2Dataset reads it."""
        doc_f, off_f = (int(x) for x in self.sample_idx[sample_id])
        doc_l, off_l = (int(x) for x in self.sample_idx[sample_id + 1])
        if doc_f == doc_l:
            return [(int(self.doc_idx[doc_f]), off_f, off_l - off_f + 1)]
        out = [(int(self.doc_idx[doc_f]), off_f, -1)]
        out += [(int(self.doc_idx[i]), 0, -1) for i in range(doc_f + 1, doc_l)]
        out.append((int(self.doc_idx[doc_l]), 0, off_l + 1))
        return out


def map_npy(path: Path) -> np.ndarray:
    """A read-only map of a ``.npy`` file advised for random access.

    Lookups hit a few thousand scattered pages per batch; the kernel's default read-around
    would pull in up to megabytes per page fault (seconds per batch on a 1.3 GB map).
    """
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        readers = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in readers:
            raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
        shape, fortran, dtype = readers[version](f)
        offset = f.tell()
        if fortran or dtype.hasobject:
            raise ValueError("expected a C-ordered array of numbers")
        count = int(np.prod(shape, dtype=np.int64))
        if offset + count * dtype.itemsize > os.fstat(f.fileno()).st_size:
            raise ValueError("the file is shorter than its header says")
        if count == 0:
            return np.empty(shape, dtype)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)


def _open_checked(path: Path, kind: str, expected: Expected, field: str) -> np.ndarray:
    """The file memory-mapped, or a UsageError naming it and what was expected."""
    shape, dtypes = expected.shapes()[kind]
    if not path.is_file():
        raise UsageError(f"{field}: {path} is missing (expected {kind}_idx {shape})")
    try:
        array = map_npy(path)
    except ValueError as exc:
        raise UsageError(f"{field}: {path} is not a .npy array ({exc})") from None
    if array.shape != shape or array.dtype.name not in dtypes:
        raise UsageError(
            f"{field}: {path} holds {array.dtype.name} {array.shape}, expected "
            f"{'/'.join(dtypes)} {shape} for {expected.num_docs} documents, "
            f"{expected.tokens_per_epoch} tokens, sequence length {expected.seq_length} and "
            f"{expected.samples} samples"
        )
    return array


def _others(folder: Path, data_name: str, files: IndexFiles) -> str:
    """Index maps of the same dataset for other parameters, named for the error message."""
    found = []
    if folder.is_dir():
        for item in sorted(folder.iterdir()):
            parts = parse_index_name(item.name)
            if parts and parts["prefix"] == data_name and item not in files.paths().values():
                found.append(item.name)
    return f"; found instead: {', '.join(found[:3])}" if found else ""


def open_order(
    *,
    data_name: str,
    sizes_fn,
    expected: Expected,
    seed: int,
    build_dir: Path | None,
    index_dir: Path | None,
    dataset_name: str = DATASET_NAME,
) -> MegatronOrder:
    """Open the run's index maps: from ``index_dir`` as they are (never written), else
    built once into ``build_dir`` (under a lock) and reused by every later run.

    ``sizes_fn`` returns the documents' token counts; it is called only to build.
    """
    if index_dir is not None:
        files = index_files(
            index_dir, data_name, expected.samples, expected.seq_length, seed, dataset_name
        )
        for kind, path in files.paths().items():
            if not path.is_file():
                raise UsageError(
                    f"spec.data.indexDir: {path} is missing (expected the {kind}_idx file for "
                    f"seed {seed}, sequence length {expected.seq_length}, {expected.samples} "
                    f"samples){_others(index_dir, data_name, files)}"
                )
        return MegatronOrder(files, expected)
    assert build_dir is not None
    files = index_files(
        build_dir, data_name, expected.samples, expected.seq_length, seed, dataset_name
    )
    if not all(p.is_file() for p in files.paths().values()):
        with FileLock(build_dir / f".{files.doc.name}.lock"):
            if not all(p.is_file() for p in files.paths().values()):
                sizes = np.asarray(sizes_fn(), dtype=np.int32)
                build_index_files(files, sizes, expected.seq_length, seed, expected.samples)
    return MegatronOrder(files, expected, "spec.data.path")
