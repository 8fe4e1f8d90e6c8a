"""One writer per run: a lease object ``<run>/LEASE`` in the run's own storage.

Taken by the trainer before it writes anything, renewed by a heartbeat thread and
checked before every checkpoint commit. Every write of the lease is conditional, so of
two racing writers exactly one wins: creation with ``If-None-Match: *`` on S3 (a hard
link on a local disk); renewal, breaking a stale lease and release with ``If-Match``
on the version last read or written (the S3 ETag; on a local disk a content hash
compared under ``flock``). A writer whose lease was taken over can never renew its way
back in: its renewal fails its precondition and it stops. A lease whose heartbeat is
older than its ``ttlSeconds``, or whose holder was a process on this host that no
longer exists, is stale and may be broken.

Some S3 clones (older MinIO releases among them) accept a conditional PUT and overwrite
anyway; on such a store two writers would both believe they hold the lease. Before its
first lease on a store, a process probes it with conditional writes that must fail, and
refuses the store when one succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from polypythia.storage.base import StorageError, StorageNotFound

log = logging.getLogger(__name__)

LEASE = "LEASE"
PROBE = "LEASE-probe-"  # + a random hex: the conditional-write probe's own object
DEFAULT_TTL_S = 60.0
_PROBED: set[str] = set()  # stores (url, endpoint) this process found honouring conditions


class LeaseHeld(StorageError):
    """Another live writer holds the run's lease; the message names it and how to break it."""


class LeaseLost(StorageError):
    """This writer's lease was broken or taken over: it must not commit anything more."""


class ConditionalWritesIgnored(StorageError):
    """The store accepted a conditional write that must fail: it cannot hold a lease."""


