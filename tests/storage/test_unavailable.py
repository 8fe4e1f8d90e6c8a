"""An unreachable endpoint raises StorageUnavailable naming it, never the credentials."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from polypythia.storage import ObjectStore, RunStore, S3Store, StorageUnavailable
from support.moto_s3 import free_port

ACCESS = "AKIA-unavailable-test-access"
SECRET = "unavailable-test-secret-value"


@pytest.fixture
def down_endpoint() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


OPS: dict[str, Callable[[ObjectStore, Path], object]] = {
    "put_bytes": lambda s, _: s.put_bytes("a/b", b"x"),
    "get_bytes": lambda s, _: s.get_bytes("a/b"),
    "get_range": lambda s, _: s.get_range("a/b", 0, 4),
    "exists": lambda s, _: s.exists("a/b"),
    "list": lambda s, _: s.list("a/"),
    "list_dirs": lambda s, _: s.list_dirs("a"),
    "delete": lambda s, _: s.delete("a/b"),
    "delete_prefix": lambda s, _: s.delete_prefix("a/"),
    "put_file": lambda s, tmp: s.put_file("a/b", Path(__file__)),
    "get_file": lambda s, tmp: s.get_file("a/b", tmp / "x"),
}


def assert_clean(exc: BaseException, endpoint: str) -> None:
    text = "".join(traceback.format_exception(exc))
    assert endpoint in str(exc)
    assert ACCESS not in text and SECRET not in text


@pytest.mark.parametrize("op", OPS)
def test_operations_raise_unavailable(op: str, down_endpoint: str, tmp_path: Path) -> None:
    store = S3Store(
        down_endpoint, "bucket", access_key=ACCESS, secret_key=SECRET, secure=False, retries=0
    )
    with pytest.raises(StorageUnavailable) as err:
        OPS[op](store, tmp_path)
    assert_clean(err.value, down_endpoint)
    assert not (tmp_path / "x").exists()


def test_run_store_on_a_down_endpoint(
    down_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("POLYPYTHIA_S3_ENDPOINT", f"http://{down_endpoint}")
    run = RunStore.open("s3://bucket/tiny/tiny-nano-s0")
    for call in (run.read_telemetry, run.complete_checkpoints, lambda: run.write_eval(1, {})):
        with pytest.raises(StorageUnavailable) as err:
            call()
        assert_clean(err.value, down_endpoint)
    assert ACCESS not in repr(run) + repr(run.store)
