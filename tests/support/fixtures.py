"""pytest fixtures for a real S3 endpoint; import them into a test module or conftest:

    from support.fixtures import s3_endpoint  # noqa: F401

Each fixture stands alone (no fixture dependencies to import alongside): the server is
shared by the whole test process, each test gets its own fresh bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.moto_s3 import S3Server, shared_s3_server


@dataclass
class S3Endpoint:
    """A fresh bucket on the shared moto server; the environment already points at it."""

    server: S3Server
    bucket: str

    @property
    def endpoint(self) -> str:
        """``host:port`` of the server."""
        return self.server.endpoint

    @property
    def url(self) -> str:
        """``http://host:port`` of the server."""
        return self.server.url

    @property
    def uri(self) -> str:
        """``s3://<bucket>``: the storage URI of the fresh bucket."""
        return f"s3://{self.bucket}"

    @property
    def env(self) -> dict[str, str]:
        """Credentials and endpoint variables (already set in this test's environment)."""
        return self.server.env

    def store_kwargs(self) -> dict:
        """Keyword arguments for ``open_store``/``RunStore.open`` on this server."""
        return {"endpoint": self.url, "region": self.server.region}


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """The moto S3 server shared by the test session."""
    return shared_s3_server()


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """A fresh bucket on the shared server, with credentials and endpoint in the env."""
    server = shared_s3_server()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    bucket = server.make_bucket()
    yield S3Endpoint(server, bucket)
    server.remove_bucket(bucket)
