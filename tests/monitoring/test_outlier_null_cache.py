"""The outlier test's null simulations persist on disk: a restarted process reads them back
instead of simulating again, keyed on every input, safe for two writers at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from polypythia.monitoring import null_cache, outliers

SHAPE = (4, 3, 2, False)  # seeds, checkpoints, consecutive, two-sided: small and quick


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(null_cache.CACHE_ENV, str(tmp_path))
    outliers._null_maxima.cache_clear()
    yield tmp_path / null_cache.FOLDER
    outliers._null_maxima.cache_clear()


def _restart() -> None:
    """What a new process starts with: an empty in-memory cache."""
    outliers._null_maxima.cache_clear()


def _no_simulation(*_args):
    raise AssertionError("simulated again instead of reading the stored null")


def test_a_restarted_process_reads_the_stored_null(cache, monkeypatch) -> None:
    first = outliers.null_thresholds(*SHAPE, 0.05)
    (stored,) = cache.glob("*.npz")
    _restart()
    monkeypatch.setattr(outliers, "_simulate_null", _no_simulation)
    assert outliers.null_thresholds(*SHAPE, 0.05) == first
    assert list(cache.glob("*.npz")) == [stored]


def test_the_key_covers_every_input_of_the_simulation(cache, monkeypatch) -> None:
    base = null_cache.cache_key(outliers._null_params(*SHAPE))
    assert null_cache.cache_key(outliers._null_params(4, 3, 2, True)) != base
    assert null_cache.cache_key(outliers._null_params(5, 3, 2, False)) != base
    monkeypatch.setattr(outliers, "NULL_RHOS", (0.0, 0.5))
    assert null_cache.cache_key(outliers._null_params(*SHAPE)) != base
    monkeypatch.undo()
    monkeypatch.setattr(outliers.np, "__version__", "0.0.0")
    assert null_cache.cache_key(outliers._null_params(*SHAPE)) != base


def test_a_damaged_or_foreign_file_is_simulated_again_and_replaced(cache) -> None:
    first = outliers.null_thresholds(*SHAPE, 0.05)
    (stored,) = cache.glob("*.npz")
    good = stored.read_bytes()
    for bad in (good[: len(good) // 2], b"not a zip file"):
        stored.write_bytes(bad)
        _restart()
        assert outliers.null_thresholds(*SHAPE, 0.05) == first
        assert stored.read_bytes() == good
    # A sound file stored under another key's name is not taken for this key.
    other = null_cache.cache_key(outliers._null_params(5, 3, 2, False))
    (cache / f"{other}.npz").write_bytes(good)
    pairs, length = len(outliers.NULL_RHOS), outliers._null_families(5, 3)
    assert null_cache.load(cache, other, pairs, length) is None


def test_an_unwritable_folder_only_keeps_the_null_in_memory(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(null_cache.CACHE_ENV, str(blocker))
    _restart()
    try:
        thresholds = outliers.null_thresholds(*SHAPE, 0.05)
    finally:
        _restart()
    assert all(np.isfinite(thresholds))


def _compute(root: str, queue) -> None:
    import os

    os.environ[null_cache.CACHE_ENV] = root
    outliers._null_maxima.cache_clear()
    queue.put(outliers.null_thresholds(*SHAPE, 0.05))


def test_two_writers_at_once_leave_one_sound_file(cache) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_compute, args=(str(cache.parent), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    (stored,) = cache.glob("*")  # no temporary file left behind
    key = stored.stem
    loaded = null_cache.load(cache, key, len(outliers.NULL_RHOS), outliers._null_families(4, 3))
    assert loaded is not None
    _restart()
    assert outliers.null_thresholds(*SHAPE, 0.05) == results[0]
