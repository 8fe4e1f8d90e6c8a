"""A real S3 HTTP endpoint for tests: moto's server in a child process on 127.0.0.1.

A child process (not moto's in-process ThreadedMotoServer) keeps the server's state
apart from any ``mock_aws`` used elsewhere in the same test session.
"""

from __future__ import annotations

import atexit
import base64
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from minio import Minio
from minio.deleteobjects import DeleteObject

from support.processes import terminate

ACCESS_KEY = "polypythia-test-access"
SECRET_KEY = "polypythia-test-secret-do-not-leak"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto S3 server and the fake credentials that go with it."""

    endpoint: str  # host:port, what Minio() takes (secure=False)
    process: subprocess.Popen | None = field(default=None, repr=False)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    @property
    def url(self) -> str:
        """The endpoint as a URL (``http://host:port``), the form env variables take."""
        return f"http://{self.endpoint}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point polypythia (and boto/pyarrow) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "POLYPYTHIA_S3_ENDPOINT": self.url,
        }

    def store_options(self) -> dict:
        """``open_store``/``RunStore.open`` keywords that reach this server with its credentials."""
        return {
            "endpoint": self.url,
            "secure": False,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
        }

    def secret(self, name: str) -> dict:
        """A Kubernetes Secret named ``name`` holding this server's credentials, as a sweep's
        ``spec.storage.secretName`` refers to it."""
        data = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return {
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    def client(self) -> Minio:
        """A minio client on this server."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique one when no name is given) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client().make_bucket(name)
        return name

    def remove_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it."""
        client = self.client()
        keys = [DeleteObject(o.object_name) for o in client.list_objects(name, recursive=True)]
        for start in range(0, len(keys), 1000):
            list(client.remove_objects(name, keys[start : start + 1000]))
        client.remove_bucket(name)

    def stop(self) -> None:
        """Stop the server process (only the one this helper started)."""
        terminate(self.process)


def start_s3_server(timeout_s: float = 30.0) -> S3Server:
    """Start ``python -m moto.server`` on a free port; return once it answers HTTP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = S3Server(endpoint=f"127.0.0.1:{port}", process=proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"moto server exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/moto-api/", timeout=1):
                proc.stderr.close()
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto server on {server.endpoint} did not answer within {timeout_s} s")


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the duration of the ``with`` block."""
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()


_shared: S3Server | None = None


def shared_s3_server() -> S3Server:
    """One server per test process, started on first use and stopped at exit."""
    global _shared
    if _shared is None or (_shared.process and _shared.process.poll() is not None):
        _shared = start_s3_server()
        atexit.register(_shared.stop)
    return _shared
