"""What the operator renders for a real GPU cluster, and how one pass decides (pure, no server).

Rendered RayJobs are admitted by KubeRay's vendored RayJob schema and its extra rules;
every pod runs as its image's user, hardened, with emptyDir caches.
"""

from __future__ import annotations

import argparse
import copy
import re

import pytest

from k8s.harness import RAYJOB_CRD, sweep_body
from polypythia import planner
from polypythia.errors import UsageError
from polypythia.k8s import cli as operator_cli
from polypythia.k8s import labels as L
from polypythia.k8s import reconcile as R
from polypythia.k8s.children import attempt_pending_too_long
from polypythia.k8s.evaljob import render_eval_job
from polypythia.k8s.pods import EVAL_USER, TRAINER_USER
from polypythia.k8s.rayjob import ClusterSettings, kuberay_rule_errors, render_rayjob
from polypythia.spec import sweep_from_object
from support.k8s_schema import schema_for

NOW = "2026-12-01T12:00:00Z"
IMAGES = R.Images("trainer:1", "eval:1", "minio:9000")


def _sweep(generation: int = 1, seeds: int = 2, **spec: object):  # type: ignore[no-untyped-def]
    body = sweep_body("sw", seeds=seeds, sizes=("nano",), **spec)
    body["metadata"]["generation"] = generation
    body["spec"]["storage"] = {"bucket": "bkt", "secretName": "s3"}
    return sweep_from_object(body, namespace="ns")


def _pods(rayjob: dict) -> dict[str, dict]:
    spec = rayjob["spec"]
    return {
        "head": spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
        "worker": spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"],
        "submitter": spec["submitterPodTemplate"]["spec"],
    }


def _rayjob(sweep, **kw: object) -> dict:  # type: ignore[no-untyped-def]
    run = planner.plan_sweep(sweep)[0]
    return render_rayjob(sweep, run, trainer_image="trainer:1", **kw)


def _eval(sweep, **kw: object) -> dict:  # type: ignore[no-untyped-def]
    run = planner.plan_sweep(sweep)[0]
    return render_eval_job(sweep, run, [5], eval_image="eval:1", **kw)


def test_rayjob_is_admitted_and_releases_its_cluster_at_once() -> None:
    job = _rayjob(_sweep(pendingTimeoutSeconds=900))
    _, dropped, errors = schema_for(str(RAYJOB_CRD), "v1").admit(job)
    assert errors == [] and dropped == []
    assert kuberay_rule_errors(job) == []
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 0
    assert job["spec"]["preRunningDeadlineSeconds"] == 900
    later = _rayjob(_sweep(), cluster=ClusterSettings(cluster_ttl_seconds=120))
    assert later["spec"]["ttlSecondsAfterFinished"] == 120
    assert "preRunningDeadlineSeconds" not in later["spec"]


def test_every_pod_runs_as_its_images_user_hardened_with_emptydir_caches() -> None:
    sweep = _sweep()
    pods = {**_pods(_rayjob(sweep)), "eval": _eval(sweep)["spec"]["template"]["spec"]}
    for name, pod in pods.items():
        user = EVAL_USER if name == "eval" else TRAINER_USER
        sc = pod["securityContext"]
        assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (user.uid, user.gid, user.gid)
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False, name
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"] == {
                "drop": ["ALL"]
            }
            assert csc["readOnlyRootFilesystem"] is True, name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] in empty, name
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if name != "submitter":
                assert mounts[user.cache] in empty, name
                assert env["HF_HOME"].startswith(user.cache + "/")
    submitter = pods["submitter"]["containers"][0]
    assert "command" not in submitter  # KubeRay fills in `ray job submit`
    assert pods["submitter"]["restartPolicy"] == "Never"


