"""Operator lifecycle paths against the emulated API server and moto S3: failed evaluation
Jobs, Kueue admission, spike and outlier Events, evaluation scores in the outlier rule.

The test plays KubeRay (RayJob status), Kueue (unsuspending a RayJob), the Job controller
(eval Job status, TTL clean-up) and the trainer and evaluator (telemetry, checkpoints and
lm-eval result files in the bucket). Each test uses its own namespace.
"""

from __future__ import annotations

import io
import json
import math
import time

from k8s.harness import sweep_body
from polypythia import planner
from polypythia.k8s import labels as L
from polypythia.k8s.observe import SweepObserver
from polypythia.k8s.rayjob import config_of, entrypoint, kuberay_rule_errors
from polypythia.monitoring.exporter import SweepExporter
from polypythia.spec import sweep_from_object


def _events(cluster, ns: str, reason: str, run: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        e
        for e in cluster.emulator.list_objects("v1/events", ns)
        if e.get("reason") == reason and f"run {run}:" in e.get("message", "")
    ]


def _put(cluster, bucket: str, key: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    cluster.s3.client().put_object(bucket, key, io.BytesIO(data), len(data))


def _checkpoint(cluster, bucket: str, sweep: str, run: str, step: int) -> None:  # type: ignore[no-untyped-def]
    base = f"sweeps/{sweep}/{run}/checkpoints/step{step}"
    _put(cluster, bucket, f"{base}/model.safetensors", b"x")
    manifest = {"step": step, "files": [{"path": "model.safetensors", "size": 1}]}
    _put(cluster, bucket, f"{base}/COMPLETE", json.dumps(manifest).encode())


def _telemetry(  # type: ignore[no-untyped-def]
    cluster, bucket: str, sweep: str, run: str, last: int, offset: float, spike_at: int | None
) -> None:
    """A slowly falling, slightly noisy loss (shifted by ``offset``); four steps of blow-up
    from ``spike_at`` on."""
    lines = []
    for step in range(1, last + 1):
        spiking = spike_at is not None and spike_at <= step < spike_at + 4
        loss = 8.0 if spiking else 3.0 + offset - 0.002 * step + 0.01 * math.sin(1.7 * step)
        record = {"step": step, "loss": loss, "grad_norm": 1.0 + 0.02 * math.cos(step)}
        lines.append(json.dumps({**record, "attempt": 0}))
    key = f"sweeps/{sweep}/{run}/telemetry/{1:09d}-{last:09d}.jsonl"
    _put(cluster, bucket, key, ("\n".join(lines) + "\n").encode())


def _lm_eval(acc: float) -> bytes:
    """An evaluation file in lm-eval 0.4's result structure."""
    return json.dumps(
        {
            "results": {
                "pp_cloze": {"alias": "pp_cloze", "acc,none": acc, "acc_stderr,none": 0.01}
            },
            "versions": {"pp_cloze": 1},
            "config": {"model": "hf"},
        }
    ).encode()


def _eval_file(cluster, bucket: str, sweep: str, run: str, step: int, acc: float) -> None:  # type: ignore[no-untyped-def]
    _put(cluster, bucket, f"sweeps/{sweep}/{run}/evals/step{step}.json", _lm_eval(acc))


def test_config_of_reads_back_every_entrypoint() -> None:
    """The fast inverse of `entrypoint` agrees with shlex on quotes and shell characters."""
    for config in ({"a": "it's", "b": [1, 2]}, {"c": "''x' \"q\" $HOME \\"}, {}):
        assert config_of({"spec": {"entrypoint": entrypoint(config)}}) == config
    hand = {"spec": {"entrypoint": 'polypythia train --config "{\\"a\\": 1}" --x'}}
    assert config_of(hand) == {"a": 1}
    assert config_of({"spec": {"entrypoint": "polypythia train"}}) is None
    assert config_of({"spec": {}}) is None


def test_failed_eval_job_is_retried_then_recorded_and_never_retried(cluster) -> None:
    ns, sweep, run = "evfail", "ef", "ef-nano-s0"
    storage = cluster.namespace_with_storage(ns)
    bucket = storage["bucket"]
    cluster.apply_sweep(ns, sweep_body(sweep, seeds=1, sizes=("nano",), storage=storage))
    cluster.wait_for("RayJob", lambda: cluster.rayjobs(ns, sweep))
    cluster.set_rayjob_status(ns, run, "Running", "RUNNING")
    _checkpoint(cluster, bucket, sweep, run, 5)

    # Each try fails (the Job controller's verdict); the operator tries again, 3 tries in all.
    for attempt in range(3):
        name = L.eval_job_name(run, 5, attempt)
        cluster.wait_for(
            f"eval Job {name}",
            lambda n=name: n in [j["metadata"]["name"] for j in cluster.eval_jobs(ns, sweep)],
        )
        cluster.set_job_status(ns, name, succeeded=False)
    status = cluster.wait_for(
        "evaluation recorded as failed",
        lambda: (
            cluster.status(ns, sweep).get("evaluations", {}).get("failed") == 1
            and cluster.status(ns, sweep)
        ),
    )
    assert status["runs"][0]["evalFailed"] == [5]
    assert len(_events(cluster, ns, "EvaluationFailed", run)) == 1
    time.sleep(1.5)  # three passes: no fourth try
    assert len(cluster.eval_jobs(ns, sweep)) == 3

    # The operator dies; meanwhile the failed Jobs' TTL runs out and they are deleted.
    cluster.kill_operator()
    for job in cluster.eval_jobs(ns, sweep):
        cluster.batch.delete_namespaced_job(job["metadata"]["name"], ns)
    _checkpoint(cluster, bucket, sweep, run, 10)
    cluster.start_operator()
    jobs = cluster.wait_for("eval Job for step 10", lambda: cluster.eval_jobs(ns, sweep))
    time.sleep(1.5)
    jobs = cluster.eval_jobs(ns, sweep)
    assert [j["metadata"]["annotations"][L.STEPS] for j in jobs] == ["10"]
    status = cluster.status(ns, sweep)
    assert status["evaluations"]["failed"] == 1 and status["runs"][0]["evalFailed"] == [5]
    assert len(_events(cluster, ns, "EvaluationFailed", run)) == 1


def test_eval_tries_are_counted_when_failed_jobs_vanish_before_the_next_try(cluster) -> None:
    """A short Job TTL deletes each failed try before the operator makes the next one:
    still 3 tries in all, then the step is given up."""
    ns, sweep, run = "evttl", "et", "et-nano-s0"
    storage = cluster.namespace_with_storage(ns)
    cluster.apply_sweep(ns, sweep_body(sweep, seeds=1, sizes=("nano",), storage=storage))
    cluster.wait_for("RayJob", lambda: cluster.rayjobs(ns, sweep))
    cluster.set_rayjob_status(ns, run, "Running", "RUNNING")
    _checkpoint(cluster, storage["bucket"], sweep, run, 5)
    for attempt in range(3):
        name = L.eval_job_name(run, 5, attempt)
        job = cluster.wait_for(
            f"eval Job {name}",
            lambda n=name: [j for j in cluster.eval_jobs(ns, sweep) if j["metadata"]["name"] == n],
        )[0]
        assert job["metadata"]["annotations"][L.EVAL_TRY] == str(attempt)
        cluster.set_job_status(ns, name, succeeded=False)
        tries = attempt + 1
        cluster.wait_for(
            f"try {tries} counted",
            lambda t=tries: (
                cluster.row(ns, sweep, run).get("evalTries", {}).get("5") == t
                or cluster.row(ns, sweep, run).get("evalFailed") == [5]
            ),
        )
        cluster.batch.delete_namespaced_job(name, ns)  # its TTL ran out
    cluster.wait_for("given up", lambda: cluster.row(ns, sweep, run).get("evalFailed") == [5])
    time.sleep(1.5)  # three passes: no fourth try
    assert cluster.eval_jobs(ns, sweep) == []
    assert len(_events(cluster, ns, "EvaluationFailed", run)) == 1


def test_kueue_rayjobs_are_created_suspended_and_left_to_kueue(cluster) -> None:
    ns, sweep = "kueue", "kq"
    storage = cluster.namespace_with_storage(ns)
    body = sweep_body(
        sweep,
        seeds=2,
        sizes=("nano",),
        storage=storage,
        resources={"default": {"queueName": "team-a"}},
    )
    cluster.apply_sweep(ns, body)
    jobs = cluster.wait_for(
        "2 RayJobs", lambda: len(cluster.rayjobs(ns, sweep)) == 2 and cluster.rayjobs(ns, sweep)
    )
    for job in jobs:
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert job["spec"]["suspend"] is True and kuberay_rule_errors(job) == []
    admitted, waiting = "kq-nano-s0", "kq-nano-s1"
    # KubeRay reports both as Suspended; that is waiting for Kueue, not a suspended run.
    for name in (admitted, waiting):
        cluster.custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", ns, "rayjobs", name, {"status": {"jobDeploymentStatus": "Suspended"}}
        )
    cluster.wait_for("Queued", lambda: cluster.row(ns, sweep, waiting).get("phase") == "Queued")
    # Kueue admits one: it unsuspends it, and KubeRay starts it.
    cluster.custom.patch_namespaced_custom_object(
        "ray.io", "v1", ns, "rayjobs", admitted, {"spec": {"suspend": False}}
    )
    cluster.set_rayjob_status(ns, admitted, "Running", "RUNNING")
    cluster.wait_for("Running", lambda: cluster.row(ns, sweep, admitted).get("phase") == "Running")
    before = {
        j["metadata"]["name"]: j["metadata"]["generation"] for j in cluster.rayjobs(ns, sweep)
    }
    time.sleep(1.5)  # three passes
    after = {j["metadata"]["name"]: j for j in cluster.rayjobs(ns, sweep)}
    # The operator changed neither spec: Kueue owns spec.suspend.
    assert {n: j["metadata"]["generation"] for n, j in after.items()} == before
    assert after[admitted]["spec"]["suspend"] is False
    assert after[waiting]["spec"]["suspend"] is True
    status = cluster.status(ns, sweep)
    assert status["phase"] == "Running" and status["runsRunning"] == 2


