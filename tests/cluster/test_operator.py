"""The operator against the real control plane: KubeRay admits its RayJobs, the Job controller runs its
eval Jobs' pods through Pod Security `restricted`, the garbage collector removes children, RBAC and
OwnerReferencesPermissionEnforcement judge every request.

The test plays only what is missing here: the kubelet (pods are marked Running) and the trainer
(checkpoints written to the moto bucket). Tests run in order on one operator process and one sweep.
"""

from __future__ import annotations

import io
import json
import threading
import time

import kubernetes
import pytest
import yaml
from kubernetes.client.rest import ApiException

from cluster.kube import RELEASE_NS, ROOT, SERVICE_ACCOUNT, audit_records, kubectl, sweep_manifest

NS, SWEEP = "tiny", "tiny"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}"
RULES = ROOT / "charts" / "polypythia" / "files" / "operator-rbac-rules.yaml"
COLUMNS = [
    "NAME", "PHASE", "SIZES", "SEEDS", "RUNNING", "SUCCEEDED", "FAILED", "SPIKES", "OUTLIERS", "AGE",
]  # fmt: skip


def _names(objs: list[dict]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def _rayclusters(cluster) -> list[dict]:  # type: ignore[no-untyped-def]
    return cluster.custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayclusters")["items"]


def _submitters(cluster) -> list[dict]:  # type: ignore[no-untyped-def]
    jobs = cluster.batch.list_namespaced_job(
        NS, label_selector="app.kubernetes.io/created-by=kuberay-operator"
    )
    return [cluster.raw(j) for j in jobs.items]


def _deployment(job: dict) -> str:
    return (job.get("status") or {}).get("jobDeploymentStatus", "")


def _checkpoint(s3, bucket: str, run: str, step: int) -> None:  # type: ignore[no-untyped-def]
    """Play the trainer: a complete checkpoint in the storage layout (COMPLETE written last)."""
    base = f"sweeps/{SWEEP}/{run}/checkpoints/step{step}"
    client = s3.client()
    client.put_object(bucket, f"{base}/model.safetensors", io.BytesIO(b"x"), 1)
    manifest = json.dumps(
        {"step": step, "files": [{"path": "model.safetensors", "size": 1}]}
    ).encode()
    client.put_object(bucket, f"{base}/COMPLETE", io.BytesIO(manifest), len(manifest))


@pytest.fixture(scope="module")
def bucket(cluster, s3) -> str:  # type: ignore[no-untyped-def]
    cluster.create_namespace(NS)
    cluster.create_s3_secret(NS, "s3", s3)
    return s3.make_bucket()


def _running_through_kuberay(cluster, expected: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Play the kubelet until KubeRay has `expected` RayJobs Running; returns them."""

    def check() -> list[dict] | None:
        cluster.play_kubelet(NS, "ray.io/cluster")
        jobs = [j for j in cluster.rayjobs(NS, SWEEP) if not j["spec"].get("suspend")]
        running = [j for j in jobs if _deployment(j) == "Running"]
        return running if len(running) == expected else None

    return cluster.wait_for(f"{expected} RayJobs Running in KubeRay", check, timeout=180)  # type: ignore[return-value]


def _tiny_sweep() -> dict:
    """The demo sweep file in the shape these tests count on (2 sizes x 3 seeds, final
    checkpoint evaluated, no planted shocks), whatever the demo itself plants."""
    body = sweep_manifest()
    spec = body["spec"]
    spec.update(sizes=["nano", "micro"], seeds={"list": [0, 1, 2]}, maxConcurrentRuns=2)
    spec["training"].pop("perturbations", None)
    spec["checkpoints"] = {"schedule": "pythia", "count": 5}
    spec["evaluation"] = {
        "tasks": ["pp_subject_verb_agreement", "pp_anaphor_gender_agreement", "pp_cloze"],
        "schedule": "final",
        "limit": 100,
    }
    return body


def test_tiny_sweep_becomes_rayjobs_that_kuberay_runs(cluster, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    body = _tiny_sweep()
    body["spec"]["storage"] = {"bucket": bucket, "secretName": "s3", "secure": False}
    kubectl("apply", "-n", NS, "-f", "-", stdin=yaml.safe_dump(body))
    sweep = cluster.sweep(NS, SWEEP)

    jobs = cluster.wait_for(
        "2 RayJobs", lambda: len(cluster.rayjobs(NS, SWEEP)) == 2 and cluster.rayjobs(NS, SWEEP)
    )
    assert _names(jobs) == ["tiny-micro-s0", "tiny-nano-s0"]  # type: ignore[arg-type]
    for job in jobs:  # type: ignore[union-attr]
        owner = job["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "PolyPythiaSweep",
            sweep["metadata"]["uid"],
            True,
        )

    # KubeRay makes a RayCluster per RayJob; its pods passed Pod Security `restricted` (they exist).
    clusters = cluster.wait_for(
        "2 RayClusters", lambda: len(_rayclusters(cluster)) == 2 and _rayclusters(cluster)
    )
    assert {c["metadata"]["ownerReferences"][0]["kind"] for c in clusters} == {"RayJob"}  # type: ignore[union-attr]
    cluster.wait_for("head pods", lambda: len(cluster.core.list_namespaced_pod(NS, label_selector="ray.io/node-type=head").items) == 2)  # fmt: skip

    running = _running_through_kuberay(cluster, 2)
    assert {j["status"]["rayClusterName"] for j in running} == {
        c["metadata"]["name"] for c in clusters
    }  # type: ignore[union-attr]
    submitters = cluster.wait_for(
        "2 submitter Jobs", lambda: len(_submitters(cluster)) == 2 and _submitters(cluster)
    )
    assert {s["metadata"]["ownerReferences"][0]["kind"] for s in submitters} == {"RayJob"}  # type: ignore[union-attr]

    status = cluster.wait_for(
        "status: 2 running",
        lambda: cluster.status(NS, SWEEP).get("runsRunning") == 2 and cluster.status(NS, SWEEP),
    )
    assert status["observedGeneration"] == sweep["metadata"]["generation"]  # type: ignore[index]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {  # type: ignore[index]
        "Ready": "True",
        "Progressing": "True",
        "Degraded": "False",
        "StorageReady": "True",
    }


def test_submitter_pods_pass_pod_security(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """KubeRay's submitter Jobs run `ray job submit` in a pod the restricted namespace must admit."""
    for job in _submitters(cluster):
        name = job["metadata"]["name"]
        cluster.wait_for(
            f"pod of submitter Job {name}",
            lambda n=name: (
                cluster.core.list_namespaced_pod(NS, label_selector=f"job-name={n}").items
            ),
            timeout=30,
        )


def test_kubectl_get_pps_shows_the_printer_columns(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    table = kubectl("get", "pps", "-n", NS).stdout.splitlines()
    assert table[0].split() == COLUMNS
    row = table[1].split()
    assert row[0] == "tiny" and row[1] in ("Pending", "Running")
    assert row[2:8] == ["nano,micro", "3", "2", "0", "0", "0"]
    wide = kubectl("get", "polypythiasweeps", "-n", NS, "-o", "wide").stdout.splitlines()
    assert "PHASE" in wide[0].split()


def test_events_are_real_api_objects(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    events = cluster.wait_for("RunRunning events", lambda: [e for e in cluster.events(NS, SWEEP) if e["reason"] == "RunRunning"])  # fmt: skip
    sweep = cluster.sweep(NS, SWEEP)
    assert {e["involvedObject"]["uid"] for e in events} == {sweep["metadata"]["uid"]}  # type: ignore[union-attr]
    assert sorted(e["message"].split(":")[0] for e in events) == [
        "run tiny-micro-s0",
        "run tiny-nano-s0",
    ]  # type: ignore[union-attr]
    described = kubectl("describe", "pps", SWEEP, "-n", NS).stdout
    assert "RunRunning" in described


def test_checkpoint_in_s3_gets_an_eval_job_whose_pod_passes_pod_security(
    cluster, s3, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    _checkpoint(s3, bucket, "tiny-nano-s0", 100)  # schedule `final`: step 100 of 100
    jobs = cluster.wait_for("eval Job", lambda: cluster.eval_jobs(NS, SWEEP))
    assert len(jobs) == 1  # type: ignore[arg-type]
    job = jobs[0]  # type: ignore[index]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "PolyPythiaSweep"
    # The Job controller made its pod: Pod Security `restricted` admitted the template.
    name = job["metadata"]["name"]
    pods = cluster.wait_for(
        f"pod of {name}",
        lambda: cluster.core.list_namespaced_pod(NS, label_selector=f"job-name={name}").items,
    )
    assert pods[0].spec.security_context.run_as_non_root is True  # type: ignore[index]


def test_operator_restart_mid_sweep_duplicates_nothing(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    def snapshot() -> tuple:
        return (
            {j["metadata"]["name"]: j["metadata"]["uid"] for j in cluster.rayjobs(NS, SWEEP)},
            {j["metadata"]["name"]: j["metadata"]["uid"] for j in cluster.eval_jobs(NS, SWEEP)},
            sorted((e["reason"], e["message"]) for e in cluster.events(NS, SWEEP)),
        )

    def rayjob_lists() -> int:
        """The operator's LISTs of RayJobs: a new process lists once to fill its watch index."""
        return sum(
            1
            for r in audit_records(OPERATOR_USER)
            if r["verb"] == "list" and (r.get("objectRef") or {}).get("resource") == "rayjobs"
        )

    before = snapshot()
    kubeconfig = cluster.operator_kubeconfig
    cluster.kill_operator()
    done = rayjob_lists()
    cluster.start_operator(kubeconfig, cluster.s3_url)
    cluster.wait_for("the new operator's RayJob index", lambda: rayjob_lists() > done, timeout=120)
    # Children come from watch indexes, so passes leave no trace in the audit log: give the
    # new process many poll intervals (1 s each) over the children the old one left.
    time.sleep(15)
    assert cluster.operator is not None and cluster.operator.poll() is None
    assert snapshot() == before


def test_status_writes_use_the_status_subresource_and_survive_conflicts(
    cluster, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    """A second writer replaces the status with a stale resourceVersion: it meets 409s, the
    operator does not, and the operator puts the true counts back."""
    conflicts, stop = [], threading.Event()

    def rival() -> None:
        while not stop.is_set():
            obj = cluster.sweep(NS, SWEEP)
            obj["status"]["runsRunning"] = 7
            time.sleep(0.3)
            try:
                cluster.custom.replace_namespaced_custom_object_status("polypythia.io", "v1alpha1", NS, "polypythiasweeps", SWEEP, obj)  # fmt: skip
            except ApiException as err:
                if err.status != 409:
                    raise
                conflicts.append(err)

    writer = threading.Thread(target=rival, daemon=True)
    writer.start()
    try:
        cluster.wait_for("a 409 for the rival writer", lambda: conflicts, timeout=120)
    finally:
        stop.set()
        writer.join(10)
    cluster.wait_for(
        "the operator restores the counts",
        lambda: cluster.status(NS, SWEEP).get("runsRunning") == 2,
    )
    writes = [
        r
        for r in audit_records(OPERATOR_USER)
        if (r.get("objectRef") or {}).get("resource") == "polypythiasweeps"
    ]
    status_writes = [r for r in writes if r["objectRef"].get("subresource") == "status"]
    assert status_writes and {r["verb"] for r in status_writes} == {"patch"}
    assert all(r["responseStatus"]["code"] < 300 for r in status_writes)
    assert "Traceback" not in cluster.operator_log()


def test_editing_seeds_concurrency_and_suspend_converges(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    kubectl("patch", "pps", SWEEP, "-n", NS, "--type=merge", "-p", json.dumps({"spec": {"seeds": {"list": [0, 1, 2, 3]}, "maxConcurrentRuns": 4}}))  # fmt: skip
    cluster.wait_for("4 RayJobs", lambda: len(cluster.rayjobs(NS, SWEEP)) == 4, timeout=120)
    assert _names(cluster.rayjobs(NS, SWEEP)) == [
        "tiny-micro-s0",
        "tiny-micro-s1",
        "tiny-nano-s0",
        "tiny-nano-s1",
    ]
    _running_through_kuberay(cluster, 4)
    cluster.wait_for("status: 4 seeds, 4 running", lambda: (cluster.status(NS, SWEEP).get("seedCount"), cluster.status(NS, SWEEP).get("runsRunning")) == (4, 4))  # fmt: skip

    kubectl("patch", "pps", SWEEP, "-n", NS, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    cluster.wait_for(
        "RayJobs suspended and their RayClusters deleted by KubeRay",
        lambda: (
            all(
                j["spec"].get("suspend") and _deployment(j) == "Suspended"
                for j in cluster.rayjobs(NS, SWEEP)
            )
            and not _rayclusters(cluster)
        ),
        timeout=180,
    )
    assert len(cluster.rayjobs(NS, SWEEP)) == 4

    kubectl("patch", "pps", SWEEP, "-n", NS, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    cluster.wait_for(
        "RayJobs resumed",
        lambda: (
            not any(j["spec"].get("suspend") for j in cluster.rayjobs(NS, SWEEP))
            and len(_rayclusters(cluster)) == 4
        ),
        timeout=180,
    )


def test_no_request_of_the_operator_was_refused_by_rbac(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    records = audit_records(OPERATOR_USER)
    assert len(records) > 20  # the audit log saw the operator at work
    refused = [
        f"{r['verb']} {r['requestURI']}: {r['responseStatus'].get('message', '')}"
        for r in records
        if r["responseStatus"]["code"] == 403
    ]
    assert refused == []


def _sar(auth, user: str, request: tuple) -> bool:  # type: ignore[no-untyped-def]
    verb, group, resource, subresource, namespace = request
    attrs = {
        "verb": verb,
        "group": group,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
    }
    review = {"spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"], "resourceAttributes": attrs}}  # fmt: skip
    return auth.create_subject_access_review(review).status.allowed


def test_every_rbac_rule_is_needed_by_a_request_the_operator_made(cluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Remove any one rule of the chart's ClusterRole and the real authorizer refuses something the
    operator did in this run (asked of the API server with SubjectAccessReviews)."""
    made = set()
    for r in audit_records(OPERATOR_USER):
        ref = r.get("objectRef") or {}
        if r["responseStatus"]["code"] < 400 and ref.get("resource"):
            made.add((r["verb"], ref.get("apiGroup", ""), ref["resource"], ref.get("subresource", ""), ref.get("namespace", "")))  # fmt: skip
            if r["verb"] == "create" and ref["resource"] in ("rayjobs", "jobs"):
                # OwnerReferencesPermissionEnforcement: blockOwnerDeletion on a sweep needs this.
                made.add(
                    ("update", "polypythia.io", "polypythiasweeps", "finalizers", ref["namespace"])
                )
    rules = yaml.safe_load(RULES.read_text())
    # RayClusters are listed only in the minutes after one of the sweep's RayJobs ended (a
    # finished run holds its slot until KubeRay deletes its cluster); no Ray runs here, so
    # no RayJob ends. tests/k8s/test_operator_gpucluster.py covers that request.
    rules = [r for r in rules if r["resources"] != ["rayclusters"]]
    auth = kubernetes.client.AuthorizationV1Api(cluster.api)
    rbac = kubernetes.client.RbacAuthorizationV1Api(cluster.api)
    assert all(_sar(auth, OPERATOR_USER, m) for m in made)
    for i, rule in enumerate(rules):
        name = f"pp-without-rule-{i}"
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules[:i] + rules[i + 1 :]})
        probe = f"probe-{i}"
        cluster.core.create_namespaced_service_account(RELEASE_NS, {"metadata": {"name": probe}})
        subject = {"kind": "ServiceAccount", "name": probe, "namespace": RELEASE_NS}
        binding = {"metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}, "subjects": [subject]}  # fmt: skip
        rbac.create_cluster_role_binding(binding)
        user = f"system:serviceaccount:{RELEASE_NS}:{probe}"
        kept = [m for m in made if any(_covers(other, m) for other in rules[:i] + rules[i + 1 :])]
        cluster.wait_for(
            f"binding {name} in effect", lambda u=user, k=kept: all(_sar(auth, u, m) for m in k[:1])
        )
        refused = [m for m in made if not _sar(auth, user, m)]
        assert refused, f"rule {rule} allows nothing the operator did"


def _covers(rule: dict, request: tuple) -> bool:
    verb, group, resource, subresource, _ = request
    full = f"{resource}/{subresource}" if subresource else resource
    return group in rule["apiGroups"] and full in rule["resources"] and verb in rule["verbs"]


def test_deleting_the_sweep_lets_the_garbage_collector_remove_its_children(
    cluster, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    assert cluster.rayjobs(NS, SWEEP) and cluster.eval_jobs(NS, SWEEP) and _rayclusters(cluster)
    kubectl("delete", "pps", SWEEP, "-n", NS, "--wait=false")
    cluster.wait_for(
        "sweep, RayJobs, RayClusters, Jobs and pods gone",
        lambda: (
            not cluster.custom.list_namespaced_custom_object(
                "polypythia.io", "v1alpha1", NS, "polypythiasweeps"
            )["items"]
            and not cluster.rayjobs(NS, SWEEP)
            and not _rayclusters(cluster)
            and not cluster.batch.list_namespaced_job(NS).items
            and not cluster.core.list_namespaced_pod(NS).items
        ),
        timeout=180,
    )
