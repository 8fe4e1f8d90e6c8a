"""The operator process against the emulated API server and a moto S3 server.

The test plays KubeRay (RayJob status), the Job controller (eval Job status) and the
trainer (checkpoints and eval results in the bucket). Scenarios run in order on one
operator process; each uses its own namespace so they do not see each other.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import yaml

from k8s.harness import RAYJOB_CRD, ROOT, sweep_body
from polypythia.k8s.rayjob import config_of, kuberay_rule_errors
from support.k8s_schema import schema_for

RULES = ROOT / "charts" / "polypythia" / "files" / "operator-rbac-rules.yaml"


def _names(objs: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def test_ten_run_sweep_creates_ten_valid_rayjobs(cluster) -> None:
    storage = cluster.namespace_with_storage("ten")
    cluster.apply_sweep("ten", sweep_body("tiny", maxConcurrentRuns=10, storage=storage))
    jobs = cluster.wait_for(
        "10 RayJobs",
        lambda: len(cluster.rayjobs("ten", "tiny")) == 10 and cluster.rayjobs("ten", "tiny"),
    )
    schema = schema_for(str(RAYJOB_CRD), "v1")
    sweep = cluster.sweep("ten", "tiny")
    for job in jobs:
        _, dropped, errors = schema.admit(job)
        assert errors == [] and dropped == []
        assert kuberay_rule_errors(job) == []
        assert job["metadata"]["ownerReferences"][0]["uid"] == sweep["metadata"]["uid"]
        env = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
            "containers"
        ][0]["env"]
        assert cluster.s3.secret_key not in json.dumps(job)
        assert {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"} in [
            e.get("valueFrom", {}).get("secretKeyRef") for e in env
        ]
        assert config_of(job)["run"] == job["metadata"]["labels"]["polypythia.io/run"]
    assert cluster.emulator.warnings == []
    status = cluster.wait_for(
        "status",
        lambda: (
            cluster.status("ten", "tiny").get("runsRunning") == 10 and cluster.status("ten", "tiny")
        ),
    )
    assert status["observedGeneration"] == 1 and status["sizesText"] == "nano,micro"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Progressing": "True",
        "Degraded": "False",
        "StorageReady": "True",
    }


def test_concurrency_limit_and_failure_retry(cluster) -> None:
    storage = cluster.namespace_with_storage("conc")
    cluster.apply_sweep(
        "conc", sweep_body("c", seeds=3, maxConcurrentRuns=2, maxRetries=1, storage=storage)
    )
    first = cluster.wait_for(
        "2 RayJobs", lambda: len(cluster.rayjobs("conc", "c")) == 2 and cluster.rayjobs("conc", "c")
    )
    # Every size gets a seed first (planner order), and the limit holds.
    assert _names(first) == ["c-micro-s0", "c-nano-s0"]
    cluster.wait_for("status", lambda: cluster.status("conc", "c").get("runsRunning") == 2)
    assert len(cluster.rayjobs("conc", "c")) == 2
    # One finishes: exactly one more starts.
    cluster.set_rayjob_status("conc", "c-nano-s0", "Complete", "SUCCEEDED")
    cluster.wait_for("3rd RayJob", lambda: len(cluster.rayjobs("conc", "c")) == 3)
    # One fails: retried as -r1 (resume is the trainer's), then after the limit the run is Failed.
    cluster.set_rayjob_status("conc", "c-micro-s0", "Failed", "FAILED")
    cluster.wait_for("retry", lambda: "c-micro-s0-r1" in _names(cluster.rayjobs("conc", "c")))
    cluster.set_rayjob_status("conc", "c-micro-s0-r1", "Complete", "FAILED")
    status = cluster.wait_for(
        "Degraded",
        lambda: cluster.status("conc", "c").get("runsFailed") == 1 and cluster.status("conc", "c"),
    )
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "c-micro-s0" in degraded["message"]
    row = next(r for r in status["runs"] if r["name"] == "c-micro-s0")
    assert row["phase"] == "Failed" and row["retries"] == 1
    active = [
        j
        for j in cluster.rayjobs("conc", "c")
        if not (j.get("status") or {}).get("jobDeploymentStatus")
    ]
    assert len(active) <= 2


def test_init_study_runs_wait_for_their_reference_run(cluster) -> None:
    """Runs initialised from another run's weights start only once it succeeded; when it
    fails for good they fail too, saying why, and the sweep still ends."""
    storage = cluster.namespace_with_storage("inits")
    reference = {"run": {"seed": 0, "init": "base"}}
    body = sweep_body(
        "is",
        seeds=2,
        sizes=("nano",),
        storage=storage,
        maxConcurrentRuns=4,
        maxRetries=0,
    )
    body["spec"]["inits"] = [
        {"name": "base", "strategy": "pythia"},
        {"name": "perm", "strategy": "permute", "reference": reference},
    ]
    cluster.apply_sweep("inits", body)
    first = cluster.wait_for(
        "base RayJobs",
        lambda: len(cluster.rayjobs("inits", "is")) == 2 and cluster.rayjobs("inits", "is"),
    )
    assert _names(first) == ["is-nano-s0-base", "is-nano-s1-base"]
    rows = cluster.wait_for(
        "waiting rows",
        lambda: (
            {r["name"]: r for r in cluster.status("inits", "is").get("runs", [])}
            if "message"
            in next(
                (
                    r
                    for r in cluster.status("inits", "is").get("runs", [])
                    if r["name"] == "is-nano-s0-perm"
                ),
                {},
            )
            else None
        ),
    )
    for name in ("is-nano-s0-perm", "is-nano-s1-perm"):
        assert rows[name]["phase"] == "Pending"
        assert rows[name]["message"] == "waiting for reference run is-nano-s0-base to finish"
    # The reference finishes: both dependents start, told where their weights come from.
    cluster.set_rayjob_status("inits", "is-nano-s0-base", "Complete", "SUCCEEDED")
    cluster.wait_for("dependents", lambda: len(cluster.rayjobs("inits", "is")) == 4)
    perm = next(
        j for j in cluster.rayjobs("inits", "is") if j["metadata"]["name"] == "is-nano-s1-perm"
    )
    init = config_of(perm)["init"]
    assert init["strategy"] == "permute" and init["reference"]["run"] == "is-nano-s0-base"

    # A second sweep whose reference run fails for good: its dependents fail, saying why.
    cluster.apply_sweep("inits", {**body, "metadata": {"name": "isf"}})
    cluster.wait_for(
        "reference RayJob", lambda: "isf-nano-s0-base" in _names(cluster.rayjobs("inits", "isf"))
    )
    cluster.set_rayjob_status("inits", "isf-nano-s0-base", "Failed", "FAILED")
    cluster.set_rayjob_status("inits", "isf-nano-s1-base", "Complete", "SUCCEEDED")
    status = cluster.wait_for(
        "sweep ended",
        lambda: (
            cluster.status("inits", "isf").get("runsFailed") == 3 and cluster.status("inits", "isf")
        ),
    )
    rows = {r["name"]: r for r in status["runs"]}
    for name in ("isf-nano-s0-perm", "isf-nano-s1-perm"):
        assert rows[name]["phase"] == "Failed" and rows[name].get("rayJob") is None
        assert "reference run isf-nano-s0-base failed" in rows[name]["message"]
    assert "isf-nano-s0-perm" not in _names(cluster.rayjobs("inits", "isf"))

    def cannot_start() -> list[str]:
        return [
            e["message"]
            for e in cluster.emulator.list_objects("v1/events", "inits")
            if e.get("reason") == "RunFailed" and "-perm: cannot start" in e.get("message", "")
        ]

    # kopf posts Events from a queue, so they may land after the status write.
    cluster.wait_for("2 RunFailed Events", lambda: len(cannot_start()) >= 2)
    time.sleep(1.0)
    events = cannot_start()
    assert len(events) == 2, events


def _write_checkpoint(cluster, bucket: str, run: str, step: int, sweep: str = "ev") -> None:  # type: ignore[no-untyped-def]
    client = cluster.s3.client()
    base = f"sweeps/{sweep}/{run}/checkpoints/step{step}"
    for key, data in ((f"{base}/model.safetensors", b"x"), (f"{base}/COMPLETE", b'{"files": []}')):
        client.put_object(bucket, key, io.BytesIO(data), len(data))


def _write_eval(cluster, bucket: str, run: str, step: int) -> None:  # type: ignore[no-untyped-def]
    data = json.dumps(
        {"results": {"pp_cloze": {"acc,none": 0.5, "acc_stderr,none": 0.05}}}
    ).encode()
    cluster.s3.client().put_object(
        bucket, f"sweeps/ev/{run}/evals/step{step}.json", io.BytesIO(data), len(data)
    )


def test_checkpoints_trigger_eval_jobs_never_twice_and_restart(cluster) -> None:
    storage = cluster.namespace_with_storage("evals")
    bucket = storage["bucket"]
    cluster.apply_sweep("evals", sweep_body("ev", seeds=1, sizes=("nano",), storage=storage))
    cluster.wait_for("RayJob", lambda: cluster.rayjobs("evals", "ev"))
    cluster.set_rayjob_status("evals", "ev-nano-s0", "Running", "RUNNING")
    for step in (0, 5, 10):
        _write_checkpoint(cluster, bucket, "ev-nano-s0", step)

    def steps_of(jobs: list[dict]) -> list[int]:
        return sorted(
            int(s)
            for j in jobs
            for s in j["metadata"]["annotations"]["polypythia.io/steps"].split(",")
        )

    jobs = cluster.wait_for(
        "eval Jobs for 0, 5, 10",
        lambda: (
            steps_of(cluster.eval_jobs("evals", "ev")) == [0, 5, 10]
            and cluster.eval_jobs("evals", "ev")
        ),
    )
    args = jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["evaluate", f"s3://{bucket}/sweeps/ev/ev-nano-s0"]
    # The operator dies mid-sweep; its successor must not duplicate anything.
    cluster.kill_operator()
    for step in (0, 5, 10):
        _write_eval(cluster, bucket, "ev-nano-s0", step)
    for job in jobs:
        cluster.set_job_status("evals", job["metadata"]["name"], succeeded=True)
    _write_checkpoint(cluster, bucket, "ev-nano-s0", 15)
    cluster.start_operator()
    cluster.wait_for("eval Job for 15", lambda: 15 in steps_of(cluster.eval_jobs("evals", "ev")))
    assert steps_of(cluster.eval_jobs("evals", "ev")) == [0, 5, 10, 15]
    assert _names(cluster.rayjobs("evals", "ev")) == ["ev-nano-s0"]
    status = cluster.wait_for(
        "evaluated",
        lambda: (
            cluster.status("evals", "ev").get("evaluations", {}).get("done") == 3
            and cluster.status("evals", "ev")
        ),
    )
    assert status["runs"][0]["lastCheckpoint"] == 15
    assert steps_of(cluster.eval_jobs("evals", "ev")) == [0, 5, 10, 15]
    # The sweep as applied, beside its runs: a report made later reads its settings there.
    stored = cluster.s3.client().get_object(bucket, "sweeps/ev/sweep.json").read()
    applied = json.loads(stored)
    assert applied["metadata"]["name"] == "ev"
    assert applied["spec"]["seeds"]["range"] == {"count": 1, "start": 0}
    assert applied["spec"]["instability"]["outliers"]["falseAlarmRate"] == 0.05


def test_suspend_resume_scale_and_delete(cluster) -> None:
    storage = cluster.namespace_with_storage("ops")
    cluster.apply_sweep("ops", sweep_body("ops", seeds=2, sizes=("nano",), storage=storage))
    cluster.wait_for("2 RayJobs", lambda: len(cluster.rayjobs("ops", "ops")) == 2)
    cluster.patch_sweep("ops", "ops", {"spec": {"suspend": True}})
    cluster.wait_for(
        "suspended", lambda: all(j["spec"].get("suspend") for j in cluster.rayjobs("ops", "ops"))
    )
    cluster.wait_for("phase", lambda: cluster.status("ops", "ops").get("phase") == "Suspended")
    cluster.patch_sweep(
        "ops", "ops", {"spec": {"suspend": False, "seeds": {"range": {"count": 3}}}}
    )
    cluster.wait_for(
        "resumed + scaled up",
        lambda: (
            len(cluster.rayjobs("ops", "ops")) == 3
            and not any(j["spec"].get("suspend") for j in cluster.rayjobs("ops", "ops"))
        ),
    )
    _write_checkpoint(cluster, storage["bucket"], "ops-nano-s2", 5, sweep="ops")
    cluster.wait_for("eval Job of s2", lambda: cluster.eval_jobs("ops", "ops"))
    # Removing running runs is refused until it is confirmed; nothing is deleted meanwhile.
    cluster.patch_sweep("ops", "ops", {"spec": {"seeds": {"range": {"count": 1}}}})
    cluster.wait_for(
        "destructive edit refused",
        lambda: any(
            c["reason"] == "DestructiveChangeRefused"
            for c in cluster.status("ops", "ops").get("conditions", [])
        ),
    )
    assert len(cluster.rayjobs("ops", "ops")) == 3 and cluster.eval_jobs("ops", "ops")
    cluster.patch_sweep(
        "ops",
        "ops",
        {"metadata": {"annotations": {"polypythia.io/allow-destructive-changes": "true"}}},
    )
    cluster.wait_for(
        "scaled down", lambda: _names(cluster.rayjobs("ops", "ops")) == ["ops-nano-s0"]
    )
    cluster.wait_for("eval Job of s2 gone", lambda: not cluster.eval_jobs("ops", "ops"))
    # Changing what a started run means is refused with a condition, nothing is touched.
    cluster.patch_sweep("ops", "ops", {"spec": {"training": {"steps": 40}}})
    status = cluster.wait_for(
        "rejection",
        lambda: (
            any(
                c["reason"] == "SpecChangeRejected"
                for c in cluster.status("ops", "ops").get("conditions", [])
            )
            and cluster.status("ops", "ops")
        ),
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert "training.steps" in ready["message"]
    cluster.custom.delete_namespaced_custom_object(
        "polypythia.io", "v1alpha1", "ops", "polypythiasweeps", "ops"
    )
    cluster.wait_for("children gone", lambda: not cluster.rayjobs("ops", "ops"))


def test_invalid_sweep_gets_condition_and_no_children(cluster) -> None:
    cluster.create_namespace("bad")
    body = sweep_body("bad", seeds=1, sizes=("nano",))
    body["spec"]["training"]["globalBatchSize"] = 7
    body["spec"]["resources"] = {"default": {"workers": 2}}
    cluster.apply_sweep("bad", body)
    status = cluster.wait_for_phase("bad", "bad", "Invalid")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec" and "spec.training.globalBatchSize" in ready["message"]
    assert cluster.rayjobs("bad", "bad") == []


@pytest.mark.parametrize("unused", [None])
def test_rbac_rules_cover_exactly_the_calls_made(cluster, unused) -> None:  # type: ignore[no-untyped-def]
    rules = yaml.safe_load(RULES.read_text())
    made = {
        (verb, group, res)
        for user, verb, group, res in cluster.emulator.calls
        if user == "operator"
    }
    assert made, "the operator made no calls"
    if ("create", "ray.io", "rayjobs") in made:
        # Not a call: OwnerReferencesPermissionEnforcement checks it when a child's
        # ownerReference blocks its sweep's deletion (tests/cluster runs the real check).
        made.add(("update", "polypythia.io", "polypythiasweeps/finalizers"))
    allowed = {
        (v, g, r)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # The opt-in Role of rbac.sweepSecretNamespaces (the harness turns it on).
    allowed.add(("get", "", "secrets"))
    assert made - allowed == set(), f"calls not allowed by the rules: {made - allowed}"
    # Checked by the API server's OwnerReferencesPermissionEnforcement, never called.
    admission_only = {("update", "polypythia.io", "polypythiasweeps/finalizers")}
    assert allowed - made - admission_only == set(), f"rules never used: {allowed - made}"


def test_operator_logs_what_it_does(cluster) -> None:
    """`kubectl logs` of the operator shows its start and kopf's handler lines (INFO on stderr)."""
    log = cluster.log  # the whole log: operator_log() keeps only its tail
    cluster.wait_for(
        "the operator's start-up line",
        lambda: "polypythia operator: watching all namespaces" in log.read_text(errors="replace"),
    )
    storage = cluster.namespace_with_storage("logs")
    cluster.apply_sweep("logs", sweep_body("logs-sweep", storage=storage))
    cluster.wait_for(
        "a kopf handler line naming the sweep",
        lambda: "[logs/logs-sweep]" in log.read_text(errors="replace"),
    )
