"""Pods run as the user each image was built for: the last USER and the ENV of each
Dockerfile target agree with what the operator renders (trainer, eval) and the chart sets
(operator)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from dockerfiles import final_steps, final_user

from polypythia.k8s.pods import EVAL_USER, TRAINER_USER, cache_env

ROOT = Path(__file__).resolve().parents[2]


def _env(target: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for word, rest in final_steps(target):
        if word == "ENV":
            out.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return out


def test_trainer_and_eval_pods_run_as_their_images_user() -> None:
    for target, user in (("trainer", TRAINER_USER), ("eval", EVAL_USER)):
        assert final_user(target) == (user.uid, user.gid), target
        env = _env(target)
        pod_env = {e["name"]: e["value"] for e in cache_env(user)}
        # The image's caches lie where the pod mounts its emptyDir.
        assert env["HF_HOME"] == pod_env["HF_HOME"], target
        assert env["HF_HOME"].startswith(user.cache + "/"), target
        workdir = [rest for word, rest in final_steps(target) if word == "WORKDIR"][-1]
        assert workdir == user.home, target


def test_operator_pod_runs_as_the_operator_images_user() -> None:
    uid, gid = final_user("operator")
    values = yaml.safe_load((ROOT / "charts" / "polypythia" / "values.yaml").read_text())
    pod = values["operator"]["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
