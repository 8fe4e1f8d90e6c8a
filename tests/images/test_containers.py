"""The built images, started as the operator's pods start them (`make test-images`).

Every run's user, groups, read-only root, dropped capabilities, writable volumes and
environment come from the rendered objects: the chart's Deployment for the operator, the
planner's RayJob for the trainer, the eval Job for the evaluator (pod_to_podman.py maps
them to run flags). The root filesystem is read-only for all three, as the project's
pods are meant to run. The S3 endpoint is moto on the host network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import tomllib
import yaml
from pod_to_podman import find_container, run_args, security

from polypythia import planner
from polypythia.k8s.evaljob import render_eval_job
from polypythia.k8s.rayjob import render_rayjob
from polypythia.spec import sweep_from_object
from support.moto_s3 import S3Server, free_port, shared_s3_server

pytestmark = pytest.mark.images

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polypythia"
EXAMPLES = REPO / "manifests" / "examples"
ENGINE = os.environ.get("CONTAINER_ENGINE") or shutil.which("podman") or shutil.which("docker")
ENGINE_NAME = Path(ENGINE).name if ENGINE else ""
SECRET = "polypythia-s3"
NAMESPACE = "images-test"
TRAIN_STEPS = 4
# Not the pod's: Ray's OOM killer judges the whole host, which other work shares here
# (it killed the 1 GB tiny run with the host at 95%); a node is the pod's own.
SHARED_HOST_ENV = ["--env", "RAY_memory_monitor_refresh_ms=0"]


def _chart_values() -> tuple[dict, str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return values, version


def image_of(name: str) -> str:
    """The image under test: $<NAME>_IMAGE (set by make), else the chart's default tag."""
    values, version = _chart_values()
    image = values["images"][name]
    return (
        os.environ.get(f"{name.upper()}_IMAGE")
        or f"{image['repository']}:{image['tag'] or version}"
    )


def engine(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)


def built(name: str) -> str:
    """The image under test, failing the test (not skipping it) when it was not built."""
    if not ENGINE:
        pytest.fail("no podman or docker on PATH: the image tests need one")
    image = image_of(name)
    if engine("image", "inspect", image, timeout=600).returncode:
        pytest.fail(f"{image} is not built (make test-images builds it)")
    return image


def _output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"


# -- operator -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def operator_pod() -> dict:
    """The operator's pod spec as `helm template` renders the chart with default values."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render({}, name="pp", namespace="polypythia")
    for path, text in rendered.items():
        for doc in yaml.safe_load_all(text) if path.endswith(".yaml") else []:
            if doc and doc["kind"] == "Deployment":
                return doc["spec"]["template"]["spec"]
    raise AssertionError("the chart renders no Deployment")


def run_operator(pod: dict, args: list[str] | None = None, command: list[str] | None = None):
    argv = run_args(
        pod, "operator", image=built("operator"),
        fields={"metadata.namespace": "polypythia"}, command=command, args=args,
        extra=["--network", "none", "--volume", f"{EXAMPLES}:/examples:ro"], engine=ENGINE_NAME,
    )  # fmt: skip
    return engine(*argv, timeout=120)


def test_operator_image_answers_help(operator_pod: dict) -> None:
    container = find_container(operator_pod, "operator")
    assert container["args"][0] == "operator"
    result = run_operator(operator_pod, ["operator", "--help"])
    assert result.returncode == 0, _output(result)
    assert "--all-namespaces" in result.stdout


def test_operator_image_validates_and_plans_the_example(operator_pod: dict) -> None:
    result = run_operator(operator_pod, ["validate", "/examples/sweep-tiny.yaml"])
    assert result.returncode == 0, _output(result)
    result = run_operator(operator_pod, ["plan", "/examples/sweep-tiny.yaml", "-o", "yaml"])
    assert result.returncode == 0, _output(result)
    rayjobs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    sweep = yaml.safe_load((EXAMPLES / "sweep-tiny.yaml").read_text())["spec"]
    runs = len(sweep["sizes"]) * len(sweep["seeds"]["list"])
    assert [job["kind"] for job in rayjobs] == ["RayJob"] * runs
    # The trainer image the chart hands the operator is the one `make images` builds.
    env = {e["name"]: e.get("value") for e in find_container(operator_pod, "operator")["env"]}
    head = rayjobs[0]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == env["POLYPYTHIA_TRAINER_IMAGE"] == image_of("trainer")
    # A bad file is a one-line usage error, exit 2, inside the image too.
    result = run_operator(operator_pod, ["validate", "/examples/missing.yaml"])
    assert result.returncode == 2 and "/examples/missing.yaml" in result.stderr, _output(result)
    assert "Traceback" not in result.stderr


def test_operator_image_has_no_torch_and_runs_as_the_pod_user(operator_pod: dict) -> None:
    probe = (
        "import importlib.util as u, json, os; "
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "('torch', 'ray', 'deepspeed', 'transformers', 'lm_eval', 'kopf')} | "
        "{'uid': os.getuid(), 'gid': os.getgid()}))"
    )
    result = run_operator(operator_pod, ["-c", probe], command=["python"])
    assert result.returncode == 0, _output(result)
    found = json.loads(result.stdout)
    sec = security(operator_pod, find_container(operator_pod, "operator"))
    assert (found["uid"], found["gid"]) == (sec["runAsUser"], sec["runAsGroup"])
    assert found == {
        "torch": False, "ray": False, "deepspeed": False, "transformers": False,
        "lm_eval": False, "kopf": True, "uid": sec["runAsUser"], "gid": sec["runAsGroup"],
    }  # fmt: skip


# -- trainer and evaluator ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> S3Server:
    return shared_s3_server()


@pytest.fixture(scope="module")
def sweep(s3: S3Server):
    """A one-run sweep of the smallest preset, stored on the moto server."""
    obj = yaml.safe_load((EXAMPLES / "sweep-tiny.yaml").read_text())
    obj["metadata"]["name"] = "img"
    spec = obj["spec"]
    spec["sizes"] = [spec["sizes"][0]]
    spec["seeds"] = {"list": [0]}
    spec["training"]["steps"] = TRAIN_STEPS
    spec["training"].pop("perturbations", None)  # the demo's planted shocks name other seeds
    spec["checkpoints"] = {"schedule": "pythia", "count": 1}
    spec["evaluation"]["limit"] = 20
    spec["storage"] = {
        "endpoint": s3.url,
        "bucket": s3.make_bucket(),
        "prefix": f"images-{uuid.uuid4().hex[:8]}",
        "secretName": SECRET,
        "secure": False,
    }
    return sweep_from_object(obj, source="images-test", namespace=NAMESPACE)


def _secrets(s3: S3Server) -> dict:
    return {SECRET: {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}}


def _keys(s3: S3Server, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return [o.object_name for o in s3.client().list_objects(bucket, prefix=prefix, recursive=True)]


@pytest.fixture(scope="module")
def trained(sweep, s3: S3Server) -> dict:
    """Train the sweep's one run in the trainer image as its RayJob's head pod runs it.

    KubeRay starts `ray start --head` in the head container and submits the entrypoint
    there; the worker pods add CPUs. One container plays both here: the head is started
    with the worker group's CPUs (the RayJob gives the head none)."""
    run = planner.plan_sweep(sweep)[0]
    rayjob = render_rayjob(sweep, run, trainer_image=built("trainer"))
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    head_c, worker_c = find_container(head, "ray-head"), find_container(worker, "ray-worker")
    assert security(head, head_c) == security(worker, worker_c)
    assert head_c["image"] == worker_c["image"] == image_of("trainer")
    cpus = int(worker_c["resources"]["limits"]["cpu"])
    script = (
        f"ray start --head --port={free_port()} --num-cpus={cpus} --include-dashboard=false "
        f"--object-store-memory=200000000 --disable-usage-stats >/dev/null "
        f"&& {rayjob['spec']['entrypoint']}"
    )
    argv = run_args(
        head, "ray-head", secrets=_secrets(s3), command=["bash", "-c"],
        args=[script], extra=["--network", "host", *SHARED_HOST_ENV], engine=ENGINE_NAME,
    )  # fmt: skip
    result = engine(*argv, timeout=900)
    return {"run": run, "result": result, "keys": _keys(s3, run.config["runUri"])}