def test_eval_scores_flag_an_outlier_and_events_come_once(cluster) -> None:
    """Five seeds of one size: seed 3 scores far below the others at two consecutive
    evaluated checkpoints (an eval outlier, its loss is normal); seed 1's loss spikes once."""
    ns, sweep = "outlier", "ol"
    storage = cluster.namespace_with_storage(ns)
    bucket = storage["bucket"]
    body = sweep_body(sweep, seeds=5, sizes=("nano",), storage=storage, maxConcurrentRuns=5)
    body["spec"]["training"]["steps"] = 100
    body["spec"]["checkpoints"] = {"schedule": "every", "every": 10}
    cluster.apply_sweep(ns, body)
    runs = [f"ol-nano-s{seed}" for seed in range(5)]
    cluster.wait_for("5 RayJobs", lambda: len(cluster.rayjobs(ns, sweep)) == 5)
    for run in runs:
        cluster.set_rayjob_status(ns, run, "Running", "RUNNING")
    accuracy = {0: 0.50, 1: 0.51, 2: 0.49, 3: 0.20, 4: 0.505}
    for seed, run in enumerate(runs):
        _telemetry(cluster, bucket, sweep, run, 60, 0.01 * seed, 45 if seed == 1 else None)
        for step in (10, 20, 30):
            _checkpoint(cluster, bucket, sweep, run, step)
            acc = accuracy[seed] if step >= 20 else 0.3 + 0.01 * seed
            _eval_file(cluster, bucket, sweep, run, step, acc)

    row = cluster.wait_for(
        "outlier flagged",
        lambda: cluster.row(ns, sweep, runs[3]).get("outlier") and cluster.row(ns, sweep, runs[3]),
    )
    assert row["outlierSignal"] == "eval:pp_cloze/acc" and row["outlierStep"] == 20
    assert row["outlierScore"] > 5  # the test's score, above its calibrated threshold
    status = cluster.status(ns, sweep)
    assert status["outliers"] == 1
    assert [r["name"] for r in status["runs"] if r.get("outlier")] == [runs[3]]
    cluster.wait_for("spike counted", lambda: cluster.row(ns, sweep, runs[1]).get("spikes") == 1)
    outlier_events = cluster.wait_for(
        "OutlierDetected Event", lambda: _events(cluster, ns, "OutlierDetected", runs[3])
    )
    assert "eval:pp_cloze/acc from step 20" in outlier_events[0]["message"]
    cluster.wait_for("LossSpike Event", lambda: _events(cluster, ns, "LossSpike", runs[1]))

    # More passes, and an operator restart that rebuilds its caches from storage:
    # the verdict and the spike count stand, and neither Event comes again.
    time.sleep(1.5)
    cluster.kill_operator()
    cluster.start_operator()
    _checkpoint(cluster, bucket, sweep, runs[0], 40)
    cluster.wait_for(
        "restarted operator's pass",
        lambda: cluster.row(ns, sweep, runs[0]).get("lastCheckpoint") == 40,
    )
    time.sleep(1.5)
    assert len(_events(cluster, ns, "OutlierDetected", runs[3])) == 1
    assert len(_events(cluster, ns, "LossSpike", runs[1])) == 1
    assert not any(_events(cluster, ns, "OutlierDetected", r) for r in runs if r != runs[3])
    assert cluster.row(ns, sweep, runs[3])["outlierSignal"] == "eval:pp_cloze/acc"
    assert cluster.row(ns, sweep, runs[1])["spikes"] == 1


