"""A batch/v1 Job that evaluates a batch of a run's checkpoints with the eval image."""

from __future__ import annotations

from polypythia.k8s import labels as L
from polypythia.k8s.pods import compute, container_security, placement, pod_security, storage_env
from polypythia.planner import RunPlan, evaluate_args
from polypythia.spec import Sweep, resources_for

BACKOFF_LIMIT = 1
TTL_AFTER_FINISHED_S = 3600


def render_eval_job(
    sweep: Sweep,
    run: RunPlan,
    steps: list[int],
    *,
    attempt: int = 0,
    eval_image: str,
    storage_endpoint: str | None = None,
) -> dict:
    """The Job running `polypythia evaluate <runUri> --steps ... --tasks ...` on ``steps``."""
    if not steps:
        raise ValueError("steps: an evaluation Job needs at least one checkpoint step")
    if not eval_image:
        raise ValueError("eval_image: required (spec.images.eval or POLYPYTHIA_EVAL_IMAGE)")
    steps = sorted(set(steps))
    evaluation = sweep.spec["evaluation"]
    res = evaluation.get("resources", {})
    gpus = int(res.get("gpus", 0))
    args = evaluate_args(sweep.spec, run.config["runUri"], steps, run.size)
    pod_spec: dict = {
        "restartPolicy": "Never",
        "securityContext": pod_security(),
        "containers": [
            {
                "name": "evaluate",
                "image": eval_image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["polypythia"],
                "args": args,
                "env": storage_env(sweep, storage_endpoint),
                "resources": compute(res.get("cpu", "2"), res.get("memory", "8Gi"), gpus),
                "securityContext": container_security(),
            }
        ],
    }
    if gpus:
        pod_spec.update(placement(resources_for(sweep.spec, run.size)))
    labels = {**L.run_labels(sweep, run, L.EVALUATOR)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": L.eval_job_name(run.name, steps[0], attempt),
            "namespace": sweep.namespace,
            "labels": labels,
            "annotations": {L.STEPS: ",".join(map(str, steps)), L.EVAL_TRY: str(attempt)},
        },
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "template": {
                "metadata": {"labels": {L.SWEEP: sweep.name, L.RUN: run.name}},
                "spec": pod_spec,
            },
        },
    }
