"""Events under load: each transition is announced once, also when the operator's watch of
its sweeps lags behind its own status writes (CI saw each "cannot start" Event twice with
a load average of 20). Its own module: the lag is set on this module's emulator."""

from __future__ import annotations

import time
from collections import Counter

from k8s.harness import GROUP, PLURAL, VERSION, sweep_body

SWEEPS = f"{GROUP}/{VERSION}/{PLURAL}"
LAG_S = 2.0  # several passes (poll interval 0.5 s) run before a status write is seen


def _status(cluster, ns: str, name: str) -> dict:  # type: ignore[no-untyped-def]
    return cluster.sweep(ns, name).get("status") or {}


def _events(cluster, ns: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [
        (e.get("reason", ""), e.get("message", ""))
        for e in cluster.emulator.list_objects("v1/events", ns)
    ]


def test_each_transition_is_announced_once_while_the_sweep_watch_lags(cluster) -> None:
    cluster.create_namespace("lag")
    cluster.create_secret("lag", "s3")
    storage = {"bucket": cluster.s3.make_bucket(), "secretName": "s3", "secure": False}
    cluster.emulator.watch_lag[SWEEPS] = LAG_S
    cluster.apply_sweep(
        "lag", sweep_body("lg", seeds=3, sizes=("nano",), storage=storage, maxRetries=0)
    )
    cluster.wait_for("3 RayJobs", lambda: len(cluster.rayjobs("lag", "lg")) == 3)
    for name in ("lg-nano-s0", "lg-nano-s1", "lg-nano-s2"):
        cluster.set_rayjob_status("lag", name, "Running", "RUNNING")
    cluster.wait_for("running", lambda: _status(cluster, "lag", "lg").get("runsRunning") == 3)
    # Two transitions in passes that follow each other before either status write is seen;
    # seed 2 keeps training, so passes go on (a settled sweep would sleep).
    cluster.set_rayjob_status("lag", "lg-nano-s0", "Failed", "FAILED")
    time.sleep(0.3)
    cluster.set_rayjob_status("lag", "lg-nano-s1", "Complete", "SUCCEEDED")
    cluster.wait_for("ended", lambda: _status(cluster, "lag", "lg").get("runsSucceeded") == 1)
    cluster.wait_for(
        "the Events",
        lambda: {"RunFailed", "RunSucceeded"} <= {r for r, _ in _events(cluster, "lag")},
    )
    time.sleep(2 * LAG_S)  # every lagging write delivered, and passes run over each
    counts = Counter(_events(cluster, "lag"))
    assert [e for e, n in counts.items() if n > 1] == [], counts
    assert counts[("RunSucceeded", "run lg-nano-s1: finished")] == 1


def test_a_failed_status_write_does_not_announce_the_transition_again(cluster) -> None:
    cluster.create_namespace("flaky")
    cluster.create_secret("flaky", "s3")
    storage = {"bucket": cluster.s3.make_bucket(), "secretName": "s3", "secure": False}
    cluster.apply_sweep(
        "flaky", sweep_body("fl", seeds=2, sizes=("nano",), storage=storage, maxRetries=0)
    )
    cluster.wait_for("2 RayJobs", lambda: len(cluster.rayjobs("flaky", "fl")) == 2)
    for name in ("fl-nano-s0", "fl-nano-s1"):
        cluster.set_rayjob_status("flaky", name, "Running", "RUNNING")
    cluster.wait_for("running", lambda: _status(cluster, "flaky", "fl").get("runsRunning") == 2)
    # The pass that sees the failure posts its Event, then its status write fails.
    cluster.emulator.fail_next.append(("patch", f"{PLURAL}/status", '"runsFailed": 1'))
    cluster.set_rayjob_status("flaky", "fl-nano-s0", "Failed", "FAILED")
    cluster.wait_for("the write failed", lambda: not cluster.emulator.fail_next)
    cluster.wait_for("written", lambda: _status(cluster, "flaky", "fl").get("runsFailed") == 1)
    time.sleep(1.5)  # passes go on over the written status (seed 1 still trains)
    counts = Counter(_events(cluster, "flaky"))
    failed = "run fl-nano-s0: attempt 0 failed after the last retry"
    assert counts[("RunFailed", failed)] == 1, counts
    assert [e for e, n in counts.items() if n > 1] == [], counts
