"""One writer per run: the lease in storage refuses a second trainer naming the holder,
a stale lease (old heartbeat, or a dead process on this host) is broken, and a writer
that lost its lease commits nothing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from polypythia.storage import (
    LeaseHeld,
    LeaseLost,
    LocalStore,
    RunLease,
    RunStore,
    StorageUnavailable,
)
from polypythia.storage.lease import LEASE, check_lease
from polypythia.storage.retry import RetryingStore


def test_create_if_absent_lets_exactly_one_writer_in(run_uri: str) -> None:
    store = RunStore.open(run_uri).store
    assert store.put_bytes_if_absent("x/LEASE", b"first") is True
    assert store.put_bytes_if_absent("x/LEASE", b"second") is False
    assert store.get_bytes("x/LEASE") == b"first"


def test_a_second_writer_is_refused_naming_the_holder(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    first = RunLease(run, owner="polypythia train first")
    first.acquire()
    second = RunLease(RunStore.open(run_uri), owner="polypythia train second")
    with pytest.raises(LeaseHeld) as refused:
        second.acquire()
    message = str(refused.value)
    assert "polypythia train first" in message and f"pid {os.getpid()}" in message
    assert "expires" in message and "delete" in message and LEASE in message
    first.release()
    second.acquire()  # released: the next writer gets it
    second.release()
    assert not run.store.exists(run.key(LEASE))


def test_a_stale_lease_is_broken(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    old = {"token": "t0", "owner": "gone", "host": "elsewhere", "pid": 1, "heartbeat": 0.0}
    run.store.put_bytes(run.key(LEASE), json.dumps({**old, "ttlSeconds": 60}).encode())
    lease = RunLease(run, owner="new")
    lease.acquire()
    check_lease(run, lease.token)
    lease.release()


def test_a_lease_of_a_dead_process_on_this_host_is_broken_at_once(run_uri: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = RunStore.open(run_uri)
    ghost = RunLease(run, owner="killed trainer")
    run.store.put_bytes(
        run.key(LEASE),
        json.dumps(
            {**json.loads(ghost._body()), "pid": dead.pid, "heartbeat": time.time()}
        ).encode(),
    )
    lease = RunLease(run, owner="rerun")
    lease.acquire()
    lease.release()


def test_a_writer_that_lost_its_lease_may_not_commit(run_uri: str) -> None:
    run = RunStore.open(run_uri)
    lease = RunLease(run, owner="slow", ttl_s=0.01)
    lease.acquire()
    time.sleep(0.05)  # its heartbeat is now stale: another writer breaks in
    other = RunLease(RunStore.open(run_uri), owner="fast")
    other.acquire()
    with pytest.raises(LeaseLost, match="fast"):
        check_lease(run, lease.token)
    lease.release()  # does not delete the new holder's lease
    check_lease(run, other.token)
    other.release()


def test_a_holder_on_another_host_is_waited_out_until_its_heartbeat_expires(
    run_uri: str,
) -> None:
    """A RayJob retried on a new pod meets the dead pod's lease: it waits, then takes it."""
    run = RunStore.open(run_uri)
    dead_pod = {
        "token": "t0",
        "owner": "polypythia train (dead pod)",
        "host": "another-pod",
        "pid": 7,
        "heartbeat": time.time(),
        "ttlSeconds": 2,
    }
    run.store.put_bytes(run.key(LEASE), json.dumps(dead_pod).encode())
    start = time.monotonic()
    lease = RunLease(run, owner="retry")
    lease.acquire()
    assert 1.5 <= time.monotonic() - start < 30
    check_lease(run, lease.token)
    lease.release()
    run.store.put_bytes(run.key(LEASE), json.dumps({**dead_pod, "heartbeat": time.time()}).encode())
    with pytest.raises(LeaseHeld, match="another-pod"):
        RunLease(run, owner="impatient").acquire(wait=False)


def test_compare_and_swap_lets_exactly_one_of_two_racing_writers_in(run_uri: str) -> None:
    store = RunStore.open(run_uri).store
    store.put_bytes("x/LEASE", b"v0")
    _, v0 = store.get_versioned("x/LEASE")
    v1 = store.put_bytes_if_match("x/LEASE", b"v1", v0)
    assert v1 is not None
    assert store.put_bytes_if_match("x/LEASE", b"stale writer", v0) is None
    assert store.get_versioned("x/LEASE") == (b"v1", v1)
    assert store.delete_if_match("x/LEASE", v0) is False
    assert store.delete_if_match("x/LEASE", v1) is True
    assert store.put_bytes_if_match("x/LEASE", b"gone", v1) is None
    assert not store.exists("x/LEASE")


