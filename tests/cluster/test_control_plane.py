"""The chart and the sweep schema against the real API server: install, admission, validation."""

from __future__ import annotations

import copy

import pytest
import yaml

from cluster.kube import RELEASE, RELEASE_NS, ROOT, SERVICE_ACCOUNT, kubectl, run, sweep_manifest

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def test_control_plane_runs_kuberay_and_the_controller_manager(control_plane: None) -> None:
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    crds = kubectl("get", "crd", "-o", "name").stdout.split()
    assert {"customresourcedefinition.apiextensions.k8s.io/rayjobs.ray.io"} <= set(crds)
    server = kubectl("version", "-o", "yaml").stdout
    assert "gitVersion: v1.34" in server.split("serverVersion:")[1]


def test_helm_install_creates_the_operator_with_its_rbac(release: str) -> None:
    status = run("helm", "status", RELEASE, "-n", RELEASE_NS, "-o", "yaml").stdout
    assert yaml.safe_load(status)["info"]["status"] == "deployed"
    deploy = yaml.safe_load(
        kubectl("get", "deployment", "-n", RELEASE_NS, f"{RELEASE}-polypythia", "-o", "yaml").stdout
    )
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    sa = f"system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}"
    # The real RBAC authorizer grants the chart's ServiceAccount what the operator does...
    for verb, resource in [
        ("watch", "polypythiasweeps.polypythia.io"),
        ("patch", "polypythiasweeps.polypythia.io/status"),
        ("create", "rayjobs.ray.io"),
        ("create", "jobs.batch"),
        ("create", "events"),
    ]:
        assert kubectl("auth", "can-i", verb, resource, "-A", "--as", sa).stdout.strip() == "yes"
    # ...and nothing it does not.
    for verb, resource in [("create", "pods"), ("delete", "polypythiasweeps.polypythia.io")]:
        denied = kubectl("auth", "can-i", verb, resource, "-A", "--as", sa, check=False)
        assert denied.stdout.strip() == "no"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_server_side_dry_run_accepts_every_example(release: str, path) -> None:  # type: ignore[no-untyped-def]
    done = kubectl("apply", "--dry-run=server", "-n", "default", "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
    assert "(server dry run)" in done.stdout


def _malformed(edit) -> str:  # type: ignore[no-untyped-def]
    body = copy.deepcopy(sweep_manifest())
    edit(body["spec"])
    return yaml.safe_dump(body)


MALFORMED = {
    "unknown-size": (
        lambda s: s.update(sizes=["nano", "huge"]),
        'spec.sizes[1]: Unsupported value: "huge"',
    ),
    "no-sizes": (lambda s: s.pop("sizes"), "spec.sizes: Required value"),
    "zero-seed-count": (
        lambda s: s.update(seeds={"range": {"count": 0}}),
        "spec.seeds.range.count: Invalid value: 0: spec.seeds.range.count in body should be "
        "greater than or equal to 1",
    ),
    "duplicate-seed": (
        lambda s: s.update(seeds={"list": [1, 1]}),
        "spec.seeds.list[1]: Duplicate value: 1",
    ),
    "wrong-type": (
        lambda s: s["training"].update(steps="many"),
        'spec.training.steps: Invalid value: "string": spec.training.steps in body must be of '
        "type integer",
    ),
    "unknown-field": (
        lambda s: s.update(sized=["nano"]),
        'unknown field "spec.sized"',
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_server_side_dry_run_rejects_malformed_sweeps_with_the_servers_message(
    release: str, case: str
) -> None:
    edit, message = MALFORMED[case]
    done = kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", stdin=_malformed(edit), check=False
    )
    assert done.returncode != 0
    assert message in done.stderr
