"""A local directory as an object store: keys are relative paths, writes are atomic."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

from polypythia.storage.base import (
    StorageFull,
    StorageNotFound,
    check_key,
    check_prefix,
    check_range,
)

# Temp files live next to their target (same file system, so os.replace is atomic);
# listings skip them so a crash mid-write never shows a half-written key.
TEMP_MARK = ".polypythia-tmp-"


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: Path) -> StorageFull:
    """The one message a full disk gets, naming the file that could not be written."""
    return StorageFull(f"{path}: disk full (no space left on the device); free space and rerun")


def _write_temp(path: Path, write) -> str:
    """Write a synced temp file next to ``path`` and return its name; a full disk is
    StorageFull naming ``path`` (no half-written temp file is left behind)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_MARK, dir=path.parent)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise disk_full(path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise disk_full(path) from None
        raise
    return tmp


def atomic_write(path: Path, write) -> None:
    """Create ``path`` by calling ``write(file)`` on a temp file, then renaming it over."""
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStore:
    """Objects as files under ``root``; used for runs on one machine and in tests."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically."""
        atomic_write(self._path(key), lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raise StorageNotFound when absent."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(f"{self.root / key}: no such object") from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset``."""
        check_range(offset, length)
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(f"{self.root / key}: no such object") from None

    def put_file(self, key: str, path: Path) -> None:
        """Copy a local file in under ``key`` atomically."""
        with Path(path).open("rb") as src:
            atomic_write(self._path(key), lambda f: shutil.copyfileobj(src, f, 1 << 20))

    def get_file(self, key: str, path: Path) -> None:
        """Copy ``key`` out to ``path`` atomically."""
        try:
            src = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise StorageNotFound(f"{self.root / key}: no such object") from None
        with src:
            atomic_write(Path(path), lambda f: shutil.copyfileobj(src, f, 1 << 20))

    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        path = self._path(key)
        if not path.is_file():
            raise StorageNotFound(f"{path}: no such object")
        return path.stat().st_size

    def _walk(self, folder: Path) -> Iterator[str]:
        for dirpath, _, files in os.walk(folder):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if not name.startswith(TEMP_MARK):
                    yield name if rel == "." else f"{rel}/{name}"

    def list(self, prefix: str) -> list[str]:
        """All keys starting with ``prefix`` (recursive), sorted."""
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the string prefix.
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        return sorted(k for k in self._walk(folder) if k.startswith(prefix))

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of folder ``prefix`` that hold any object."""
        check_prefix(prefix)
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and any(self._walk(p)))

    def delete(self, key: str) -> None:
        """Remove one object (absent is fine) and folders it leaves empty."""
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix``."""
        for key in self.list(prefix):
            self.delete(key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only when absent: a hard link of a complete temp file either
        lands whole or fails because another writer was first."""
        path = self._path(key)
        tmp = _write_temp(path, lambda f: f.write(data))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The file's bytes and their sha256 (the version compare-and-swap compares)."""
        data = self.get_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def _if_match(self, key: str, version: str, change: Callable[[Path], None]) -> bool:
        """Run ``change(path)`` under an exclusive ``flock`` of the file, only while the
        file at ``key`` is the one locked (not replaced meanwhile) and its content
        hash is ``version``: of two racing writers exactly one sees its version."""
        path = self._path(key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
                        return False  # replaced while we waited for the lock
                except FileNotFoundError:
                    return False
                if hashlib.sha256(f.read()).hexdigest() != version:
                    return False
                change(path)
                return True
            finally:
                with suppress(OSError):
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> str | None:
        """Replace ``key`` only while its content hash is ``version``; the new hash."""

        def replace(path: Path) -> None:
            tmp = _write_temp(path, lambda f: f.write(data))
            os.replace(tmp, path)

        if not self._if_match(key, version, replace):
            return None
        return hashlib.sha256(data).hexdigest()

    def delete_if_match(self, key: str, version: str) -> bool:
        """Delete ``key`` only while its content hash is ``version``."""
        deleted = self._if_match(key, version, lambda path: path.unlink())
        if deleted:
            self._prune(self._path(key).parent)
        return deleted

    def move(self, key: str, new_key: str) -> None:
        """Rename one object (one ``os.replace`` on the same file system)."""
        src, dst = self._path(key), self._path(new_key)
        if not src.is_file():
            raise StorageNotFound(f"{src}: no such object")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self._prune(src.parent)

    def url(self, key: str = "") -> str:
        """The absolute path of ``key`` (the root for ``""``)."""
        return str(self.root / key) if key else str(self.root)

    def local_dir(self, key: str) -> Path | None:
        """``key``'s path under the root: a local store can be read in place."""
        return self.root / check_prefix(key)

    def _prune(self, folder: Path) -> None:
        root = self.root.resolve()
        while folder.resolve() != root:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): a concurrent writer keeps it
                return
            folder = folder.parent