def _race(run_uri: str) -> tuple[RunLease, RunLease, bool, list[tuple[float, float]]]:
    """The holder renews in a tight loop while a second writer, to whom the holder looks
    stale, breaks in: the holder's renewal timeline and whether the breaker got in."""
    holder = RunLease(RunStore.open(run_uri), owner="holder", ttl_s=0.001)
    holder.acquire(wait=False)
    breaker = RunLease(RunStore.open(run_uri), owner="breaker", ttl_s=0.001)
    start = threading.Barrier(2)
    renewed: list[tuple[float, float]] = []
    got_in: list[bool] = []

    def renew() -> None:
        start.wait()
        for _ in range(20):
            began = time.monotonic()
            try:
                holder.renew()
            except LeaseLost:
                return
            renewed.append((began, time.monotonic()))

    def break_in() -> None:
        start.wait()
        try:
            breaker.acquire(wait=False)
        except LeaseHeld:
            got_in.append(False)
            return
        got_in.append(time.monotonic())

    threads = [threading.Thread(target=renew), threading.Thread(target=break_in)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got_in, "the breaker neither got in nor was refused (it crashed)"
    return holder, breaker, got_in[0], renewed


def test_two_writers_racing_renewals_never_both_hold_the_lease(run_uri: str) -> None:
    """Conditional writes (If-Match on S3, compare-and-swap locally): once the breaker's
    take-over returned, no renewal of the old holder succeeds, and the stored lease is
    the breaker's; when the breaker is refused, the holder keeps it."""
    takeovers = 0
    for _ in range(12):
        holder, breaker, got_in, renewed = _race(run_uri)
        run = holder.run
        if got_in:
            takeovers += 1
            check_lease(run, breaker.token)
            with pytest.raises(LeaseLost):
                check_lease(run, holder.token)
            assert not [r for r in renewed if r[0] > got_in], "renewed after a take-over"
            with pytest.raises(LeaseLost):
                holder.renew()
            breaker.release()
        else:
            check_lease(run, holder.token)
            holder.release()
        assert not run.store.exists(run.key(LEASE))
    assert takeovers > 0  # the race was run, not always won by the holder


class _LostAnswer:
    """A store whose next conditional write lands but whose answer is lost (a network
    cut after the server wrote): the retried request then fails its precondition."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.cut = False

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> str | None:
        written = self.inner.put_bytes_if_match(key, data, version)
        if self.cut:
            self.cut = False
            raise StorageUnavailable("answer lost")
        return written


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(tmp_path) -> None:  # type: ignore[no-untyped-def]
    flaky = _LostAnswer(LocalStore(tmp_path))
    run = RunStore(RetryingStore(flaky, retry_s=5), "t/t-nano-s0", str(tmp_path / "t/t-nano-s0"))
    lease = RunLease(run, owner="trainer")
    lease.acquire(wait=False)
    flaky.cut = True
    lease.renew()  # the retry fails its If-Match, yet the stored lease is ours: kept
    lease.renew()
    check_lease(run, lease.token)
    lease.release()
    assert not run.store.exists(run.key(LEASE))


def _break_in_together(run_uri: str, n: int) -> tuple[list, list[str], list]:
    """``n`` writers find the same stale lease and try to take it at the same moment:
    (winners, refusal messages, unexpected exceptions)."""
    run = RunStore.open(run_uri)
    old = {"token": "dead", "owner": "gone", "host": "elsewhere", "pid": 1, "heartbeat": 0.0}
    run.store.put_bytes(run.key(LEASE), json.dumps({**old, "ttlSeconds": 60}).encode())
    breakers = [RunLease(RunStore.open(run_uri), owner=f"breaker {i}") for i in range(n)]
    start = threading.Barrier(n)
    won: list[RunLease] = []
    refused: list[str] = []
    crashed: list[BaseException] = []

    def take(lease: RunLease) -> None:
        start.wait()
        try:
            lease.acquire(wait=False)
        except LeaseHeld as exc:
            refused.append(str(exc))
            return
        except BaseException as exc:  # e.g. a lease deleted under a breaker
            crashed.append(exc)
            return
        won.append(lease)

    threads = [threading.Thread(target=take, args=(b,)) for b in breakers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return won, refused, crashed


def test_breakers_racing_for_a_stale_lease_let_exactly_one_in(run_uri: str) -> None:
    """The take-over is one compare-and-swap on the stale version: one writer wins, the
    others are refused naming it (with delete-then-create, two could win)."""
    for _ in range(5):
        won, refused, crashed = _break_in_together(run_uri, 4)
        assert crashed == [] and len(won) == 1, ([w.owner for w in won], crashed)
        assert len(refused) == 3 and all(won[0].owner in m for m in refused)
        check_lease(won[0].run, won[0].token)
        won[0].release()
