"""The object-store interface shared by the local directory and S3 back-ends."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from polypythia.errors import RuntimeFault


class StorageError(RuntimeFault):
    """A storage operation failed for a reason other than a missing key or endpoint."""


class StorageNotFound(StorageError, LookupError):
    """The key (or complete checkpoint, run config, evaluation) does not exist."""


class StorageUnavailable(StorageError, ConnectionError):
    """The store cannot be reached now; callers may retry later.

    The message names the endpoint, never the credentials.
    """


class StorageFull(StorageError):
    """The store has no room left (a full local disk); retrying will not help by itself."""


@runtime_checkable
class ObjectStore(Protocol):
    """Flat keys (``a/b/c.json``) mapped to bytes; ``/`` only separates folders."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; readers see the old or the new object, never a mix."""

    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raise StorageNotFound when the key is absent."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` (fewer at the end, b"" past it)."""

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file under ``key``."""

    def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` atomically (temp file + rename)."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly ``key``."""

    def size(self, key: str) -> int:
        """The object's size in bytes; raise StorageNotFound when absent."""

    def list(self, prefix: str) -> list[str]:
        """All keys starting with ``prefix`` (recursive), sorted."""

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of folder ``prefix``, sorted."""

    def delete(self, key: str) -> None:
        """Remove one object; absent keys are fine (deletion is idempotent)."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix``."""

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only when absent (atomically); False when it already existed."""

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its version tag (S3 ETag, a content hash locally);
        StorageNotFound when absent."""

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` only while its version is still ``version`` (compare-and-swap);
        the new version, or None when the object changed or is gone."""

    def delete_if_match(self, key: str, version: str) -> bool:
        """Delete ``key`` only while its version is still ``version``."""

    def move(self, key: str, new_key: str) -> None:
        """Rename one object (quarantine); StorageNotFound when ``key`` is absent."""

    def url(self, key: str = "") -> str:
        """Where ``key`` lives, for messages and URIs (a local path or ``s3://bucket/key``)."""

    def local_dir(self, key: str) -> Path | None:
        """The file or folder of ``key`` on this machine when the store is local, else None."""


def check_key(key: str) -> str:
    """Reject keys that would escape a local root or mean different things per back-end."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"storage key {key!r}: must be non-empty, relative, not end in '/'")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"storage key {key!r}: no empty, '.' or '..' path components")
    return key


def check_prefix(prefix: str) -> str:
    """A prefix is empty, or a key fragment without '.'/'..' components (may end in '/')."""
    if prefix:
        check_key(prefix.rstrip("/") or "/")
    return prefix


def check_range(offset: int, length: int) -> None:
    """Range reads take a non-negative offset and length."""
    if offset < 0 or length < 0:
        raise ValueError(f"range read: offset and length must be >= 0, got {offset}, {length}")