def test_pod_knobs_from_the_sweep_over_the_cluster_defaults() -> None:
    defaults = {
        "imagePullSecrets": ["regcred"],
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "head": {"nodeSelector": {"pool": "cpu"}},
    }
    sweep = _sweep(
        pods={
            "imagePullSecrets": ["team"],
            "serviceAccountName": "trainer-irsa",
            "affinity": {"nodeAffinity": {"x": 1}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}],
            "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "pile"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        resources={"default": {"gpusPerWorker": 1, "gpuResource": "nvidia.com/mig-1g.10gb"}},
    )
    job = _rayjob(sweep, cluster=ClusterSettings(pod_defaults=defaults))
    assert kuberay_rule_errors(job) == []
    pods = _pods(job)
    worker, head, submitter = pods["worker"], pods["head"], pods["submitter"]
    assert worker["imagePullSecrets"] == [{"name": "regcred"}, {"name": "team"}]
    assert submitter["imagePullSecrets"] == worker["imagePullSecrets"]
    assert worker["serviceAccountName"] == "trainer-irsa"
    assert worker["automountServiceAccountToken"] is True
    assert "serviceAccountName" not in submitter  # it talks to Ray only
    assert worker["affinity"] == {"nodeAffinity": {"x": 1}}
    assert worker["topologySpreadConstraints"][0]["topologyKey"] == "zone"
    assert "affinity" not in head and head["nodeSelector"] == {"pool": "cpu"}
    assert submitter["nodeSelector"] == {"pool": "cpu"}
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    nccl = [e["value"] for e in container["env"] if e["name"] == "NCCL_DEBUG"]
    assert nccl == ["INFO"]  # the sweep's value replaces the default of the same name
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert any(v["name"] == "data" for v in worker["volumes"])
    evaluation = _eval(sweep, pod_defaults=defaults)["spec"]["template"]["spec"]
    assert evaluation["nodeSelector"] == {"pool": "cpu"}  # CPU evaluation on CPU nodes
    assert evaluation["imagePullSecrets"] == [{"name": "regcred"}, {"name": "team"}]


# --- one pass ------------------------------------------------------------------------------


def _finish(job: dict, deployment: str = "Complete", status: str = "FAILED") -> dict:
    job = copy.deepcopy(job)
    job["status"] = {"jobDeploymentStatus": deployment, "jobStatus": status}
    return job


def _pass(sweep, rayjobs, previous=None, **kw):  # type: ignore[no-untyped-def]
    plan = planner.plan_sweep(sweep)
    return R.reconcile(sweep, plan, rayjobs, [], previous or {}, {}, IMAGES, NOW, **kw)


def _creates(outcome: R.Outcome) -> list[str]:
    return [a.body["metadata"]["name"] for a in outcome.actions if isinstance(a, R.CreateRayJob)]


def test_preempted_attempt_is_retried_without_spending_a_retry() -> None:
    sweep = _sweep(maxRetries=0)
    first = _pass(sweep, [])
    jobs = [a.body for a in first.actions if isinstance(a, R.CreateRayJob)]
    lost = _finish(jobs[0])
    lost["metadata"]["annotations"][L.PREEMPTED] = "EvictionByEvictionAPI: node drain"
    crashed = _finish(jobs[1])
    out = _pass(sweep, [lost, crashed], first.status)
    assert _creates(out) == ["sw-nano-s0-r1"]  # the crash had no retry left
    retry = next(a.body for a in out.actions if isinstance(a, R.CreateRayJob))
    assert retry["metadata"]["annotations"][L.PREEMPTIONS] == "1"
    rows = {r["name"]: r for r in out.status["runs"]}
    assert rows["sw-nano-s1"]["phase"] == "Failed"
    assert rows["sw-nano-s0"]["retries"] == 0
    assert any(isinstance(a, R.Event) and a.reason == "RunPreempted" for a in out.actions)
    # The retried attempt then crashes: maxRetries 0 still applies to real failures.
    again = _pass(sweep, [lost, crashed, _finish(retry)], out.status)
    assert _creates(again) == []
    assert {r["name"]: r for r in again.status["runs"]}["sw-nano-s0"]["phase"] == "Failed"


