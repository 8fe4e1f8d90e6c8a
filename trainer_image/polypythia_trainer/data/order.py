"""Sample order: per-seed pseudo-random permutations and the batches a step consumes.

PolyPythias trains every seed on the same data in a different, pre-shuffled order. The
order here is a keyed Feistel permutation of the sample indices (with cycle walking to
fit any size): a bijection computed per index in O(1) memory, so a 150M-sample Pile
needs no 1.2 GB permutation table, and defined by this code alone (not by a numpy
version's shuffle), so the same seed orders the data identically everywhere.
"""

from __future__ import annotations

import hashlib

import numpy as np

ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixing 64-bit hash (wraps on purpose)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def round_keys(seed: int, epoch: int) -> np.ndarray:
    """Keys of the permutation used for ``epoch`` under data seed ``seed``."""
    digest = hashlib.blake2b(f"polypythia-order:{seed}:{epoch}".encode(), digest_size=8 * ROUNDS)
    return np.frombuffer(digest.digest(), dtype="<u8").astype(np.uint64)


def permute(indices: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """Map each index in [0, n) to its place in a pseudo-random permutation of [0, n)."""
    if n <= 0:
        raise ValueError(f"permute: n must be >= 1, got {n}")
    idx = np.asarray(indices, dtype=np.uint64)
    if idx.size and int(idx.max()) >= n:
        raise ValueError(f"permute: indices must lie in [0, {n})")
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    out = idx.copy()
    todo = np.ones(out.shape, dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            x = out[todo]
            left, right = x >> shift, x & mask
            for key in keys:
                left, right = right, left ^ (_mix(right ^ key) & mask)
            x = (left << shift) | right
            out[todo] = x
            todo[todo] = x >= np.uint64(n)  # cycle walking: encrypt again until inside [0, n)
    return out.astype(np.int64)


def sample_ids(
    positions: np.ndarray, n: int, seed: int, stored: np.ndarray | None = None
) -> np.ndarray:
    """Sample index at each position of the endless stream (epoch after epoch).

    Epoch ``e`` visits all ``n`` samples once, in the order of permutation (seed, e).
    With a ``stored`` order (PolyPythias' per-seed file), epoch 0 follows it exactly
    and later epochs permute its positions.
    """
    positions = np.asarray(positions, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n)
    result = np.empty_like(positions)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        if stored is not None and epoch == 0:
            result[sel] = stored[offsets[sel]]
            continue
        ids = permute(offsets[sel], n, round_keys(seed, int(epoch)))
        result[sel] = ids if stored is None else stored[ids]
    return result


def merge_ranges(skip_ranges: list[list[int]] | list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping half-open ranges covering the same batch indices."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in skip_ranges if int(b) > int(a)):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def batch_index(step: int, skip_ranges: list[list[int]]) -> int:
    """The batch index that 0-based optimiser step ``step`` consumes.

    Batches whose index lies in one of the half-open ranges ``[start, end)`` are never
    consumed (PaLM's spike recipe: rewind, then skip the batches seen around a spike);
    step k takes the k-th batch index that is not skipped.
    """
    if step < 0:
        raise ValueError(f"batch_index: step must be >= 0, got {step}")
    index = step
    for start, end in merge_ranges(skip_ranges):
        if start > index:
            break
        index += end - start
    return index
