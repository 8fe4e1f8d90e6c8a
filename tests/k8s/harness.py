"""The cluster the k8s tests run against: emulated API server, moto S3, the real operator.

The operator runs as a child process (`polypythia operator`) reading a kubeconfig, as it
would in a pod; the test plays KubeRay and the trainer by moving RayJob status and
writing checkpoints into the S3 bucket.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes

from support.k8s_emulator import ClusterEmulator, EmulatorThread, ResourceType
from support.operator_process import OperatorChild, operator_env
from support.sweeps import sweep_object
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "polypythiasweeps.polypythia.io.yaml"
RAYJOB_CRD = ROOT / "tests" / "fixtures" / "kuberay" / "ray.io_rayjobs.yaml"
GROUP, VERSION, PLURAL = "polypythia.io", "v1alpha1", "polypythiasweeps"
TRAINER_IMAGE = "registry.example/polypythia-trainer:test"
EVAL_IMAGE = "registry.example/polypythia-eval:test"


def make_emulator() -> ClusterEmulator:
    emulator = ClusterEmulator()
    emulator.load_crds(str(CRD))
    emulator.load_crds(str(RAYJOB_CRD))
    # KubeRay's RayClusters (no schema vendored): the operator lists those of ended RayJobs.
    emulator.register(ResourceType("ray.io", "v1", "rayclusters", "RayCluster"))
    return emulator


class Cluster(OperatorChild):
    """An emulated cluster plus a handle on the operator process."""

    def __init__(self, s3) -> None:  # type: ignore[no-untyped-def]
        self.s3 = s3
        self.server = EmulatorThread(make_emulator())
        self.emulator = self.server.emulator
        self.tmp = tempfile.TemporaryDirectory(prefix="pp-k8s-")
        self.log = Path(self.tmp.name) / "operator.log"

    def __enter__(self) -> Cluster:
        self.server.__enter__()
        cfg = kubernetes.client.Configuration()
        cfg.host = self.server.url
        self.api = kubernetes.client.ApiClient(cfg)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.kubeconfig = self.server.kubeconfig(str(Path(self.tmp.name) / "kubeconfig"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_operator()
        self.server.__exit__(*exc)
        self.tmp.cleanup()

    # --- operator process -------------------------------------------------------------------

    def start_operator(self, poll_interval: float = 0.5) -> None:
        env = operator_env(
            self.kubeconfig,
            self.s3.url,
            POLYPYTHIA_TRAINER_IMAGE=TRAINER_IMAGE,
            POLYPYTHIA_EVAL_IMAGE=EVAL_IMAGE,
            # The tests give each namespace its own storage Secret (rbac.sweepSecretNamespaces).
            POLYPYTHIA_READ_SWEEP_SECRETS="true",
        )
        self.spawn_operator(env, poll_interval)

    # --- cluster state ----------------------------------------------------------------------

    def create_namespace(self, name: str) -> None:
        self.core.create_namespace({"metadata": {"name": name}})

    def namespace_with_storage(self, ns: str, secret: bool = True) -> dict:
        """Namespace ``ns`` with the storage Secret ``s3`` (unless ``secret`` is False) and a
        fresh bucket; returns the sweep's ``spec.storage`` naming them."""
        self.create_namespace(ns)
        if secret:
            self.create_secret(ns, "s3")
        return {"bucket": self.s3.make_bucket(), "secretName": "s3", "secure": False}

    def create_secret(self, ns: str, name: str) -> None:
        self.core.create_namespaced_secret(ns, self.s3.secret(name))

    def apply_sweep(self, ns: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def patch_sweep(self, ns: str, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, patch)

    def sweep(self, ns: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def status(self, ns: str, name: str) -> dict:
        return self.sweep(ns, name).get("status") or {}

    def condition(self, ns: str, name: str, kind: str) -> dict:
        """The sweep's condition of type ``kind`` ({} while it has none)."""
        conditions = self.status(ns, name).get("conditions", [])
        return next((c for c in conditions if c["type"] == kind), {})

    def row(self, ns: str, sweep: str, run: str) -> dict:
        """The status row of ``run`` ({} while it has none)."""
        return next((r for r in self.status(ns, sweep).get("runs", []) if r["name"] == run), {})

    def wait_for_phase(self, ns: str, name: str, phase: str, timeout: float = 30.0) -> dict:
        """The sweep's status once its phase is ``phase``."""

        def reached() -> dict:
            status = self.status(ns, name)
            return status if status.get("phase") == phase else {}

        return self.wait_for(phase, reached, timeout)  # type: ignore[return-value]

    def wait_for_condition(
        self,
        ns: str,
        name: str,
        kind: str = "Ready",
        *,
        status: str | None = None,
        reason: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        """The sweep's condition ``kind`` once it has the ``status`` and ``reason`` asked for."""
        wanted = {k: v for k, v in (("status", status), ("reason", reason)) if v is not None}

        def reached() -> dict:
            found = self.condition(ns, name, kind)
            return found if all(found.get(k) == v for k, v in wanted.items()) else {}

        what = f"{kind} {' '.join(wanted.values())}"
        return self.wait_for(what, reached, timeout)  # type: ignore[return-value]

    def rayjobs(self, ns: str, sweep: str) -> list[dict]:
        return self.emulator.list_objects("ray.io/v1/rayjobs", ns, f"polypythia.io/sweep={sweep}")

    def eval_jobs(self, ns: str, sweep: str) -> list[dict]:
        return self.emulator.list_objects(
            "batch/v1/jobs",
            ns,
            f"polypythia.io/sweep={sweep},app.kubernetes.io/component=evaluator",
        )

    def set_rayjob_status(self, ns: str, name: str, deployment: str, job: str) -> None:
        """Play KubeRay: move a RayJob's status over real HTTP."""
        self.custom.patch_namespaced_custom_object_status(
            "ray.io",
            "v1",
            ns,
            "rayjobs",
            name,
            {"status": {"jobDeploymentStatus": deployment, "jobStatus": job}},
        )

    def set_job_status(self, ns: str, name: str, succeeded: bool) -> None:
        """Play the Job controller: finish an eval Job."""
        kind = "Complete" if succeeded else "Failed"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.batch.patch_namespaced_job_status(
            name,
            ns,
            {
                "status": {
                    "conditions": [{"type": kind, "status": "True", "lastTransitionTime": now}],
                    ("succeeded" if succeeded else "failed"): 1,
                }
            },
        )

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
        return wait_for(what, check, timeout, self.operator_log, interval=0.1)


def sweep_body(
    name: str, seeds: int = 5, sizes: tuple[str, ...] = ("nano", "micro"), **spec: object
) -> dict:
    return sweep_object(
        name,
        {
            "sizes": list(sizes),
            "seeds": {"range": {"count": seeds}},
            "training": {"steps": 20, "globalBatchSize": 8, "sequenceLength": 64},
            "checkpoints": {"schedule": "every", "every": 5},
            "evaluation": {"concurrency": 2},
            **spec,
        },
    )