def test_failure_budget_fails_the_sweep_and_starts_nothing_more() -> None:
    sweep = _sweep(maxRetries=0, maxFailedRuns=1, maxConcurrentRuns=1)
    first = _pass(sweep, [])
    assert _creates(first) == ["sw-nano-s0"]
    job = next(a.body for a in first.actions if isinstance(a, R.CreateRayJob))
    out = _pass(sweep, [_finish(job)], first.status)
    assert _creates(out) == []
    assert out.status["phase"] == "Failed"
    progressing = next(c for c in out.status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "FailureBudgetExhausted"
    assert any(isinstance(a, R.Event) and a.reason == "FailureBudgetExhausted" for a in out.actions)
    waiting = {r["name"]: r for r in out.status["runs"]}["sw-nano-s1"]
    assert "maxFailedRuns" in waiting["message"]


def test_removing_a_running_run_needs_consent() -> None:
    sweep = _sweep()
    first = _pass(sweep, [])
    jobs = [a.body for a in first.actions if isinstance(a, R.CreateRayJob)]
    smaller = _sweep(generation=2, seeds=1)
    out = _pass(smaller, jobs, first.status)
    assert not [a for a in out.actions if isinstance(a, R.DeleteRayJob)]
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DestructiveChangeRefused" and "sw-nano-s1" in ready["message"]
    assert ready["observedGeneration"] == 2
    for allowed in (
        _pass(smaller, jobs, first.status, blockers=R.Blockers(allow_destructive=True)),
        _pass(_sweep(seeds=1, allowDestructiveChanges=True), jobs),
    ):
        deleted = [a.name for a in allowed.actions if isinstance(a, R.DeleteRayJob)]
        assert deleted == ["sw-nano-s1"]
    # A removed run that already ended goes without asking.
    ended = [jobs[0], _finish(jobs[1], status="SUCCEEDED")]
    out = _pass(smaller, ended, first.status)
    assert [a.name for a in out.actions if isinstance(a, R.DeleteRayJob)] == ["sw-nano-s1"]


def test_a_finished_run_whose_cluster_still_exists_holds_its_slot() -> None:
    sweep = _sweep(maxConcurrentRuns=1)
    first = _pass(sweep, [])
    job = _finish(
        next(a.body for a in first.actions if isinstance(a, R.CreateRayJob)), status="SUCCEEDED"
    )
    held = _pass(
        sweep, [job], first.status, blockers=R.Blockers(clusters=frozenset({"sw-nano-s0"}))
    )
    assert _creates(held) == []
    assert _creates(_pass(sweep, [job], first.status)) == ["sw-nano-s1"]
    assert R.recently_ended([job], NOW, 600)  # no endTime yet: look for its cluster
    job["status"]["endTime"] = "2026-12-01T11:00:00Z"
    assert not R.recently_ended([job], NOW, 600)


def test_missing_secret_and_refused_calls_show_as_conditions() -> None:
    sweep = _sweep()
    out = _pass(
        sweep, [], blockers=R.Blockers(secret="spec.storage.secretName: Secret ns/s3 not found")
    )
    assert _creates(out) == []
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "SecretMissing" and ready["observedGeneration"] == 1
    assert any(isinstance(a, R.Event) and a.reason == "SecretMissing" for a in out.actions)
    refused = R.with_refusals(
        out.status, ["CreateRayJob sw-nano-s0: 403 Forbidden: quota"], {}, NOW, 1
    )
    ready = next(c for c in refused["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "APIRequestRefused"
    assert "403 Forbidden: quota" in ready["message"]


def test_rewind_starts_the_new_attempt_only_after_the_old_rayjob_is_gone() -> None:
    sweep = _sweep(instability={"action": "rewind"}, maxConcurrentRuns=1)
    first = _pass(sweep, [])
    job = next(a.body for a in first.actions if isinstance(a, R.CreateRayJob))
    job["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    spike = {"restartStep": 5, "skipBatches": [5, 9], "spike": {"signal": "loss", "onsetStep": 9}}
    obs = {"sw-nano-s0": R.RunObservation(checkpoints=(5,), rewinds=(spike,))}
    plan = planner.plan_sweep(sweep)
    rewind = R.reconcile(sweep, plan, [job], [], first.status, obs, IMAGES, NOW)
    deletes = [a for a in rewind.actions if isinstance(a, R.DeleteRayJob)]
    assert deletes == [R.DeleteRayJob("sw-nano-s0", foreground=True, run="sw-nano-s0")]
    assert _creates(rewind) == []
    row = next(r for r in rewind.status["runs"] if r["name"] == "sw-nano-s0")
    assert row["rewinding"] is True
    # Still listed (KubeRay's finalizer): wait, and the slot stays taken.
    job["metadata"]["deletionTimestamp"] = NOW
    waiting = R.reconcile(sweep, plan, [job], [], rewind.status, obs, IMAGES, NOW)
    assert _creates(waiting) == []
    # Gone: the next attempt, counted as a rewind, not a retry.
    after = R.reconcile(sweep, plan, [], [], waiting.status, obs, IMAGES, NOW)
    assert _creates(after) == ["sw-nano-s0-r1"]
    new = next(a.body for a in after.actions if isinstance(a, R.CreateRayJob))
    assert new["metadata"]["annotations"][L.REWINDS] == "1"
    row = next(r for r in after.status["runs"] if r["name"] == "sw-nano-s0")
    assert row["retries"] == 0 and "rewinding" not in row


def test_conditions_carry_observed_generation() -> None:
    out = _pass(_sweep(generation=7), [])
    assert {c["observedGeneration"] for c in out.status["conditions"]} == {7}
    assert out.status["observedGeneration"] == 7


def test_operator_refuses_bad_cluster_settings_with_a_one_line_error(monkeypatch) -> None:
    """Checked before any connection: UsageError (exit 2) naming the setting."""
    for extra_env, args, needle in (
        ({"POLYPYTHIA_POD_DEFAULTS": "[1]"}, [], "POLYPYTHIA_POD_DEFAULTS: expected a JSON object"),
        ({"POLYPYTHIA_POD_DEFAULTS": "{"}, [], "POLYPYTHIA_POD_DEFAULTS: not JSON"),
        ({}, ["--cluster-ttl-seconds", "-1"], "--cluster-ttl-seconds: must be >= 0"),
        ({}, ["--idle-interval", "1"], "--idle-interval: must be >= --poll-interval"),
    ):
        monkeypatch.delenv("POLYPYTHIA_POD_DEFAULTS", raising=False)
        for key, value in extra_env.items():
            monkeypatch.setenv(key, value)
        parser = argparse.ArgumentParser()
        operator_cli.configure(parser)
        with pytest.raises(UsageError, match=re.escape(needle)):
            operator_cli.main(parser.parse_args(args))


def test_a_rewind_in_progress_survives_a_suspend() -> None:
    sweep = _sweep(instability={"action": "rewind"}, maxConcurrentRuns=1)
    plan = planner.plan_sweep(sweep)
    first = _pass(sweep, [])
    job = next(a.body for a in first.actions if isinstance(a, R.CreateRayJob))
    job["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    spike = {"restartStep": 5, "skipBatches": [5, 9], "spike": {"signal": "loss", "onsetStep": 9}}
    obs = {"sw-nano-s0": R.RunObservation(checkpoints=(5,), rewinds=(spike,))}
    rewind = R.reconcile(sweep, plan, [job], [], first.status, obs, IMAGES, NOW)
    suspended = _sweep(instability={"action": "rewind"}, maxConcurrentRuns=1, suspend=True)
    held = R.reconcile(suspended, plan, [], [], rewind.status, obs, IMAGES, NOW)
    assert _creates(held) == []
    row = next(r for r in held.status["runs"] if r["name"] == "sw-nano-s0")
    assert row["rewinding"] is True
    resumed = R.reconcile(sweep, plan, [], [], held.status, obs, IMAGES, NOW)
    assert _creates(resumed) == ["sw-nano-s0-r1"]


def test_an_attempt_pending_past_the_timeout_fails_and_is_retried() -> None:
    """KubeRay before 1.6 drops preRunningDeadlineSeconds: the operator applies it."""
    sweep = _sweep(pendingTimeoutSeconds=600, maxConcurrentRuns=1, seeds=1)
    first = _pass(sweep, [])
    job = next(a.body for a in first.actions if isinstance(a, R.CreateRayJob))
    job["status"] = {"jobDeploymentStatus": "Initializing", "startTime": "2026-12-01T11:51:00Z"}
    # 9 minutes in: within the timeout (KubeRay >= 1.6 would act at 10 minutes).
    assert _creates(_pass(sweep, [job], first.status)) == []
    job["status"]["startTime"] = "2026-12-01T11:48:00Z"  # 12 minutes: past timeout + grace
    out = _pass(sweep, [job], first.status)
    marks = [a for a in out.actions if isinstance(a, R.AnnotateRayJob)]
    assert [m.name for m in marks] == ["sw-nano-s0"] and L.TIMED_OUT in marks[0].annotations
    assert R.SuspendRayJob("sw-nano-s0", True) in out.actions  # its pending pods go
    assert _creates(out) == ["sw-nano-s0-r1"]
    row = out.status["runs"][0]
    assert row["retries"] == 1
    retried = next(a for a in out.actions if isinstance(a, R.Event) and a.reason == "RunRetried")
    assert "pendingTimeoutSeconds" in retried.message
    # Kueue's RayJobs wait for quota, not nodes: left alone.
    queued = copy.deepcopy(job)
    queued["metadata"]["labels"][L.QUEUE] = "gpus"
    assert not attempt_pending_too_long(queued, 600, NOW)
