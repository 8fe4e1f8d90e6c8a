"""open_store: which URIs open which store, and bad ones fail naming the URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypythia.errors import UsageError
from polypythia.storage import LocalStore, S3Store, StorageError, open_store
from polypythia.storage.uri import connection


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No AWS identity of the machine's either (profiles, instance metadata).
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in [
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "POLYPYTHIA_S3_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
    ]:
        monkeypatch.delenv(name, raising=False)


def test_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store, prefix = open_store("rel/store")
    assert isinstance(store, LocalStore)
    assert (store.root, prefix) == (tmp_path / "rel" / "store", "")
    store, _ = open_store(f"file://{tmp_path}/abs")
    assert store.root == tmp_path / "abs"
    store, _ = open_store(str(tmp_path / "x"))
    assert store.root == tmp_path / "x"


def test_s3_uri_with_prefix_and_endpoint_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    store, prefix = open_store("s3://my-bucket/sweeps/tiny/", endpoint="minio:9000")
    assert isinstance(store, S3Store)
    assert (store.bucket, prefix, store.endpoint, store.secure) == (
        "my-bucket",
        "sweeps/tiny",
        "minio:9000",
        True,
    )
    store, _ = open_store("s3://b12", endpoint="minio:9000", secure=False)
    assert store.secure is False
    store, prefix = open_store("s3://b12", endpoint="https://s3.example.org")
    assert (store.endpoint, store.secure, prefix) == ("s3.example.org", True, "")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://aws-env:1")
    assert open_store("s3://b12")[0].endpoint == "aws-env:1"
    monkeypatch.setenv("POLYPYTHIA_S3_ENDPOINT", "http://127.0.0.1:9000")
    store, _ = open_store("s3://b12")
    assert (store.endpoint, store.secure) == ("127.0.0.1:9000", False)
    assert open_store("s3://b12", endpoint="arg:1")[0].endpoint == "arg:1"


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "   ",
        "gs://bucket/x",
        "http://host/x",
        "s3://",
        "s3://Upper/x",
        "s3://ab",
        "s3://b12/a/../c",
    ],
)
def test_bad_uris_name_the_uri(uri: str) -> None:
    with pytest.raises(UsageError) as err:
        open_store(uri, endpoint="minio:9000")
    assert repr(uri) in str(err.value)


@pytest.mark.parametrize(
    "endpoint", ["ftp://host:1", "http://host:1/path", "http://u:sekrit@host:1"]
)
def test_bad_endpoints(endpoint: str) -> None:
    with pytest.raises(UsageError, match="S3 endpoint") as err:
        open_store("s3://b12", endpoint=endpoint)
    assert "sekrit" not in str(err.value)


def test_s3_without_endpoint_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="POLYPYTHIA_S3_ENDPOINT"):
        open_store("s3://b12/x")


def test_half_credentials_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_ROOT_USER", "user-sekrit")
    with pytest.raises(StorageError) as err:
        open_store("s3://b12", endpoint="minio:9000")
    assert "sekrit" not in str(err.value)
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "pass-sekrit")
    store, _ = open_store("s3://b12", endpoint="minio:9000")
    assert "sekrit" not in repr(store)


def test_credentials_come_from_aws_then_minio_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    def access_key() -> str | None:
        provider = open_store("s3://b12", endpoint="minio:9000")[0]._client._provider
        creds = provider.retrieve() if provider else None
        return creds.access_key if creds else None

    assert access_key() is None  # no keys and no identity anywhere: anonymous
    monkeypatch.setenv("MINIO_ROOT_USER", "minio-user")
    monkeypatch.setenv("MINIO_ROOT_PASSWORD", "minio-pass")
    assert access_key() == "minio-user"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-user")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-pass")
    assert access_key() == "aws-user"


def test_a_sweeps_own_endpoint_wins_over_the_operators_and_empty_fields_keep_defaults() -> None:
    storage = {"uri": "s3://b12/p", "endpoint": "", "secure": False, "region": ""}
    assert connection(storage) == {"secure": False}
    assert connection(storage, "operator-minio:9000") == {
        "endpoint": "operator-minio:9000",
        "secure": False,
    }
    own = {**storage, "endpoint": "sweep-minio:9000", "region": "eu-west-1"}
    assert connection(own, "operator-minio:9000") == {
        "endpoint": "sweep-minio:9000",
        "secure": False,
        "region": "eu-west-1",
    }
    store, _ = open_store("s3://b12", **connection(storage, "operator-minio:9000"))
    assert (store.endpoint, store.secure) == ("operator-minio:9000", False)
