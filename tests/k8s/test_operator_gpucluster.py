"""What a GPU cluster's platform engineer meets, against the emulated API server.

The test plays KubeRay (RayJob status, RayClusters that outlive their job for a while)
and the kubelet/eviction API (a training pod with a DisruptionTarget condition).
"""

from __future__ import annotations

import time

from k8s.harness import sweep_body
from polypythia.k8s import labels as L

WAIT_S = 90.0  # generous: the machine's 2 cores are shared


def _events(cluster, ns: str, reason: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in cluster.emulator.list_objects("v1/events", ns) if e.get("reason") == reason]


def test_preempted_pods_retry_the_run_without_spending_a_retry(cluster) -> None:
    ns, sweep, run = "preempt", "pre", "pre-nano-s0"
    storage = cluster.namespace_with_storage(ns)
    cluster.apply_sweep(
        ns, sweep_body(sweep, seeds=1, sizes=("nano",), storage=storage, maxRetries=0)
    )
    cluster.wait_for("RayJob", lambda: cluster.rayjobs(ns, sweep), timeout=WAIT_S)
    # A worker pod of attempt 0, evicted by a node drain (what KubeRay's pods carry).
    cluster.core.create_namespaced_pod(
        ns,
        {
            "metadata": {
                "name": f"{run}-worker-0",
                "labels": {L.SWEEP: sweep, L.RUN: run, L.ATTEMPT: "0"},
            },
            "spec": {"containers": [{"name": "ray-worker", "image": "trainer"}]},
        },
    )
    cluster.core.patch_namespaced_pod_status(
        f"{run}-worker-0",
        ns,
        {
            "status": {
                "phase": "Failed",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "EvictionByEvictionAPI",
                        "message": "Eviction API: evicting",
                    }
                ],
            }
        },
    )
    cluster.wait_for(
        "RayJob marked preempted",
        lambda: (cluster.rayjobs(ns, sweep)[0]["metadata"].get("annotations") or {}).get(
            L.PREEMPTED
        ),
        timeout=WAIT_S,
    )
    cluster.set_rayjob_status(ns, run, "Failed", "FAILED")
    cluster.wait_for(
        "attempt 1 with maxRetries 0",
        lambda: (
            sorted(j["metadata"]["name"] for j in cluster.rayjobs(ns, sweep)) == [run, f"{run}-r1"]
        ),
        timeout=WAIT_S,
    )
    row = cluster.wait_for(
        "row",
        lambda: cluster.row(ns, sweep, run).get("attempt") == 1 and cluster.row(ns, sweep, run),
        timeout=WAIT_S,
    )
    assert row["retries"] == 0 and row["preemptions"] == 1
    assert _events(cluster, ns, "RunPreempted")
    # A real crash of the new attempt then fails the run: no retry was left.
    cluster.set_rayjob_status(ns, f"{run}-r1", "Failed", "FAILED")
    cluster.wait_for(
        "Failed", lambda: cluster.row(ns, sweep, run).get("phase") == "Failed", timeout=WAIT_S
    )


def test_missing_secret_holds_the_sweep_with_a_condition(cluster) -> None:
    ns, sweep = "nosecret", "ns"
    storage = cluster.namespace_with_storage(ns, secret=False)
    cluster.apply_sweep(ns, sweep_body(sweep, seeds=1, sizes=("nano",), storage=storage))
    ready = cluster.wait_for_condition(ns, sweep, reason="SecretMissing", timeout=WAIT_S)
    assert "Secret nosecret/s3 not found" in ready["message"]
    assert ready["observedGeneration"] == cluster.sweep(ns, sweep)["metadata"]["generation"]
    assert cluster.rayjobs(ns, sweep) == [] and _events(cluster, ns, "SecretMissing")
    cluster.create_secret(ns, "s3")
    cluster.wait_for(
        "RayJob once the Secret exists", lambda: cluster.rayjobs(ns, sweep), timeout=WAIT_S
    )
    cluster.wait_for_condition(ns, sweep, status="True", timeout=WAIT_S)


