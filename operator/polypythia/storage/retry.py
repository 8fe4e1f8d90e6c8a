"""Riding out storage outages: every call of a store retried with backoff for a while.

A trainer that loses its object store for twenty seconds (a MinIO restart, a network
blip) should wait, not fail the run. ``RetryingStore`` wraps any ObjectStore and
retries ``StorageUnavailable`` (never a missing key, a denied request or a full disk)
with exponential backoff until ``retry_s`` seconds have passed since the first failure.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from polypythia.storage.base import ObjectStore, StorageUnavailable

log = logging.getLogger(__name__)

RETRY_ENV = "POLYPYTHIA_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 300.0  # minutes, not seconds: a MinIO restart or failover fits
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 15.0

T = TypeVar("T")


def retry_seconds(value: float | None = None) -> float:
    """The retry window: ``value``, else $POLYPYTHIA_STORAGE_RETRY_S, else 300 s."""
    if value is not None:
        return max(0.0, float(value))
    text = os.environ.get(RETRY_ENV)
    if not text:
        return DEFAULT_RETRY_S
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{RETRY_ENV}: expected seconds (a number), got {text!r}") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{RETRY_ENV}: must be a finite number >= 0, got {text!r}")
    return seconds


def with_retries(
    call: Callable[[], T],
    retry_s: float,
    *,
    what: str = "storage call",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, retried on StorageUnavailable with backoff until ``retry_s`` is spent."""
    deadline = None
    delay = FIRST_DELAY_S
    while True:
        try:
            return call()
        except StorageUnavailable as exc:
            now = clock()
            if deadline is None:
                deadline = now + retry_s
                if retry_s > 0:
                    log.warning("%s: %s; retrying for up to %.0f s", what, exc, retry_s)
            if now >= deadline:
                raise
            sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, MAX_DELAY_S)


class RetryingStore:
    """An ObjectStore whose calls ride out outages of up to ``retry_s`` seconds."""

    def __init__(self, inner: ObjectStore, retry_s: float) -> None:
        self.inner = inner
        self.retry_s = retry_s

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r}, retry_s={self.retry_s:g})"

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # back-end extras: bucket, endpoint, ensure_bucket

    def _retry(self, name: str, *args):
        method = getattr(self.inner, name)
        return with_retries(lambda: method(*args), self.retry_s, what=f"{name} {self.inner!r}")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retry("put_bytes", key, data)

    def get_bytes(self, key: str) -> bytes:
        return self._retry("get_bytes", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._retry("get_range", key, offset, length)

    def put_file(self, key: str, path: Path) -> None:
        self._retry("put_file", key, path)

    def get_file(self, key: str, path: Path) -> None:
        self._retry("get_file", key, path)

    def exists(self, key: str) -> bool:
        return self._retry("exists", key)

    def size(self, key: str) -> int:
        return self._retry("size", key)

    def list(self, prefix: str) -> list[str]:
        return self._retry("list", prefix)

    def list_dirs(self, prefix: str) -> list[str]:
        return self._retry("list_dirs", prefix)

    def delete(self, key: str) -> None:
        self._retry("delete", key)

    def delete_prefix(self, prefix: str) -> None:
        self._retry("delete_prefix", prefix)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        return self._retry("put_bytes_if_absent", key, data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._retry("get_versioned", key)

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> str | None:
        return self._retry("put_bytes_if_match", key, data, version)

    def delete_if_match(self, key: str, version: str) -> bool:
        return self._retry("delete_if_match", key, version)

    def move(self, key: str, new_key: str) -> None:
        self._retry("move", key, new_key)

    def url(self, key: str = "") -> str:
        return self.inner.url(key)

    def local_dir(self, key: str) -> Path | None:
        return self.inner.local_dir(key)