def test_trainer_image_trains_and_writes_a_complete_checkpoint(trained: dict) -> None:
    result, keys = trained["result"], trained["keys"]
    assert result.returncode == 0, _output(result)
    final = f"checkpoints/step{TRAIN_STEPS}/"
    assert any(k.endswith(final + "COMPLETE") for k in keys), keys
    assert any(k.endswith(final + "config.json") for k in keys), keys
    assert any(k.endswith("/run.json") for k in keys), keys


def test_eval_image_evaluates_the_checkpoint_writing_only_its_volumes(
    trained: dict, sweep, s3: S3Server
) -> None:
    if trained["result"].returncode:
        pytest.fail("the trainer run failed: nothing to evaluate")
    run = trained["run"]
    job = render_eval_job(sweep, run, [TRAIN_STEPS], eval_image=built("eval"))
    pod = job["spec"]["template"]["spec"]
    name = f"pp-eval-{uuid.uuid4().hex[:8]}"
    argv = run_args(
        pod, "evaluate", secrets=_secrets(s3),
        extra=["--network", "host", "--name", name], engine=ENGINE_NAME,
    )  # fmt: skip
    argv.remove("--rm")  # kept until its filesystem changes are read
    try:
        result = engine(*argv, timeout=900)
        changed = engine("diff", name, timeout=60)
    finally:
        engine("rm", "--force", name, timeout=60)
    assert result.returncode == 0, _output(result)
    keys = _keys(s3, run.config["runUri"])
    assert any(k.endswith(f"evals/step{TRAIN_STEPS}.json") for k in keys), keys
    # Writes went to the pod's volumes only: the container's own layer holds nothing but
    # the mount points the runtime made (volumes and their parents, /etc's network files).
    mounts = [m["mountPath"] for m in find_container(pod, "evaluate").get("volumeMounts") or []]
    allowed = {str(parent) for m in mounts for parent in [Path(m), *Path(m).parents]}
    allowed |= {
        "/etc",
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/run",
        "/run/.containerenv",
    }
    assert changed.returncode == 0, _output(changed)
    paths = [line.split(maxsplit=1)[1] for line in changed.stdout.splitlines() if line.strip()]
    assert sorted(set(paths) - allowed) == [], changed.stdout


@pytest.mark.parametrize("name", ["operator", "trainer", "eval"])
def test_built_images_carry_oci_labels(name: str) -> None:
    image = built(name)
    result = engine("image", "inspect", "--format", "{{json .Config.Labels}}", image, timeout=600)
    assert result.returncode == 0, _output(result)
    labels = json.loads(result.stdout)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert labels["org.opencontainers.image.title"] == f"polypythia-{name}"
    assert labels["org.opencontainers.image.base.name"]
