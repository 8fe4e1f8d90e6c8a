"""The outlier test's null simulations, kept on disk across restarts (an adapter).

Simulating the null of one (seeds, checkpoints) shape takes tens of seconds to minutes of
CPU; the operator and ``polypythia outliers`` used to redo it after every restart. Each
simulation is stored as ``<folder>/<key>.npz`` where ``key`` hashes everything the
result depends on (the caller's parameters: shape, simulation sizes, RNG seed, numpy's
version and the statistics' code). Two writers are safe: each writes a private temporary
file and renames it into place (atomic on one file system), and both write the same bytes
for the same key. A reader checks the stored key and array sizes; a file that does not
pass (damaged, foreign, truncated) is ignored and replaced. No folder, or one that cannot
be written, only means the simulation is kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CACHE_ENV = "POLYPYTHIA_CACHE"  # the trainer's cache folder too
FOLDER = "outlier-null"

Sims = tuple[tuple[np.ndarray, np.ndarray], ...]


def cache_folder() -> Path:
    """``$POLYPYTHIA_CACHE/outlier-null``, else ``~/.cache/polypythia/outlier-null``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "polypythia"
    return Path(root) / FOLDER


def cache_key(params: Mapping[str, object]) -> str:
    """A file-name-safe digest of the parameters (JSON with sorted keys)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(folder: Path, key: str, pairs: int, length: int) -> Sims | None:
    """The stored simulation of ``key`` (``pairs`` sorted (level, change) arrays of
    ``length`` each), or None when absent or not sound."""
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            sims = tuple(
                (np.array(stored[f"level{i}"]), np.array(stored[f"change{i}"]))
                for i in range(pairs)
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    for arrays in sims:
        for a in arrays:
            if a.shape != (length,) or a.dtype != np.float64:
                return None
            finite = a[np.isfinite(a)]
            if np.any(np.diff(finite) < 0):
                return None
    return sims


def save(folder: Path, key: str, sims: Sequence[tuple[np.ndarray, np.ndarray]], params) -> bool:
    """Store ``sims`` under ``key`` (temporary file, then an atomic rename); False when
    the folder cannot be written."""
    arrays: dict[str, np.ndarray] = {
        "key": np.array(key),
        "params": np.array(json.dumps(params, sort_keys=True)),
    }
    for i, (level, change) in enumerate(sims):
        arrays[f"level{i}"], arrays[f"change{i}"] = level, change
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, folder / f"{key}.npz")
        return True
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False
