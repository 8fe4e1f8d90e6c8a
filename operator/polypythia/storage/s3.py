"""S3 / MinIO as an object store, through the ``minio`` SDK.

Credentials come from the arguments or the environment (static keys), else from the
AWS default chain (workload identity, ``storage.credentials``); they are never logged
or put into an exception's message; errors name the endpoint, bucket and key only.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from polypythia.storage.base import (
    StorageError,
    StorageNotFound,
    StorageUnavailable,
    check_key,
    check_prefix,
    check_range,
)
from polypythia.storage.credentials import AwsChainProvider, identity_source
from polypythia.storage.local import atomic_write

ACCESS_KEY_ENV = ("AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER")
SECRET_KEY_ENV = ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD")
SESSION_TOKEN_ENV = ("AWS_SESSION_TOKEN",)
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound")
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken")
_CHUNK = 1 << 20
DELETE_BATCH = 1000  # the most keys one DeleteObjects request may carry


def _etag(tag: str) -> str:
    """An ETag without its quotes (S3 quotes it in headers, not always elsewhere)."""
    return tag.strip().strip('"')


def _from_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class S3Store:
    """Objects in one bucket of an S3-compatible endpoint (MinIO, AWS, moto in tests)."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        secure: bool = True,
        region: str = "us-east-1",
        retries: int = 3,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        access_key = access_key or _from_env(ACCESS_KEY_ENV)
        secret_key = secret_key or _from_env(SECRET_KEY_ENV)
        session_token = session_token or _from_env(SESSION_TOKEN_ENV)
        if bool(access_key) != bool(secret_key):
            raise StorageError(
                f"S3 endpoint {endpoint}: an access key needs a secret key and vice versa "
                f"(set both {ACCESS_KEY_ENV[0]} and {SECRET_KEY_ENV[0]})"
            )
        self._secrets = tuple(s for s in (access_key, secret_key, session_token) if s)
        # No static keys: the AWS default chain (workload identity, profiles, instance
        # roles), never silently anonymous while a role is configured.
        self._chain = None if access_key else AwsChainProvider(region)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
            secure=secure,
            region=region,
            http_client=http,
            credentials=self._chain,
        )

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3Store({scheme}://{self.endpoint}, bucket={self.bucket!r})"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _errors(self, what: str, key: str = "") -> Iterator[None]:
        """Translate SDK and transport errors into the storage errors callers handle."""
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        at = f"{where} at {self.endpoint}"
        try:
            yield
        except S3Error as exc:
            if exc.code in _MISSING:
                raise StorageNotFound(f"{what} {at}: {exc.code}") from None
            if exc.code in _DENIED:
                whose = (
                    f"check {ACCESS_KEY_ENV[0]} and {SECRET_KEY_ENV[0]} (or the sweep's "
                    "credentials Secret)"
                    if self._chain is None
                    else f"credentials from {identity_source()}: check the role's S3 policy"
                )
                raise StorageError(f"{what} {at}: {exc.code}; {whose}") from None
            raise StorageError(self._scrub(f"{what} {at}: {exc.code}: {exc.message}")) from None
        except ServerError as exc:
            raise StorageUnavailable(
                f"{what} {at}: server error HTTP {exc.status_code}; retry later"
            ) from None
        except InvalidResponseError as exc:
            raise StorageUnavailable(self._scrub(f"{what} {at}: {exc}")) from None
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StorageUnavailable(
                self._scrub(
                    f"{what} {at}: endpoint unreachable ({type(reason).__name__}: {reason})"
                )
            ) from None

    def bucket_exists(self) -> bool:
        """Whether the bucket exists (one HEAD request)."""
        with self._errors("check bucket"):
            return bool(self._client.bucket_exists(self.bucket))

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (local runs against a fresh MinIO)."""
        with self._errors("create bucket"):
            if not self._client.bucket_exists(self.bucket):
                self._client.make_bucket(self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (S3 PUTs are atomic)."""
        with self._errors("put", check_key(key)):
            self._client.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; raise StorageNotFound when absent."""
        with self._errors("get", check_key(key)):
            resp = self._client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes from ``offset`` with one ranged GET."""
        check_range(offset, length)
        if length == 0:
            return b""
        with self._errors("range read", check_key(key)):
            try:
                resp = self._client.get_object(self.bucket, key, offset=offset, length=length)
            except S3Error as exc:
                if exc.code == "InvalidRange":  # offset at or past the end: an empty read
                    return b""
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for large files)."""
        with self._errors("upload", check_key(key)):
            self._client.fput_object(self.bucket, key, str(path))

    def get_file(self, key: str, path: Path) -> None:
        """Download ``key`` to ``path`` via a temp file renamed into place."""
        with self._errors("download", check_key(key)):
            resp = self._client.get_object(self.bucket, key)

            def copy(f) -> None:
                for chunk in resp.stream(_CHUNK):
                    f.write(chunk)

            try:
                atomic_write(Path(path), copy)
            finally:
                resp.close()
                resp.release_conn()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under exactly ``key``."""
        try:
            self.size(key)
        except StorageNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes (one HEAD request)."""
        with self._errors("stat", check_key(key)):
            return int(self._client.stat_object(self.bucket, key).size)

    def list(self, prefix: str) -> list[str]:
        """All keys starting with ``prefix`` (recursive), sorted."""
        try:
            with self._errors("list", check_prefix(prefix)):
                found = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                return sorted(o.object_name for o in found if not o.is_dir)
        except StorageNotFound:
            return []

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of folder ``prefix``, sorted."""
        folder = check_prefix(prefix).rstrip("/") + "/" if prefix else ""
        try:
            with self._errors("list", folder):
                found = self._client.list_objects(self.bucket, prefix=folder, recursive=False)
                names = [o.object_name[len(folder) :] for o in found if o.is_dir]
        except StorageNotFound:
            return []
        return sorted(n.rstrip("/") for n in names)

    def delete(self, key: str) -> None:
        """Remove one object; absent keys are fine."""
        with self._errors("delete", check_key(key)):
            self._client.remove_object(self.bucket, key)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PUT (``If-None-Match: *``, S3 and MinIO since 2024): the store
        itself decides which of two racing writers creates the object."""
        try:
            with self._errors("create", check_key(key)):
                # The public put_object sends no conditional headers; _put_object is its
                # single-request core and takes them.
                self._client._put_object(self.bucket, key, data, headers={"If-None-Match": "*"})
        except StorageError as exc:
            if "PreconditionFailed" in str(exc):
                return False
            raise
        return True

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (from the same GET, so they belong together)."""
        with self._errors("get", check_key(key)):
            resp = self._client.get_object(self.bucket, key)
            try:
                return resp.read(), _etag(resp.headers.get("ETag", ""))
            finally:
                resp.close()
                resp.release_conn()

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> str | None:
        """A conditional PUT (``If-Match: <etag>``, S3 since 2024, MinIO, moto): the
        store replaces the object only while its ETag is still ``version``."""
        try:
            with self._errors("replace", check_key(key)):
                result = self._client._put_object(
                    self.bucket, key, data, headers={"If-Match": f'"{_etag(version)}"'}
                )
        except StorageNotFound:
            return None
        except StorageError as exc:
            if "PreconditionFailed" in str(exc):
                return None
            raise
        return _etag(result.etag or "")

    def delete_if_match(self, key: str, version: str) -> bool:
        """A conditional DELETE (``If-Match``; S3 general-purpose buckets since 2025)."""
        try:
            with self._errors("delete", check_key(key)):
                # remove_object sends no conditional headers; _execute is the SDK's core.
                self._client._execute(
                    "DELETE", self.bucket, key, headers={"If-Match": f'"{_etag(version)}"'}
                )
        except StorageNotFound:
            return False
        except StorageError as exc:
            if "PreconditionFailed" in str(exc):
                return False
            raise
        return True

    def move(self, key: str, new_key: str) -> None:
        """Server-side copy, then delete the original (S3 has no rename)."""
        with self._errors("move", check_key(key)):
            self._client.copy_object(self.bucket, check_key(new_key), CopySource(self.bucket, key))
            self._client.remove_object(self.bucket, key)

    def url(self, key: str = "") -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def local_dir(self, key: str) -> Path | None:
        """Never: objects must be downloaded before they are read."""
        return None

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix`` (batched DeleteObjects)."""
        keys = self.list(prefix)
        with self._errors("delete", prefix):
            for start in range(0, len(keys), DELETE_BATCH):
                batch = [DeleteObject(k) for k in keys[start : start + DELETE_BATCH]]
                failed = list(self._client.remove_objects(self.bucket, batch))
                if failed:
                    raise StorageError(
                        f"delete s3://{self.bucket}/{prefix} at {self.endpoint}: "
                        f"{len(failed)} objects failed, first {failed[0].name}: {failed[0].code}"
                    )
