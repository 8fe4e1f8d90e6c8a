"""The operator image's commands run with torch, transformers, DeepSpeed, Ray and lm-eval absent.

The operator image installs only `polypythia[operator]`; a command that imports a training or
evaluation package there fails with ModuleNotFoundError. A `sitecustomize` on PYTHONPATH makes
those imports fail here the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("torch", "transformers", "deepspeed", "ray", "lm_eval", "scipy", "matplotlib", "hmmlearn")
BLOCKER = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the operator image)")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _run(tmp_path: Path, *argv: str, python: tuple[str, ...] = ("-m", "polypythia.cli")):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    paths = [tmp_path, ROOT / "operator", ROOT / "trainer_image", ROOT / "eval_image"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, paths))}
    return subprocess.run(
        [sys.executable, *python, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_the_blocker_blocks(tmp_path: Path) -> None:
    """Without this the other tests prove nothing."""
    proc = _run(tmp_path, python=("-c", "import transformers"))
    assert proc.returncode != 0 and "not in the operator image" in proc.stderr


def test_presets_counts_parameters_without_torch(tmp_path: Path) -> None:
    proc = _run(tmp_path, "presets", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["410m"]["parameters"] == 405_334_016


@pytest.mark.parametrize("example", sorted((ROOT / "manifests" / "examples").glob("sweep-*.yaml")))
def test_validate_and_plan_every_example_without_torch(tmp_path: Path, example: Path) -> None:
    # A branch example names a parent in storage this machine cannot reach: checked offline.
    offline = ["--skip-parent"] if "branch" in yaml.safe_load(example.read_text())["spec"] else []
    validate = _run(tmp_path, "validate", str(example), *offline)
    assert validate.returncode == 0, validate.stderr
    plan = _run(tmp_path, "plan", str(example), "-o", "yaml")
    assert plan.returncode == 0, plan.stderr
    assert "kind: RayJob" in plan.stdout


def test_operator_help_without_torch(tmp_path: Path) -> None:
    proc = _run(tmp_path, "operator", "--help")
    assert proc.returncode == 0, proc.stderr
