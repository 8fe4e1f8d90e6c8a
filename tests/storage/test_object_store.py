"""ObjectStore behaviour, identical for LocalStore and S3Store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polypythia.storage import LocalStore, ObjectStore, StorageNotFound
from polypythia.storage.local import TEMP_MARK, atomic_write


def test_bytes_round_trip_and_overwrite(store: ObjectStore) -> None:
    data = bytes(range(256)) * 10
    store.put_bytes("a/b/blob.bin", data)
    assert store.get_bytes("a/b/blob.bin") == data
    store.put_bytes("a/b/blob.bin", b"new")
    assert store.get_bytes("a/b/blob.bin") == b"new"
    assert store.size("a/b/blob.bin") == 3


def test_missing_key_raises_not_found(store: ObjectStore) -> None:
    with pytest.raises(StorageNotFound, match="nope"):
        store.get_bytes("nope/x.json")
    with pytest.raises(StorageNotFound):
        store.get_range("nope/x.json", 0, 4)
    with pytest.raises(StorageNotFound):
        store.size("nope/x.json")
    assert not store.exists("nope/x.json")


def test_exists_means_exactly_that_key(store: ObjectStore) -> None:
    store.put_bytes("dir/file", b"x")
    assert store.exists("dir/file")
    assert not store.exists("dir")
    assert not store.exists("dir/fil")


def test_file_round_trip_multipart_sized(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(6 * 1024 * 1024 + 123)  # above the 5 MiB multipart part size
    src.write_bytes(payload)
    store.put_file("ckpt/model.safetensors", src)
    dst = tmp_path / "out" / "deep" / "model.safetensors"
    store.get_file("ckpt/model.safetensors", dst)
    assert dst.read_bytes() == payload
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.safetensors"]


def test_get_file_replaces_existing_and_missing_leaves_target(
    store: ObjectStore, tmp_path: Path
) -> None:
    (tmp_path / "dl").mkdir()
    dst = tmp_path / "dl" / "x.json"
    dst.write_text("old")
    store.put_bytes("x.json", b"new")
    store.get_file("x.json", dst)
    assert dst.read_text() == "new"
    with pytest.raises(StorageNotFound):
        store.get_file("missing.json", dst)
    assert dst.read_text() == "new"
    assert [p.name for p in dst.parent.iterdir()] == ["x.json"]


def test_list_is_recursive_sorted_and_a_string_prefix(store: ObjectStore) -> None:
    keys = ["a/b/2", "a/b/1", "a/bc/x", "a/b/deep/er/z", "b/q", "top"]
    for k in keys:
        store.put_bytes(k, b"")
    assert store.list("") == sorted(keys)
    assert store.list("a/b/") == ["a/b/1", "a/b/2", "a/b/deep/er/z"]
    assert store.list("a/b") == ["a/b/1", "a/b/2", "a/b/deep/er/z", "a/bc/x"]
    assert store.list("a/b/deep/er/z") == ["a/b/deep/er/z"]
    assert store.list("zzz/") == []
    assert store.list_dirs("a") == ["b", "bc"]
    assert store.list_dirs("a/") == ["b", "bc"]
    assert store.list_dirs("") == ["a", "b"]
    assert store.list_dirs("missing") == []


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for k in ["r/ck/step1/a", "r/ck/step1/sub/b", "r/ck/step10/a", "r/other"]:
        store.put_bytes(k, b"1")
    store.delete("r/other")
    store.delete("r/other")  # idempotent
    store.delete_prefix("r/ck/step1/")
    assert store.list("") == ["r/ck/step10/a"]
    store.delete_prefix("r/")
    assert store.list("") == []
    assert store.list_dirs("") == []


def test_range_reads(store: ObjectStore) -> None:
    store.put_bytes("tokens.bin", b"0123456789")
    assert store.get_range("tokens.bin", 0, 4) == b"0123"
    assert store.get_range("tokens.bin", 3, 4) == b"3456"
    assert store.get_range("tokens.bin", 8, 100) == b"89"
    assert store.get_range("tokens.bin", 10, 5) == b""
    assert store.get_range("tokens.bin", 50, 5) == b""
    assert store.get_range("tokens.bin", 2, 0) == b""
    with pytest.raises(ValueError):
        store.get_range("tokens.bin", -1, 2)


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/./b", "a/"])
def test_bad_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="storage key"):
        store.put_bytes(key, b"x")


def test_local_write_interrupted_keeps_old_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("ck/model.bin", b"old")

    def dies_half_way(f) -> None:
        f.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "ck" / "model.bin", dies_half_way)
    assert store.get_bytes("ck/model.bin") == b"old"
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["model.bin"]


def test_local_temp_files_of_a_killed_writer_are_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("ck/a", b"1")
    (tmp_path / "ck" / f"{TEMP_MARK}abc").write_bytes(b"partial")
    assert store.list("") == ["ck/a"]
