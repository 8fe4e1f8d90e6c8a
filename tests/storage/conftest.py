"""Every storage test runs against both back-ends: a local directory and a real S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypythia.storage import ObjectStore, open_store
from support.fixtures import s3_endpoint  # noqa: F401  (fixture)


@pytest.fixture(params=["local", "s3"])
def root_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage URI of an empty store: a local folder or a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_endpoint").uri + "/data"


@pytest.fixture
def store(root_uri: str) -> ObjectStore:
    """The empty object store behind ``root_uri`` (keys are bucket/folder-relative)."""
    return open_store(root_uri)[0]


@pytest.fixture
def run_uri(root_uri: str) -> str:
    """Where one run of sweep ``tiny`` lives."""
    return f"{root_uri}/tiny/tiny-nano-s0"
