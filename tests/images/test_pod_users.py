"""Pods run as the user each image was built for: the Dockerfiles' last USER line and ENV
agree with what the operator renders (trainer, eval) and the chart sets (operator)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from polypythia.k8s.pods import EVAL_USER, TRAINER_USER, cache_env

ROOT = Path(__file__).resolve().parents[2]


def _final_stage(dockerfile: Path) -> list[str]:
    """Instructions of the last stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    last = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last:]


def _user(stage: list[str]) -> tuple[int, int]:
    user = [line.split()[1] for line in stage if line.upper().startswith("USER ")][-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _env(stage: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stage:
        if line.upper().startswith("ENV "):
            out.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    return out


def test_trainer_and_eval_pods_run_as_their_images_user() -> None:
    for path, user in (
        (ROOT / "trainer_image" / "Dockerfile", TRAINER_USER),
        (ROOT / "eval_image" / "Dockerfile", EVAL_USER),
    ):
        stage = _final_stage(path)
        assert _user(stage) == (user.uid, user.gid), path
        env = _env(stage)
        pod_env = {e["name"]: e["value"] for e in cache_env(user)}
        # The image's caches lie where the pod mounts its emptyDir.
        assert env["HF_HOME"] == pod_env["HF_HOME"], path
        assert env["HF_HOME"].startswith(user.cache + "/"), path
        workdir = [line.split()[1] for line in stage if line.upper().startswith("WORKDIR ")][-1]
        assert workdir == user.home, path


def test_operator_pod_runs_as_the_operator_images_user() -> None:
    uid, gid = _user(_final_stage(ROOT / "operator" / "Dockerfile"))
    values = yaml.safe_load((ROOT / "charts" / "polypythia" / "values.yaml").read_text())
    pod = values["operator"]["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid)
