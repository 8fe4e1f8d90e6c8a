"""On a cluster a branch run is a RayJob like any other (issue #19).

User story: an operator user applies a branch sweep whose parent lives in another sweep's
prefix; each run becomes a RayJob that KubeRay admits, whose trainer config names the
parent (read with the sweep's storage Secret) and trains only after the branch point.
"""

from __future__ import annotations

from k8s.harness import RAYJOB_CRD, sweep_body

from polypythia import planner
from polypythia.k8s.rayjob import config_of, kuberay_rule_errors, render_rayjob
from polypythia.spec import sweep_from_object
from support.k8s_schema import schema_for

PARENT = "s3://bkt/other-prefix/orig/orig-nano-s0"


def test_branch_runs_render_as_admitted_rayjobs_carrying_the_parent() -> None:
    body = sweep_body("br", seeds=2, sizes=("nano",))
    body["spec"]["seeds"]["axis"] = "data"
    body["spec"]["training"] = {**body["spec"].get("training", {}), "steps": 60}
    body["spec"]["checkpoints"] = {"schedule": "every", "every": 10}
    body["spec"]["branch"] = {"from": {"uri": PARENT, "step": 30}, "resetOptimizer": True}
    body["spec"]["storage"] = {"bucket": "bkt", "prefix": "sweeps", "secretName": "s3"}
    sweep = sweep_from_object(body, namespace="ns")
    for run in planner.plan_sweep(sweep):
        job = render_rayjob(sweep, run, trainer_image="trainer:1")
        _, dropped, errors = schema_for(str(RAYJOB_CRD), "v1").admit(job)
        assert errors == [] and dropped == [] and kuberay_rule_errors(job) == []
        config = config_of(job)
        assert config["branch"] == {"parent": PARENT, "step": 30, "optimizer": "fresh"}
        assert config["runUri"].startswith("s3://bkt/sweeps/br/")
        assert all(step > 30 for step in config["checkpoints"]["steps"])