def test_a_refused_create_shows_as_condition_and_event(cluster) -> None:
    ns, sweep = "refused", "rf"
    storage = cluster.namespace_with_storage(ns)
    # A volume that KubeRay's RayJob schema rejects (hostPath must be an object): 422.
    body = sweep_body(
        sweep,
        seeds=1,
        sizes=("nano",),
        storage=storage,
        pods={"volumes": [{"name": "bad", "hostPath": "not-an-object"}]},
    )
    cluster.apply_sweep(ns, body)
    ready = cluster.wait_for_condition(ns, sweep, reason="APIRequestRefused", timeout=WAIT_S)
    assert "CreateRayJob rf-nano-s0: 422" in ready["message"]
    cluster.wait_for("Event", lambda: _events(cluster, ns, "APIRequestRefused"), timeout=WAIT_S)
    time.sleep(2.0)  # four more passes, each refused the same way: still one Event
    assert len(_events(cluster, ns, "APIRequestRefused")) == 1
    assert cluster.rayjobs(ns, sweep) == []


def test_a_finished_runs_cluster_holds_its_slot_until_it_is_gone(cluster) -> None:
    ns, sweep = "linger", "lg"
    storage = cluster.namespace_with_storage(ns)
    cluster.apply_sweep(
        ns, sweep_body(sweep, seeds=2, sizes=("nano",), storage=storage, maxConcurrentRuns=1)
    )
    first = cluster.wait_for("first RayJob", lambda: cluster.rayjobs(ns, sweep), timeout=WAIT_S)[0]
    assert first["spec"]["ttlSecondsAfterFinished"] == 0
    # KubeRay's RayCluster of that RayJob: the RayJob's labels plus originated-from.
    name = first["metadata"]["name"]
    labels = {**first["metadata"]["labels"], "ray.io/originated-from-cr-name": name}
    cluster.custom.create_namespaced_custom_object(
        "ray.io",
        "v1",
        ns,
        "rayclusters",
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": f"{name}-abcde", "labels": labels},
            "spec": {},
        },  # fmt: skip
    )
    cluster.set_rayjob_status(ns, name, "Complete", "SUCCEEDED")
    cluster.wait_for(
        "run Succeeded",
        lambda: cluster.row(ns, sweep, name).get("phase") == "Succeeded",
        timeout=WAIT_S,
    )
    assert len(cluster.rayjobs(ns, sweep)) == 1  # the cluster still holds the GPUs
    cluster.custom.delete_namespaced_custom_object(
        "ray.io", "v1", ns, "rayclusters", f"{name}-abcde"
    )
    cluster.wait_for(
        "second run once the cluster is gone",
        lambda: len(cluster.rayjobs(ns, sweep)) == 2,
        timeout=WAIT_S,
    )


def test_a_missing_bucket_holds_the_sweep_until_it_exists(cluster) -> None:
    ns, sweep = "nobucket", "nb"
    storage = cluster.namespace_with_storage(ns)
    cluster.s3.remove_bucket(storage["bucket"])  # a typo'd or not yet created bucket
    cluster.apply_sweep(ns, sweep_body(sweep, seeds=1, sizes=("nano",), storage=storage))
    held = cluster.wait_for_condition(ns, sweep, "StorageReady", status="False", timeout=WAIT_S)
    assert held["reason"] == "BucketMissing"
    assert f"s3://{storage['bucket']} does not exist" in held["message"]
    assert cluster.condition(ns, sweep, "Ready")["reason"] == "BucketMissing"
    assert cluster.wait_for("Event", lambda: _events(cluster, ns, "BucketMissing"), timeout=WAIT_S)
    time.sleep(2.0)  # several passes: still no RayJob, still one Event
    assert cluster.rayjobs(ns, sweep) == [] and len(_events(cluster, ns, "BucketMissing")) == 1
    cluster.s3.make_bucket(storage["bucket"])
    cluster.wait_for(
        "RayJob once the bucket exists", lambda: cluster.rayjobs(ns, sweep), timeout=WAIT_S
    )
    # The pass creates the RayJob, then writes status: under load a read may come between.
    ready = cluster.wait_for_condition(ns, sweep, "StorageReady", status="True", timeout=WAIT_S)
    assert ready["reason"] == "Reachable"
    assert cluster.wait_for("Event", lambda: _events(cluster, ns, "StorageReady"), timeout=WAIT_S)
