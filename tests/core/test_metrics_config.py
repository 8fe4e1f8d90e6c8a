"""`spec.metrics`: W&B settings reach the trainer's run config and its pods (key by reference)."""

from __future__ import annotations

from polypythia import planner
from polypythia.k8s import evaljob, rayjob
from polypythia.spec import sweep_from_object


def _sweep(metrics: dict | None):
    spec = {"sizes": ["nano"], "seeds": {"list": [0]}, "storage": {"bucket": "bucket"}}
    if metrics is not None:
        spec["metrics"] = metrics
    body = {
        "apiVersion": "polypythia.io/v1alpha1",
        "kind": "PolyPythiaSweep",
        "metadata": {"name": "m", "namespace": "default"},
        "spec": spec,
    }
    return sweep_from_object(body, source="test", namespace="default")


def _env(sweep) -> dict[str, dict]:
    (run,) = planner.plan_sweep(sweep)
    job = rayjob.render_rayjob(sweep, run, trainer_image="trainer:test")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in head["env"]}


def _eval_env(sweep) -> dict[str, dict]:
    (run,) = planner.plan_sweep(sweep)
    job = evaljob.render_eval_job(sweep, run, [0], eval_image="eval:test")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_wandb_project_and_secret_reach_the_trainer() -> None:
    sweep = _sweep({"wandbProject": "pp", "wandbEntity": "lab", "wandbSecretName": "wandb"})
    (run,) = planner.plan_sweep(sweep)
    assert run.config["metrics"] == {"wandbProject": "pp", "wandbEntity": "lab"}
    expected = {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "WANDB_API_KEY"}},
    }
    # The evaluator logs the scores to the same W&B run: it needs the key too.
    assert _env(sweep)["WANDB_API_KEY"] == _eval_env(sweep)["WANDB_API_KEY"] == expected


def test_without_metrics_no_wandb() -> None:
    sweep = _sweep(None)
    (run,) = planner.plan_sweep(sweep)
    assert run.config["metrics"] == {"wandbProject": None, "wandbEntity": None}
    assert "WANDB_API_KEY" not in _env(sweep) and "WANDB_API_KEY" not in _eval_env(sweep)
