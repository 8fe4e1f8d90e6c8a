"""Per-seed sample order and the batch a step consumes."""

from __future__ import annotations

import numpy as np
import pytest

from polypythia_trainer.data import batch_index
from polypythia_trainer.data.order import merge_ranges, permute, round_keys, sample_ids


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_every_seed_order_is_a_permutation(n: int) -> None:
    for seed in range(3):
        order = permute(np.arange(n), n, round_keys(seed, 0))
        assert sorted(order.tolist()) == list(range(n))


def test_order_is_deterministic_and_differs_across_seeds_and_epochs() -> None:
    n = 5000
    a = permute(np.arange(n), n, round_keys(0, 0))
    assert np.array_equal(a, permute(np.arange(n), n, round_keys(0, 0)))
    b = permute(np.arange(n), n, round_keys(1, 0))
    c = permute(np.arange(n), n, round_keys(0, 1))
    assert (a != b).mean() > 0.99 and (a != c).mean() > 0.99
    assert abs(np.corrcoef(a, np.arange(n))[0, 1]) < 0.05  # shuffled, not shifted


def test_order_of_a_pile_sized_dataset_needs_no_table() -> None:
    n = 146_000_000
    positions = np.array([0, 1, n // 2, n - 1])
    ids = permute(positions, n, round_keys(7, 0))
    assert ((ids >= 0) & (ids < n)).all() and len(set(ids.tolist())) == 4
    assert np.array_equal(ids, permute(positions, n, round_keys(7, 0)))


def test_stream_wraps_with_a_fresh_permutation_each_epoch() -> None:
    n = 100
    ids = sample_ids(np.arange(3 * n), n, seed=4)
    epochs = ids.reshape(3, n)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1])


def test_a_stored_order_is_followed_in_the_first_epoch() -> None:
    n = 50
    stored = np.random.default_rng(0).permutation(n)
    ids = sample_ids(np.arange(2 * n), n, seed=0, stored=stored)
    assert np.array_equal(ids[:n], stored)
    assert sorted(ids[n:].tolist()) == list(range(n))


def test_batch_index_without_skips_is_the_step() -> None:
    assert [batch_index(s, []) for s in range(5)] == [0, 1, 2, 3, 4]


def test_batch_index_skips_half_open_ranges() -> None:
    consumed = [batch_index(s, [[2, 4], [5, 7]]) for s in range(6)]
    assert consumed == [0, 1, 4, 7, 8, 9]


def test_batch_index_with_overlapping_and_unsorted_ranges() -> None:
    skips = [[10, 20], [3, 5], [15, 25], [25, 26]]
    skipped = {i for a, b in skips for i in range(a, b)}
    expected = [i for i in range(100) if i not in skipped][:50]
    assert [batch_index(s, skips) for s in range(50)] == expected
    assert merge_ranges(skips) == [(3, 5), (10, 26)]


def test_batch_index_rejects_negative_steps() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        batch_index(-1, [])
