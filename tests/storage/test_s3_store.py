"""S3-only behaviour: missing buckets, bucket creation, batched deletes."""

from __future__ import annotations

import pytest

from polypythia.storage import StorageNotFound, open_store
from polypythia.storage import s3 as s3_module
from support.fixtures import S3Endpoint


def test_missing_bucket_reads_as_empty_and_can_be_created(s3_endpoint: S3Endpoint) -> None:
    store, _ = open_store("s3://not-made-yet")
    assert store.list("") == [] and store.list_dirs("") == []
    assert not store.exists("x")
    with pytest.raises(StorageNotFound, match="NoSuchBucket"):
        store.put_bytes("x", b"1")
    store, _ = open_store("s3://not-made-yet", create_bucket=True)
    store.put_bytes("x", b"1")
    assert store.get_bytes("x") == b"1"
    s3_endpoint.server.remove_bucket("not-made-yet")


def test_delete_prefix_in_batches(s3_endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 2)
    store, _ = open_store(s3_endpoint.uri)
    for i in range(5):
        store.put_bytes(f"p/{i}", b"")
    store.put_bytes("q", b"")
    store.delete_prefix("p/")
    assert store.list("") == ["q"]
