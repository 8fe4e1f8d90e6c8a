"""Pods run their image as the user the image was built for (fast: nothing is started).

A pod whose uid differs from the image's USER finds its HOME and caches unwritable: the
eval image is built for uid 10001 while eval Jobs ran it as 1000 (issue #16 fixes it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dockerfiles import IMAGES, final_user
from pod_to_podman import find_container, security

from polypythia import planner
from polypythia.k8s.evaljob import render_eval_job
from polypythia.k8s.rayjob import render_rayjob
from polypythia.spec import load_sweep_file

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polypythia"


def _operator_pods() -> list[tuple[dict, str]]:
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render({}, name="pp", namespace="polypythia")
    docs = [d for p, t in rendered.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t)]
    [deployment] = [d for d in docs if d and d["kind"] == "Deployment"]
    return [(deployment["spec"]["template"]["spec"], "operator")]


def _sweep_run():
    sweep = load_sweep_file(REPO / "manifests" / "examples" / "sweep-tiny.yaml")
    return sweep, planner.plan_sweep(sweep)[0]


def _trainer_pods() -> list[tuple[dict, str]]:
    sweep, run = _sweep_run()
    cluster = render_rayjob(sweep, run, trainer_image="t:1")["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    workers = [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    return [(head, "ray-head")] + [(w, "ray-worker") for w in workers]


def _eval_pods() -> list[tuple[dict, str]]:
    sweep, run = _sweep_run()
    job = render_eval_job(sweep, run, [100], eval_image="e:1")
    return [(job["spec"]["template"]["spec"], "evaluate")]


PODS = {"operator": _operator_pods, "trainer": _trainer_pods, "eval": _eval_pods}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_pods_run_as_the_user_the_image_was_built_for(image: str) -> None:
    uid, gid = final_user(image)
    for pod, container in PODS[image]():
        sec = security(pod, find_container(pod, container))
        assert sec.get("runAsNonRoot") is True
        assert sec.get("runAsUser") == uid, f"{image} {container}: pod uid vs the target's USER"
        if gid is not None:
            assert sec.get("runAsGroup") == gid, (
                f"{image} {container}: pod gid vs the target's USER"
            )
