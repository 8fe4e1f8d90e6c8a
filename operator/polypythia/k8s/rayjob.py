"""One KubeRay RayJob (ray.io/v1) per run attempt: what `polypythia plan -o yaml` prints too.

The trainer resumes from the run's last complete checkpoint in storage by itself, so a
retry is the same entrypoint under a new name (`<run>-r<attempt>`).
"""

from __future__ import annotations

import json
import re
import shlex

from polypythia.k8s import labels as L
from polypythia.k8s.pods import compute, container_security, placement, pod_security, storage_env
from polypythia.planner import RunPlan
from polypythia.spec import Sweep, resources_for

API_VERSION = "ray.io/v1"
KIND = "RayJob"
TTL_AFTER_FINISHED_S = 3600
HEAD_RESOURCES = {"cpu": 2, "memory": "8Gi"}
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


def _container(name: str, image: str, env: list[dict], resources: dict, ports: list) -> dict:
    out = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": [SHM_MOUNT],
    }
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
) -> dict:
    """The RayJob of one attempt of one run (see the module docstring).

    ``resume_from`` is recorded as an annotation for people reading the object; the
    trainer finds the last complete checkpoint itself. ``rewinds`` (the run's rewinds
    recorded in storage when this attempt was made) tells reconcile whether a newer
    rewind still needs a new attempt, and which attempts were rewinds, not retries.
    """
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
    env = storage_env(sweep, storage_endpoint) + [
        {"name": "POLYPYTHIA_RUN", "value": run.name},
        {"name": "POLYPYTHIA_ATTEMPT", "value": str(attempt)},
    ]
    wandb_secret = (sweep.spec.get("metrics") or {}).get("wandbSecretName")
    if wandb_secret:
        key = "WANDB_API_KEY"
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": wandb_secret, "key": key}}})
    gpus = int(res["gpusPerWorker"])
    cpus = int(res["cpusPerWorker"])
    memory = res.get("memory") or f"{cpus * DEFAULT_WORKER_MEMORY_PER_CPU_GI}Gi"
    pod_labels = {L.SWEEP: sweep.name, L.RUN: run.name, L.ATTEMPT: str(attempt)}
    head_pod = {
        "metadata": {"labels": dict(pod_labels)},
        "spec": {
            "securityContext": pod_security(),
            "containers": [
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
                )
            ],
            "volumes": [SHM],
            **(
                {"priorityClassName": res["priorityClassName"]}
                if res.get("priorityClassName")
                else {}
            ),
        },
    }
    worker_pod = {
        "metadata": {"labels": dict(pod_labels)},
        "spec": {
            "securityContext": pod_security(),
            "containers": [
                _container("ray-worker", trainer_image, env, compute(cpus, memory, gpus), [])
            ],
            "volumes": [SHM],
            **placement(res),
        },
    }
    workers = int(res["workers"])
    spec: dict = {
        "entrypoint": entrypoint(run.config),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
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
    if queue:
        spec["suspend"] = True  # Kueue admits the job by unsuspending it
    annotations = {f"{L.DOMAIN}/run-uri": run.config.get("runUri", "")}
    if resume_from is not None:
        annotations[f"{L.DOMAIN}/resume-from-step"] = str(resume_from)
    if rewinds:
        annotations[L.REWINDS] = str(rewinds)
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
