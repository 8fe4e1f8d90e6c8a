"""Turn a storage URI (local path, ``file://``, ``s3://bucket/prefix``) into a store."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from polypythia.errors import UsageError
from polypythia.storage.base import ObjectStore
from polypythia.storage.local import LocalStore
from polypythia.storage.retry import RetryingStore
from polypythia.storage.s3 import S3Store

ENDPOINT_ENV = ("POLYPYTHIA_S3_ENDPOINT", "AWS_ENDPOINT_URL")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` keeps ``secure``; ``http://``/``https://`` decide it themselves."""
    text = endpoint.strip()
    if "://" not in text:
        text = ("https://" if secure else "http://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"S3 endpoint {endpoint!r}: expected host:port or http(s)://host:port")
    if parts.username or parts.password:  # do not echo what may be a credential
        raise UsageError(f"S3 endpoint for host {parts.hostname!r}: no user info allowed")
    if parts.path.strip("/") or parts.query:
        raise UsageError(f"S3 endpoint {endpoint!r}: no path or query allowed")
    return parts.netloc, parts.scheme == "https"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> (``bucket``, ``a/b``); the bucket name must be valid."""
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"storage URI {uri!r}: bucket {bucket!r} must be 3-63 lowercase letters, "
            "digits, '.' or '-'"
        )
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"storage URI {uri!r}: no empty, '.' or '..' path components")
    return bucket, prefix


def connection(
    block: Mapping[str, Any] | None, default_endpoint: str | None = None
) -> dict[str, Any]:
    """``open_store`` keywords from a storage block (a run config's or the sweep's
    ``storage``: ``endpoint``, ``secure``, ``region``); unset or empty ones keep its
    defaults, an unset endpoint is ``default_endpoint`` (the operator's flag) when given."""
    out = {
        key: block[key]
        for key in ("endpoint", "secure", "region")
        if block and block.get(key) not in (None, "")
    }
    if default_endpoint and "endpoint" not in out:
        out["endpoint"] = default_endpoint
    return out


def open_store(
    uri: str,
    *,
    endpoint: str | None = None,
    secure: bool = True,
    region: str = "us-east-1",
    access_key: str | None = None,
    secret_key: str | None = None,
    create_bucket: bool = False,
    retry_s: float = 0.0,
) -> tuple[ObjectStore, str]:
    """Open the store behind ``uri`` and return it with the key prefix ``uri`` names.

    Local paths (relative ones are made absolute now) give a LocalStore rooted at the
    path and an empty prefix; ``s3://bucket/prefix`` gives an S3Store on the bucket.
    The S3 endpoint comes from ``endpoint`` or the environment (``POLYPYTHIA_S3_ENDPOINT``,
    then ``AWS_ENDPOINT_URL``). ``retry_s`` > 0 rides out S3 outages that long
    (``RetryingStore``); pollers that try again anyway keep the default 0.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise UsageError(f"storage URI {uri!r}: expected a local path or s3://bucket/prefix")
    if uri.startswith("s3://"):
        bucket, prefix = split_s3_uri(uri)
        endpoint = endpoint or next(
            (os.environ[n] for n in ENDPOINT_ENV if os.environ.get(n)), None
        )
        if not endpoint:
            raise UsageError(
                f"storage URI {uri!r}: no S3 endpoint; set storage.endpoint or "
                f"{ENDPOINT_ENV[0]} (s3.amazonaws.com for AWS)"
            )
        netloc, secure = parse_endpoint(endpoint, secure)
        store = S3Store(
            netloc,
            bucket,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
        )
        if create_bucket:
            store.ensure_bucket()
        return (RetryingStore(store, retry_s) if retry_s > 0 else store), prefix
    if uri.startswith("file://"):
        path = uri[len("file://") :]
    elif _SCHEME.match(uri):
        raise UsageError(f"storage URI {uri!r}: only local paths, file:// and s3:// are supported")
    else:
        path = uri
    if not path:
        raise UsageError(f"storage URI {uri!r}: empty path")
    return LocalStore(Path(path).expanduser().absolute()), ""
