"""One KubeRay RayJob (ray.io/v1) per run attempt: what `polypythia plan -o yaml` prints too.

The trainer resumes from the run's last complete checkpoint in storage by itself, so a
retry is the same entrypoint under a new name (`<run>-r<attempt>`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from polypythia.k8s import labels as L
from polypythia.k8s.pods import (
    TRAINER_USER,
    apply_pod_settings,
    cache_volumes,
    compute,
    container_security,
    image_container,
    image_pod,
    placement,
    pod_security,
    pod_settings,
    run_env,
)
from polypythia.planner import RunPlan
from polypythia.spec import Sweep, resources_for

API_VERSION = "ray.io/v1"
KIND = "RayJob"
# KubeRay deletes a finished RayJob's RayCluster this many seconds after the job ends
# (`shutdownAfterJobFinishes`); 0 releases the GPUs at once. The RayJob object, its
# status and the submitter Job (driver logs) stay.
TTL_AFTER_FINISHED_S = 0
HEAD_RESOURCES = {"cpu": 2, "memory": "8Gi"}
SUBMITTER_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
DEFAULT_WORKER_MEMORY_PER_CPU_GI = 4
SHM = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
_QUOTED_CONFIG = re.compile(r"--config ((?:'[^']*'|\"'\")+)(?=\s|$)")
_QUOTE_PIECE = re.compile(r"'([^']*)'|\"(')\"")


def entrypoint(config: dict) -> str:
    """The trainer command line; the resolved config travels inline, quoted for the shell."""
    text = json.dumps(config, separators=(",", ":"), sort_keys=True)
    return f"polypythia train --config {shlex.quote(text)} --ray-address auto"


def config_of(rayjob: dict) -> dict | None:
    """The run config a rendered RayJob carries (inverse of `entrypoint`).

    Every pass reads it back from every RayJob of the sweep, and `shlex.split` takes
    about 3 ms on a 2 kB entrypoint (3.5 s per pass at 1000 runs, on the event loop), so
    what `entrypoint` writes (`shlex.quote`: ``'...'`` and ``"'"`` pieces) is undone with
    a regular expression; anything else, e.g. a hand-edited entrypoint, goes through shlex.
    """
    try:
        text = rayjob["spec"]["entrypoint"]
        found = _QUOTED_CONFIG.search(text)
        if found:
            pieces = _QUOTE_PIECE.findall(found.group(1))
            return json.loads("".join(single or quote for single, quote in pieces))
        words = shlex.split(text)
        return json.loads(words[words.index("--config") + 1])
    except (KeyError, TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ClusterSettings:
    """How this cluster wants RayJobs rendered (operator flags and chart values).

    ``cluster_ttl_seconds``: `ttlSecondsAfterFinished`. ``pod_defaults``: the chart's
    `runPods` (same fields as `spec.pods`). ``submitter_image``: image of KubeRay's
    submitter pod (it only needs the `ray` CLI; empty: the trainer image)."""

    cluster_ttl_seconds: int = TTL_AFTER_FINISHED_S
    pod_defaults: dict = field(default_factory=dict)
    submitter_image: str = ""


def _container(name: str, image: str, env: list[dict], resources: dict, ports: list) -> dict:
    _, cache_mounts = cache_volumes(TRAINER_USER)
    out = image_container(name, image, {"env": env}, resources, [SHM_MOUNT, *cache_mounts])
    if ports:
        out["ports"] = ports
    return out


def render_rayjob(
    sweep: Sweep,
    run: RunPlan,
    *,
    attempt: int = 0,
    trainer_image: str,
    resume_from: int | None = None,
    storage_endpoint: str | None = None,
    rewinds: int = 0,
    preemptions: int = 0,
    cluster: ClusterSettings | None = None,
) -> dict:
    """The RayJob of one attempt of one run (see the module docstring).

    ``resume_from`` is recorded as an annotation for people reading the object; the
    trainer finds the last complete checkpoint itself. ``rewinds`` (the run's rewinds
    recorded in storage when this attempt was made) tells reconcile whether a newer
    rewind still needs a new attempt, and which attempts were rewinds, not retries;
    ``preemptions`` likewise counts attempts lost to evictions and node loss.
    """
    cluster = cluster or ClusterSettings()
    if not trainer_image:
        raise ValueError(
            "trainer_image: required (spec.images.trainer or POLYPYTHIA_TRAINER_IMAGE)"
        )
    res = resources_for(sweep.spec, run.size)
    name = L.rayjob_name(run.name, attempt)
    meta_labels = {**L.run_labels(sweep, run, L.TRAINER), L.ATTEMPT: str(attempt)}
    queue = res.get("queueName")
    if queue:
        meta_labels[L.QUEUE] = queue
    own_env = [
        {"name": "POLYPYTHIA_RUN", "value": run.name},
        {"name": "POLYPYTHIA_ATTEMPT", "value": str(attempt)},
    ]
    env = run_env(sweep, TRAINER_USER, storage_endpoint, own_env)
    settings = pod_settings(sweep, cluster.pod_defaults)
    volumes = [SHM, *cache_volumes(TRAINER_USER)[0]]
    gpus = int(res["gpusPerWorker"])
    cpus = int(res["cpusPerWorker"])
    memory = res.get("memory") or f"{cpus * DEFAULT_WORKER_MEMORY_PER_CPU_GI}Gi"
    pod_labels = {L.SWEEP: sweep.name, L.RUN: run.name, L.ATTEMPT: str(attempt)}

    def ray_pod(container: dict, extra: dict, head: bool) -> dict:
        """A Ray node's pod template: the trainer user, the run's labels and volumes."""
        spec = image_pod(TRAINER_USER, container, volumes, settings, head=head, **extra)
        return {"metadata": {"labels": dict(pod_labels)}, "spec": spec}

    head_pod = ray_pod(
        _container(
            "ray-head",
            trainer_image,
            env,
            compute(HEAD_RESOURCES["cpu"], HEAD_RESOURCES["memory"], 0),
            [
                {"containerPort": 6379, "name": "gcs-server"},
                {"containerPort": 8265, "name": "dashboard"},
                {"containerPort": 10001, "name": "client"},
            ],
        ),
        {"priorityClassName": res["priorityClassName"]} if res.get("priorityClassName") else {},
        head=True,
    )
    worker_pod = ray_pod(
        _container(
            "ray-worker",
            trainer_image,
            env,
            compute(cpus, memory, gpus, res.get("gpuResource")),
            [],
        ),
        placement(res),
        head=False,
    )
    submitter = _submitter_pod(cluster.submitter_image or trainer_image, settings, pod_labels)
    workers = int(res["workers"])
    spec: dict = {
        "entrypoint": entrypoint(run.config),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": int(cluster.cluster_ttl_seconds),
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
        "submitterPodTemplate": submitter,
        "rayClusterSpec": {
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                # The head schedules no training work: every worker is a Ray Train worker.
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": head_pod,
            },
            "workerGroupSpecs": [
                {
                    "groupName": "gpu-workers" if gpus else "workers",
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": worker_pod,
                }
            ],
        },
    }
    deadline = sweep.spec.get("activeDeadlineSeconds")
    if deadline:
        spec["activeDeadlineSeconds"] = int(deadline)
    pending = sweep.spec.get("pendingTimeoutSeconds")
    if pending:
        # KubeRay fails the RayJob (reason PreRunningDeadlineExceeded) when it has not
        # reached Running this long after it started: the run's message says so.
        spec["preRunningDeadlineSeconds"] = int(pending)
    if queue:
        spec["suspend"] = True  # Kueue admits the job by unsuspending it
    annotations = {f"{L.DOMAIN}/run-uri": run.config.get("runUri", "")}
    if resume_from is not None:
        annotations[f"{L.DOMAIN}/resume-from-step"] = str(resume_from)
    if rewinds:
        annotations[L.REWINDS] = str(rewinds)
    if preemptions:
        annotations[L.PREEMPTIONS] = str(preemptions)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": sweep.namespace,
            "labels": meta_labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


_HEAD_ONLY_SKIPS = ("env", "volumes", "volumeMounts", "serviceAccountName")


def _submitter_pod(image: str, settings: dict, labels: dict) -> dict:
    """KubeRay's submitter pod (K8sJobMode), hardened and placed like the head.

    The container has no command: KubeRay fills in `ray job submit ...` itself."""
    spec = {
        "restartPolicy": "Never",
        "securityContext": pod_security(TRAINER_USER),
        "containers": [
            {
                "name": "ray-job-submitter",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "resources": SUBMITTER_RESOURCES,
                "securityContext": container_security(),
                "env": [{"name": "HOME", "value": "/tmp"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    trimmed = {k: v for k, v in settings.items() if k not in _HEAD_ONLY_SKIPS}
    apply_pod_settings(spec, trimmed, head=True)
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def kuberay_rule_errors(rayjob: dict) -> list[str]:
    """KubeRay's admission rules that its CRD schema does not carry."""
    errors = []
    name = rayjob["metadata"]["name"]
    if len(name) > L.MAX_RAYJOB_NAME or not L._DNS1035.match(name):
        errors.append(f"metadata.name: {name!r} must be DNS-1035 and at most 47 characters")
    spec = rayjob["spec"]
    finishes = spec.get("shutdownAfterJobFinishes", False)
    if spec.get("suspend") and not finishes:
        errors.append("spec.suspend: needs spec.shutdownAfterJobFinishes true")
    if spec.get("ttlSecondsAfterFinished", 0) and not finishes:
        errors.append("spec.ttlSecondsAfterFinished: needs spec.shutdownAfterJobFinishes true")
    if spec.get("preRunningDeadlineSeconds") is not None and spec["preRunningDeadlineSeconds"] <= 0:
        errors.append("spec.preRunningDeadlineSeconds: must be a positive integer")
    if spec.get("submissionMode") == "SidecarMode" and spec.get("submitterPodTemplate"):
        errors.append("spec.submitterPodTemplate: SidecarMode does not support it")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("spec.backoffLimit: must be >= 0")
    labels = rayjob["metadata"].get("labels", {})
    if labels.get(L.QUEUE) and not spec.get("suspend"):
        errors.append("spec.suspend: must be true when Kueue's queue-name label is set")
    groups = spec["rayClusterSpec"].get("workerGroupSpecs", [])
    for i, group in enumerate(groups):
        if not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            errors.append(f"spec.rayClusterSpec.workerGroupSpecs[{i}]: replicas out of range")
    return errors