def check_conditional_writes(run) -> None:
    """Refuse a store that ignores ``If-None-Match: *`` or ``If-Match`` on PUT.

    The probe creates its own object, creates it again (must be refused: it exists) and
    replaces it on a version it never had (must be refused), then deletes it. Once per
    store and process: a few small requests before the first lease.
    """
    store = run.store
    endpoint = getattr(store, "endpoint", None)
    where = store.url("") + (f" at {endpoint}" if endpoint else "")
    if where in _PROBED:
        return
    key = run.key(PROBE + uuid.uuid4().hex)
    ignored = None
    try:
        # A fresh key: "already there" can only be our own write whose answer was lost.
        store.put_bytes_if_absent(key, b"first")
        if store.put_bytes_if_absent(key, b"second"):
            ignored = "If-None-Match: *"
        else:
            _, version = store.get_versioned(key)
            never = "0" * 32 if version.strip('"') != "0" * 32 else "1" * 32
            if store.put_bytes_if_match(key, b"third", never) is not None:
                ignored = "If-Match"
    finally:
        try:
            store.delete(key)
        except StorageError as exc:
            log.warning("could not delete the lease probe %s: %s", store.url(key), exc)
    if ignored:
        raise ConditionalWritesIgnored(
            f"{where}: the store ignores {ignored} on PUT (a conditional write that must "
            "fail with 412 Precondition Failed overwrote the object), so two writers could "
            "both believe they hold a run's lease; refusing to write runs there. Use storage "
            "that honours conditional writes (AWS S3, a MinIO release with conditional PUT "
            "support) or a local folder"
        )
    _PROBED.add(where)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLease:
    """The lease of one run held by this process (``acquire``, ``check``, ``release``)."""

    def __init__(self, run, owner: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.run = run
        self.owner = owner
        self.ttl_s = ttl_s
        self.token = uuid.uuid4().hex
        self.key = run.key(LEASE)
        self._version: str | None = None  # of the lease as this writer last wrote it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
                "ttlSeconds": self.ttl_s,
            }
        ).encode()

    def holder(self) -> dict | None:
        """The lease as stored now (None when nobody holds it; unreadable counts as stale)."""
        return self._read()[0]

    def _read(self) -> tuple[dict | None, str | None]:
        """The stored lease and its version (None, None when nobody holds it)."""
        try:
            raw, version = self.run.store.get_versioned(self.key)
        except StorageNotFound:
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            return {"token": "", "owner": "an unreadable lease", "heartbeat": 0.0}, version
        return (data if isinstance(data, dict) else {"token": "", "heartbeat": 0.0}), version

    def stale(self, holder: dict, now: float | None = None) -> bool:
        """Whether ``holder`` is dead: heartbeat older than its ttl, or its process gone."""
        now = time.time() if now is None else now
        ttl = float(holder.get("ttlSeconds") or self.ttl_s)
        if now - float(holder.get("heartbeat") or 0.0) > ttl:
            return True
        pid = holder.get("pid")
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and not (_pid_alive(pid))
        )

    def describe(self, holder: dict) -> str:
        """The refusal: who holds the run and how to break a stale lease."""
        age = time.time() - float(holder.get("heartbeat") or 0.0)
        ttl = float(holder.get("ttlSeconds") or self.ttl_s)
        return (
            f"{self.run.uri}: run is being written by {holder.get('owner', '?')} "
            f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, last heartbeat "
            f"{age:.0f} s ago); a second writer is refused. If that process is gone, the "
            f"lease expires {ttl:.0f} s after its last heartbeat, or delete "
            f"{self.run.store.url(self.key)} to break it now"
        )

    def acquire(self, wait: bool = True) -> None:
        """Take the lease or raise LeaseHeld; a stale lease is broken with a warning;
        a store that ignores conditional writes is refused (ConditionalWritesIgnored).

        A live holder on this host is refused at once. One on another host may be a
        pod that just died (a RayJob retried elsewhere): with ``wait`` we wait until its
        heartbeat would have expired, and refuse only if it is still renewed.
        """
        check_conditional_writes(self.run)
        deadline: float | None = None
        for _ in range(1000):
            if self.run.store.put_bytes_if_absent(self.key, self._body()):
                current, self._version = self._read()
                if current is None or current.get("token") != self.token:
                    continue  # broken at once by a racing writer: look again
                return
            current, version = self._read()
            if current is None or version is None:
                continue
            if current.get("token") == self.token:
                self._version = version
                return
            if self.stale(current):
                # Take over with one compare-and-swap: of two breakers only one succeeds,
                # and a holder that renewed meanwhile keeps its lease.
                taken = self.run.store.put_bytes_if_match(self.key, self._body(), version)
                if taken is not None:
                    log.warning("broke a stale lease: %s", self.describe(current))
                    self._version = taken
                    return
                continue
            elsewhere = current.get("host") != socket.gethostname()
            ttl = float(current.get("ttlSeconds") or self.ttl_s)
            now = time.time()
            if deadline is None:
                deadline = now + ttl + 5 if wait and elsewhere else now
            if now >= deadline:
                raise LeaseHeld(self.describe(current))
            expires = float(current.get("heartbeat") or 0.0) + ttl + 1
            time.sleep(max(0.5, min(expires, deadline) - now))
        raise LeaseHeld(f"{self.run.uri}: could not take the run's lease (writers keep racing)")

    def check(self) -> None:
        """Raise LeaseLost unless the stored lease is still this one."""
        check_lease(self.run, self.token)

    def renew(self) -> None:
        """Write a fresh heartbeat, conditional on the lease being the one we last wrote;
        LeaseLost when another writer replaced it (or it is gone)."""
        for _ in range(2):
            if self._version is not None:
                written = self.run.store.put_bytes_if_match(self.key, self._body(), self._version)
                if written is not None:
                    self._version = written
                    return
            # Our own write may have landed while its answer was lost (a retried PUT):
            # adopt the stored version only when the stored lease carries our token.
            current, version = self._read()
            if current is None or current.get("token") != self.token:
                self._version = None
                check_lease(self.run, self.token)
                raise LeaseLost(f"{self.run.uri}: this writer lost the run's lease; stopping")
            self._version = version
        raise LeaseLost(f"{self.run.uri}: lease renewal keeps racing another writer; stopping")

    def start_heartbeat(self) -> None:
        """Renew every ttl/4 in a daemon thread until ``release``."""

        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 4):
                try:
                    self.renew()
                except LeaseLost as exc:
                    log.error("%s", exc)
                    return
                except StorageError as exc:  # an outage: the next beat tries again
                    log.warning("lease heartbeat failed: %s", exc)

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            current, version = self._read()
            if current is not None and version and current.get("token") == self.token:
                self.run.store.delete_if_match(self.key, version)
            self._version = None
        except StorageError as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)


def check_lease(run, token: str) -> None:
    """Raise LeaseLost unless ``token`` still holds the run's lease (a worker process
    checks the lease its launcher took, before every checkpoint commit)."""
    try:
        data = json.loads(run.store.get_bytes(run.key(LEASE)))
    except (StorageNotFound, ValueError):
        data = {}
    if not isinstance(data, dict) or data.get("token") != token:
        who = data.get("owner", "nobody") if isinstance(data, dict) else "nobody"
        raise LeaseLost(
            f"{run.uri}: this writer lost the run's lease (now held by {who}); "
            "not committing the checkpoint, stopping"
        )
