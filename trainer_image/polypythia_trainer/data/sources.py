"""Byte sources behind the dataset reader: a memory-mapped local file or an object in a store.

Neither loads a file whole: a local file is mapped (pages come in as they are read), a
remote object is read by byte range through the storage contract (``get_range``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from polypythia.errors import UsageError
from polypythia.storage import ObjectStore, StorageNotFound, open_store
from polypythia.storage.uri import connection


class ByteSource(Protocol):
    name: str
    size: int
    remote: bool  # reads cost a network round trip: worth issuing in parallel

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Up to ``length`` bytes from ``offset``."""

    def array(self, offset: int, dtype: np.dtype | type, count: int) -> np.ndarray:
        """``count`` items of ``dtype`` from byte ``offset`` (read-only)."""


class LocalFile:
    """A local file, mapped read-only; the OS pages in what is read."""

    remote = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.size = self.path.stat().st_size
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.size else None

    def __reduce__(self):
        """Pickle the path, not the mapped bytes (Ray ships readers between processes)."""
        return (LocalFile, (self.path,))

    def read(self, offset: int, length: int) -> memoryview:
        if self._map is None:
            return memoryview(b"")
        return memoryview(self._map[offset : offset + length])

    def array(self, offset: int, dtype: np.dtype | type, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        if offset + count * dtype.itemsize > self.size:
            raise IndexError(f"{self.name}: read past the end ({offset}+{count}x{dtype})")
        if count == 0:
            return np.empty(0, dtype)
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset)


class StoreObject:
    """An object in S3/MinIO (or any ObjectStore), read by byte ranges."""

    remote = True

    def __init__(self, store: ObjectStore, key: str, name: str) -> None:
        self.store = store
        self.key = key
        self.name = name
        self.size = store.size(key)

    def read(self, offset: int, length: int) -> bytes:
        return self.store.get_range(self.key, offset, length)

    def array(self, offset: int, dtype: np.dtype | type, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        data = self.read(offset, count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise IndexError(f"{self.name}: read past the end ({offset}+{count}x{dtype})")
        return np.frombuffer(data, dtype=dtype, count=count)


def is_remote(path: str) -> bool:
    return path.startswith("s3://")


def open_source(path: str, *, field: str, storage: Mapping[str, Any] | None = None) -> ByteSource:
    """Open a local path or ``s3://bucket/key`` as a byte source; missing -> UsageError."""
    if is_remote(path):
        store, key = _remote_object(path, storage)
        try:
            return StoreObject(store, key, path)
        except StorageNotFound:
            raise UsageError(f"{field}: {path} does not exist") from None
    local = Path(path).expanduser()
    if not local.is_file():
        raise UsageError(f"{field}: {local} does not exist (or is not a file)")
    return LocalFile(local)


def _remote_object(uri: str, storage: Mapping[str, Any] | None) -> tuple[ObjectStore, str]:
    """The store holding ``s3://bucket/.../name`` and the object's key in it."""
    folder, _, name = uri.rpartition("/")
    store, prefix = open_store(folder, **connection(storage))
    return store, f"{prefix}/{name}" if prefix else name


def fetch_remote_file(uri: str, local: Path, storage: Mapping[str, Any] | None = None) -> bool:
    """Download the object ``uri`` (``s3://bucket/.../name``) to ``local``; False if absent."""
    store, key = _remote_object(uri, storage)
    if not store.exists(key):
        return False
    store.get_file(key, local)
    return True
