"""One writer per run: a lease object ``<run>/LEASE`` in the run's own storage.

Taken by the trainer before it writes anything, renewed by a heartbeat thread and
checked before every checkpoint commit. Creation is atomic in both back-ends (a hard
link on a local disk, a conditional ``If-None-Match: *`` PUT on S3), so of two writers
exactly one gets it. A lease whose heartbeat is older than its ``ttlSeconds``, or whose
holder was a process on this host that no longer exists, is stale and may be broken.
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
DEFAULT_TTL_S = 60.0


class LeaseHeld(StorageError):
    """Another live writer holds the run's lease; the message names it and how to break it."""


class LeaseLost(StorageError):
    """This writer's lease was broken or taken over: it must not commit anything more."""


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
        try:
            data = json.loads(self.run.store.get_bytes(self.key))
        except StorageNotFound:
            return None
        except ValueError:
            return {"token": "", "owner": "an unreadable lease", "heartbeat": 0.0}
        return data if isinstance(data, dict) else {"token": "", "heartbeat": 0.0}

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
        """Take the lease or raise LeaseHeld; a stale lease is broken with a warning.

        A live holder on this host is refused at once. One on another host may be a
        pod that just died (a RayJob retried elsewhere): with ``wait`` we wait until its
        heartbeat would have expired, and refuse only if it is still renewed.
        """
        deadline: float | None = None
        for _ in range(1000):
            if self.run.store.put_bytes_if_absent(self.key, self._body()):
                self.check()  # a breaker racing us may have deleted ours: trust what is stored
                return
            current = self.holder()
            if current is None:
                continue
            if current.get("token") == self.token:
                return
            if self.stale(current):
                log.warning("breaking a stale lease: %s", self.describe(current))
                self.run.store.delete(self.key)
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
        """Write a fresh heartbeat (only while the lease is still ours)."""
        self.check()
        self.run.store.put_bytes(self.key, self._body())

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
            current = self.holder()
            if current is not None and current.get("token") == self.token:
                self.run.store.delete(self.key)
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
