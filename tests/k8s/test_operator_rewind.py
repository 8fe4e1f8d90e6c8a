"""Spike action `rewind` in the operator, against the emulated API server and moto S3.

The test plays KubeRay (RayJob status) and the trainer (checkpoints and telemetry with
a loss spike in the bucket). The operator must record the rewind in storage, replace
the running RayJob with a new attempt that is not counted as a retry, say so in the
status and an Event, refuse past maxRewinds, and never rewind a spike twice, also
after it was killed and restarted.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

from k8s.harness import sweep_body
from polypythia.k8s import reconcile as R
from polypythia.k8s.observe import SweepObserver, _Cached
from polypythia.monitoring.spikes import SpikeSettings
from polypythia.runcore.monitor import RunMonitor
from polypythia.storage import RunStore, pins

NS, SWEEP, RUN = "rewind", "rw", "rw-nano-s0"


def _status(cluster) -> dict:  # type: ignore[no-untyped-def]
    return cluster.sweep(NS, SWEEP).get("status") or {}


def _row(cluster) -> dict:  # type: ignore[no-untyped-def]
    return next((r for r in _status(cluster).get("runs", []) if r["name"] == RUN), {})


def _rayjobs(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(j["metadata"]["name"] for j in cluster.rayjobs(NS, SWEEP))


def _events(cluster, reason: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in cluster.emulator.list_objects("v1/events", NS) if e.get("reason") == reason]


def _put(cluster, bucket: str, key: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    cluster.s3.client().put_object(bucket, key, io.BytesIO(data), len(data))


def _checkpoint(cluster, bucket: str, step: int, attempt: int) -> None:  # type: ignore[no-untyped-def]
    base = f"sweeps/{SWEEP}/{RUN}/checkpoints/step{step}"
    _put(cluster, bucket, f"{base}/model.safetensors", b"x")
    manifest = {"step": step, "files": [{"path": "model.safetensors", "size": 1}]}
    _put(cluster, bucket, f"{base}/COMPLETE", json.dumps({**manifest, "attempt": attempt}).encode())


def _telemetry(  # type: ignore[no-untyped-def]
    cluster,
    bucket: str,
    first: int,
    last: int,
    attempt: int,
    spike_at: int | None,
    sweep: str = SWEEP,
    run: str = RUN,
) -> None:
    """A slowly falling, slightly noisy loss; from ``spike_at`` on, four steps of blow-up."""
    lines = []
    for step in range(first, last + 1):
        spiking = spike_at is not None and spike_at <= step < spike_at + 4
        loss = 8.0 if spiking else 3.0 - 0.002 * step + 0.01 * math.sin(1.7 * step)
        grad = 1.0 + 0.02 * math.cos(step)
        lines.append(
            json.dumps({"step": step, "loss": loss, "grad_norm": grad, "attempt": attempt})
        )
    suffix = f".a{attempt}" if attempt else ""
    key = f"sweeps/{sweep}/{run}/telemetry/{first:09d}-{last:09d}{suffix}.jsonl"
    _put(cluster, bucket, key, ("\n".join(lines) + "\n").encode())


def _rewinding_sweep(name: str, storage: dict, **spec: object) -> dict:
    """One 200-step run that rewinds (once at most) on a loss spike, with a resume
    checkpoint every 10 steps to restart from."""
    body = sweep_body(
        name,
        seeds=1,
        sizes=("nano",),
        storage=storage,
        instability={
            "action": "rewind",
            "signals": ["loss"],
            "rewind": {"stepsBefore": 10, "skipBatches": 5, "maxRewinds": 1},
        },
        **spec,
    )
    body["spec"]["training"]["steps"] = 200
    body["spec"]["checkpoints"] = {"schedule": "every", "every": 100, "resumeEvery": 10}
    return body


def test_spike_rewinds_the_run_once_and_a_restarted_operator_keeps_it(cluster) -> None:
    storage = cluster.namespace_with_storage(NS)
    bucket = storage["bucket"]
    cluster.apply_sweep(NS, _rewinding_sweep(SWEEP, storage, maxRetries=1))
    cluster.wait_for("RayJob", lambda: _rayjobs(cluster) == [RUN])
    cluster.set_rayjob_status(NS, RUN, "Running", "RUNNING")
    cluster.wait_for("Running", lambda: _row(cluster).get("phase") == "Running")

    # The trainer of attempt 0 checkpointed every 10 steps and its loss spiked at step 61.
    for step in range(0, 70, 10):
        _checkpoint(cluster, bucket, step, attempt=0)
    _telemetry(cluster, bucket, 1, 70, attempt=0, spike_at=61)

    # Rewind: from step 50 (the last checkpoint <= 61 - 10), skipping batches [51, 56).
    cluster.wait_for("rewound RayJob", lambda: _rayjobs(cluster) == [f"{RUN}-r1"])
    job = cluster.rayjobs(NS, SWEEP)[0]
    assert job["metadata"]["annotations"]["polypythia.io/rewinds"] == "1"
    run = RunStore.open(f"s3://{bucket}/sweeps/{SWEEP}/{RUN}", **cluster.s3.store_options())
    record = run.read_rewinds()
    assert [(r["restartStep"], r["skipBatches"]) for r in record["rewinds"]] == [(50, [51, 56])]
    assert record["rewinds"][0]["spike"]["onsetStep"] == 61
    assert run.complete_checkpoints() == [0, 10, 20, 30, 40, 50]
    assert run.read_telemetry()[-1]["step"] == 50
    status = cluster.wait_for(
        "status", lambda: _status(cluster).get("rewinds") == 1 and _status(cluster)
    )
    row = _row(cluster)
    assert row["rewinds"] == 1 and row["retries"] == 0 and row["attempt"] == 1
    assert status["recentRewinds"][0]["run"] == RUN
    assert status["recentRewinds"][0]["restartStep"] == 50
    events = cluster.wait_for("RunRewound Event", lambda: _events(cluster, "RunRewound"))
    assert "restarts from step 50 skipping batches [51, 56)" in events[0]["message"]
    assert _events(cluster, "LossSpike")[0]["type"] == "Warning"

    # The operator dies and comes back: nothing is rewound again.
    cluster.kill_operator()
    cluster.set_rayjob_status(NS, f"{RUN}-r1", "Running", "RUNNING")
    cluster.start_operator()
    # The rewound attempt (telemetry attempt 1) trains on and meets another spike at 81:
    # maxRewinds is 1, so it is refused, recorded and reported, and the RayJob stays.
    _checkpoint(cluster, bucket, 60, attempt=1)
    _telemetry(cluster, bucket, 51, 90, attempt=1, spike_at=81)
    cluster.wait_for("refusal", lambda: _row(cluster).get("rewindsRefused") == 1)
    refused = cluster.wait_for("RewindRefused Event", lambda: _events(cluster, "RewindRefused"))
    assert "maxRewinds is 1" in refused[0]["message"]
    assert _rayjobs(cluster) == [f"{RUN}-r1"]
    assert len(run.read_rewinds()["rewinds"]) == 1
    assert len(_events(cluster, "RunRewound")) == 1
    assert run.complete_checkpoints() == [0, 10, 20, 30, 40, 50, 60]
    assert [r["attempt"] for r in run.read_telemetry()] == [0] * 50 + [1] * 40

    # A failure of the rewound attempt is a retry (maxRetries 1), not eaten by the rewind.
    cluster.set_rayjob_status(NS, f"{RUN}-r1", "Failed", "FAILED")
    cluster.wait_for("retry", lambda: f"{RUN}-r2" in _rayjobs(cluster))
    row = cluster.wait_for("retry row", lambda: _row(cluster).get("retries") == 1 and _row(cluster))
    assert row["rewinds"] == 1 and row["attempt"] == 2


def test_the_restart_checkpoint_stays_pinned_while_the_old_attempt_prunes(
    cluster, tmp_path: Path
) -> None:
    """KubeRay holds the old RayJob (its finalizer) while its trainer still runs and
    prunes resume checkpoints: the checkpoint the operator chose cannot go, the new
    attempt starts only once the old RayJob is gone and resumes from it, and the pin is
    released when the new attempt checkpoints past it."""
    ns, sweep, name = "pinned", "pn", "pn-nano-s0"
    storage = cluster.namespace_with_storage(ns)
    bucket = storage["bucket"]
    cluster.apply_sweep(ns, _rewinding_sweep(sweep, storage))
    cluster.wait_for("RayJob", lambda: [j["metadata"]["name"] for j in cluster.rayjobs(ns, sweep)])
    finalizer = {"metadata": {"finalizers": ["ray.io/rayjob-finalizer"]}}
    cluster.custom.patch_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", name, finalizer)
    cluster.set_rayjob_status(ns, name, "Running", "RUNNING")
    run = RunStore.open(f"s3://{bucket}/sweeps/{sweep}/{name}", **cluster.s3.store_options())

    def commit(step: int, attempt: int) -> None:
        folder = tmp_path / f"step{step}-a{attempt}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"w" * 64)
        run.commit_checkpoint(step, folder, attempt=attempt)

    # Attempt 0 checkpointed every 10 steps and is deleting step 50 right now (keepResume).
    for step in range(0, 70, 10):
        commit(step, attempt=0)
    announcement = json.dumps({"step": 50, "at": time.time()}).encode()
    run.store.put_bytes(run.key("pins/step50.pruning"), announcement)
    _telemetry(cluster, bucket, 1, 70, attempt=0, spike_at=61, sweep=sweep, run=name)

    # The rewind goes to the last checkpoint no pruner is at work on, pinned for attempt 1.
    rewinds = cluster.wait_for("rewind", lambda: run.read_rewinds()["rewinds"])
    assert rewinds[0]["restartStep"] == 40 and rewinds[0]["attempt"] == 1
    assert {s: p["attempt"] for s, p in pins.pins(run).items()} == {40: 1}
    old = cluster.wait_for(
        "old RayJob deleting",
        lambda: next(
            (
                j
                for j in cluster.rayjobs(ns, sweep)
                if j["metadata"]["name"] == name and j["metadata"].get("deletionTimestamp")
            ),
            None,
        ),
    )
    assert old is not None
    # The old trainer prunes on: the pinned checkpoint stays; the others go as before.
    run.store.delete(run.key("pins/step50.pruning"))
    assert pins.prune(run, 40) is False and pins.prune(run, 30) is True
    assert run.complete_checkpoints() == [0, 10, 20, 40]
    time.sleep(1.5)  # passes run: no new attempt while the old RayJob exists
    assert [j["metadata"]["name"] for j in cluster.rayjobs(ns, sweep)] == [name]

    # KubeRay lets the old RayJob go: the new attempt starts and resumes from step 40.
    cluster.custom.patch_namespaced_custom_object(
        "ray.io", "v1", ns, "rayjobs", name, {"metadata": {"finalizers": []}}
    )
    cluster.wait_for(
        "new attempt",
        lambda: [j["metadata"]["name"] for j in cluster.rayjobs(ns, sweep)] == [f"{name}-r1"],
    )
    assert run.drop_abandoned() == [] and run.sound_checkpoint() == 40
    commit(50, attempt=1)
    assert pins.release_reached(run, 50, 1) == [40] and pins.pins(run) == {}


def test_running_runs_are_the_rewindable_ones() -> None:
    def job(run: str, attempt: int, deployment: str) -> dict:
        return {
            "metadata": {
                "labels": {"polypythia.io/run": run, "polypythia.io/attempt": str(attempt)}
            },
            "spec": {},
            "status": {"jobDeploymentStatus": deployment, "jobStatus": "RUNNING"},
        }

    jobs = [job("a", 0, "Failed"), job("a", 1, "Running"), job("b", 0, "Running"), job("b", 1, "")]
    assert R.running_runs(jobs) == frozenset({"a"})


def test_an_ended_runs_pins_are_released_once(tmp_path: Path) -> None:
    """The operator releases the pins of a run that ended (failed for good, say, before
    its rewound attempt checkpointed past the pin), looking once per run."""
    run = RunStore.open(str(tmp_path / "store" / SWEEP / RUN))
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w")
    run.commit_checkpoint(40, folder, attempt=0)
    pins.pin(run, 40, 1, "rewind: spike at 61")
    observer = SweepObserver((NS, SWEEP))
    observer.runs[RUN] = _Cached(RunMonitor(RUN, SpikeSettings(), frozenset()), run)
    observer.finish([RUN, "never-observed"])
    assert pins.pins(run) == {} and run.is_complete(40)
    pins.pin(run, 40, 1, "written by hand later")
    observer.finish([RUN])  # every pass calls finish: the run is not listed again
    assert list(pins.pins(run)) == [40]
