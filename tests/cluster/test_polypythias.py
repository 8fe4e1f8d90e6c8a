"""The PolyPythias replica (5 sizes x 10 seeds, GPU workers) on the real control plane: the operator
keeps 16 RayJobs at once, KubeRay sizes each RayCluster from them, and deleting the sweep lets the
garbage collector remove everything. Pods stay Pending: there are no nodes, let alone GPUs."""

from __future__ import annotations

import io

import yaml

from cluster.kube import kubectl, sweep_manifest

NS = "polypythias"


def test_polypythias_example_gets_its_rayjobs_and_gpu_rayclusters(cluster, s3) -> None:  # type: ignore[no-untyped-def]
    cluster.create_namespace(NS)
    cluster.create_s3_secret(NS, "s3", s3)
    body = sweep_manifest("sweep-polypythias.yaml")
    name = body["metadata"]["name"]
    # The operator's storage preflight holds RayJobs until the data the sweep names exists:
    # stand-ins for the Pile's .bin/.idx and the tokenizer, where the example points.
    client = s3.client()
    for uri in (body["spec"]["data"]["path"] + ".bin", body["spec"]["data"]["path"] + ".idx",
                body["spec"]["data"]["tokenizer"] + "/tokenizer.json"):  # fmt: skip
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        client.put_object(bucket, key, io.BytesIO(b"stand-in"), len(b"stand-in"))
    body["spec"]["storage"] = {"bucket": s3.make_bucket(), "secretName": "s3", "secure": False}
    kubectl("apply", "-n", NS, "-f", "-", stdin=yaml.safe_dump(body))
    limit = body["spec"]["maxConcurrentRuns"]
    jobs = cluster.wait_for(f"{limit} RayJobs", lambda: len(cluster.rayjobs(NS, name)) == limit and cluster.rayjobs(NS, name), timeout=180)  # fmt: skip

    def rayclusters() -> list[dict]:
        return cluster.custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayclusters")[
            "items"
        ]

    made = cluster.wait_for(f"{limit} RayClusters", lambda: len(rayclusters()) == limit and rayclusters(), timeout=180)  # fmt: skip
    by_job = {c["metadata"]["ownerReferences"][0]["name"]: c for c in made}  # type: ignore[union-attr]
    assert set(by_job) == {j["metadata"]["name"] for j in jobs}  # type: ignore[union-attr]
    for job in jobs:  # type: ignore[union-attr]
        group = by_job[job["metadata"]["name"]]["spec"]["workerGroupSpecs"][0]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu") in ("1", 1)
    status = cluster.wait_for("status", lambda: cluster.status(NS, name).get("seedCount") == 10 and cluster.status(NS, name))  # fmt: skip
    assert status["sizesText"].split(",") == body["spec"]["sizes"]  # type: ignore[index]

    kubectl("delete", "pps", name, "-n", NS, "--wait=false")
    cluster.wait_for(
        "RayJobs, RayClusters and pods removed by the garbage collector",
        lambda: (
            not cluster.rayjobs(NS, name)
            and not rayclusters()
            and not cluster.core.list_namespaced_pod(NS).items
        ),
        timeout=180,
    )
