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

from k8s.harness import sweep_body
from polypythia.k8s import reconcile as R
from polypythia.storage import RunStore

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
    cluster, bucket: str, first: int, last: int, attempt: int, spike_at: int | None
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
    key = f"sweeps/{SWEEP}/{RUN}/telemetry/{first:09d}-{last:09d}{suffix}.jsonl"
    _put(cluster, bucket, key, ("\n".join(lines) + "\n").encode())


def test_spike_rewinds_the_run_once_and_a_restarted_operator_keeps_it(cluster) -> None:
    storage = cluster.namespace_with_storage(NS)
    bucket = storage["bucket"]
    body = sweep_body(
        SWEEP,
        seeds=1,
        sizes=("nano",),
        storage=storage,
        maxRetries=1,
        instability={
            "action": "rewind",
            "signals": ["loss"],
            "rewind": {"stepsBefore": 10, "skipBatches": 5, "maxRewinds": 1},
        },
    )
    body["spec"]["training"]["steps"] = 200
    body["spec"]["checkpoints"] = {"schedule": "every", "every": 100, "resumeEvery": 10}
    cluster.apply_sweep(NS, body)
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
    run = RunStore.open(
        f"s3://{bucket}/sweeps/{SWEEP}/{RUN}",
        endpoint=cluster.s3.url,
        secure=False,
        access_key=cluster.s3.access_key,
        secret_key=cluster.s3.secret_key,
    )
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
