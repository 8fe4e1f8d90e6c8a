"""Fixtures of the real-control-plane tests (`make test-cluster` starts the cluster, then runs these).

Not collected by the default `pytest` run (pyproject's addopts ignore tests/cluster). A missing or
dead cluster fails every test here, never skips: these tests are the reference for everything
Kubernetes-facing.
"""

from __future__ import annotations

import pytest

from cluster.kube import (
    BIN,
    CHART,
    EVAL_IMAGE,
    KUBECONFIG,
    RELEASE,
    RELEASE_NS,
    SERVICE_ACCOUNT,
    TRAINER_IMAGE,
    Cluster,
    kubectl,
    run,
)
from support.moto_s3 import shared_s3_server


@pytest.fixture(scope="session")
def control_plane() -> None:
    """The cluster `make cluster-up` started answers /readyz, or every test fails saying why."""
    if not KUBECONFIG.exists() or not (BIN / "kubectl").exists():
        pytest.fail(
            f"no test control plane: {KUBECONFIG} is missing; run `make test-cluster` "
            "(it builds and starts one) or `make cluster-up`",
            pytrace=False,
        )
    ready = kubectl("get", "--raw", "/readyz", check=False)
    if ready.returncode != 0 or ready.stdout.strip() != "ok":
        pytest.fail(
            f"the test control plane does not answer /readyz ({ready.stderr.strip()[-300:]}); "
            "run `make cluster-down cluster-up`",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def release(control_plane: None) -> str:
    """`helm install` (upgrade when installed) of charts/polypythia into polypythia-system; returns the ServiceAccount name."""
    run(
        "helm", "upgrade", "--install", RELEASE, str(CHART), "-n", RELEASE_NS, "--create-namespace",
        "--set", f"images.trainer.repository={TRAINER_IMAGE.split(':')[0]}",
        "--set", f"images.trainer.tag={TRAINER_IMAGE.split(':')[1]}",
        "--set", f"images.eval.repository={EVAL_IMAGE.split(':')[0]}",
        "--set", f"images.eval.tag={EVAL_IMAGE.split(':')[1]}",
    )  # fmt: skip
    return SERVICE_ACCOUNT


@pytest.fixture(scope="session")
def s3():  # type: ignore[no-untyped-def]
    return shared_s3_server()


@pytest.fixture(scope="module")
def cluster(release: str, s3):  # type: ignore[no-untyped-def]
    """Admin clients plus the operator process, authenticated as the chart's ServiceAccount."""
    c = Cluster()
    c.start_operator(c.service_account_kubeconfig(release, RELEASE_NS), s3.url)
    yield c
    c.close()