def test_observer_exports_task_scores_and_outlier_signals(cluster) -> None:
    """The exporter gets lm-eval scores by metric name (`acc`, not `acc,none`) and one
    bounded outlier signal per family (`loss`, `eval`)."""
    bucket = cluster.s3.make_bucket()
    body = sweep_body("ob", seeds=4, sizes=("nano",), storage={"bucket": bucket, "secure": False})
    body["metadata"]["namespace"] = "default"
    sweep = sweep_from_object(body, source="test", namespace="default")
    plan = planner.plan_sweep(sweep)
    for seed, run in enumerate(r.name for r in plan):
        for step in (5, 10):
            _eval_file(cluster, bucket, "ob", run, step, 0.1 if seed == 2 else 0.5 + 0.01 * seed)
    exporter = SweepExporter()
    observer = SweepObserver(("default", "ob"), exporter)
    creds = (cluster.s3.access_key, cluster.s3.secret_key)
    out = observer.observe(sweep, plan, [r.name for r in plan], creds, cluster.s3.url)
    assert [n for n, o in out.items() if o.outlier] == ["ob-nano-s2"]
    text = exporter.exposition().decode()
    assert 'metric="acc"' in text and "acc,none" not in text
    flagged = [
        line
        for line in text.splitlines()
        if line.startswith("polypythia_outlier{") and line.endswith(" 1.0")
    ]
    assert len(flagged) == 1 and 'seed="2"' in flagged[0] and 'signal="eval"' in flagged[0]
    # Files never change once written: a second pass keeps the very objects it read.
    read = {(n, s): id(f) for n, c in observer.runs.items() for s, f in c.evals.items()}
    observer.observe(sweep, plan, [r.name for r in plan], creds, cluster.s3.url)
    again = {(n, s): id(f) for n, c in observer.runs.items() for s, f in c.evals.items()}
    assert again == read and len(read) == 8
