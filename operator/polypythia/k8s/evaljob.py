"""A batch/v1 Job that evaluates a batch of a run's checkpoints with the eval image."""

from __future__ import annotations

from polypythia.k8s import labels as L
from polypythia.k8s.pods import (
    EVAL_USER,
    cache_volumes,
    compute,
    image_container,
    image_pod,
    placement,
    pod_settings,
    run_env,
)
from polypythia.planner import RunPlan, evaluate_args
from polypythia.spec import Sweep, resources_for

BACKOFF_LIMIT = 1
TTL_AFTER_FINISHED_S = 3600  # a finished Job holds no resources; its pod keeps the logs


def render_eval_job(
    sweep: Sweep,
    run: RunPlan,
    steps: list[int],
    *,
    attempt: int = 0,
    eval_image: str,
    storage_endpoint: str | None = None,
    pod_defaults: dict | None = None,
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
    volumes, mounts = cache_volumes(EVAL_USER)
    run_res = resources_for(sweep.spec, run.size)
    container = image_container(
        "evaluate",
        eval_image,
        {
            "command": ["polypythia"],
            "args": args,
            "env": run_env(sweep, EVAL_USER, storage_endpoint),
        },
        compute(res.get("cpu", "2"), res.get("memory", "8Gi"), gpus, run_res.get("gpuResource")),
        mounts,
    )
    # A CPU evaluation runs where the Ray head runs (CPU nodes); a GPU one where the workers do.
    pod_spec = image_pod(
        EVAL_USER,
        container,
        volumes,
        pod_settings(sweep, pod_defaults),
        head=not gpus,
        restartPolicy="Never",
        **(placement(run_res) if gpus else {}),
    )
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
