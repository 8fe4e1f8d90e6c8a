"""Handles on the real test control plane that `make cluster-up` starts (tools/cluster/cluster.py).

kubectl and helm are the binaries in `.cluster/bin/`; the Python `kubernetes` client reads the same
admin kubeconfig. The operator runs as a child process authenticated as the chart's ServiceAccount
with a token from the TokenRequest API, as it would in its pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes
import yaml

from support.moto_s3 import shared_s3_server
from support.operator_process import OperatorChild, operator_env
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("POLYPYTHIA_CLUSTER_DIR", ROOT / ".cluster"))
KUBECONFIG = STATE / "kubeconfig"
BIN = STATE / "bin"
AUDIT_LOG = STATE / "run" / "logs" / "audit.log"
CHART = ROOT / "charts" / "polypythia"
GROUP, VERSION, PLURAL = "polypythia.io", "v1alpha1", "polypythiasweeps"
RELEASE, RELEASE_NS = "pp", "polypythia-system"
SERVICE_ACCOUNT = f"{RELEASE}-polypythia"  # the chart's fullname
TRAINER_IMAGE = "registry.example/polypythia-trainer:test"
EVAL_IMAGE = "registry.example/polypythia-eval:test"


def run(tool: str, *args: str, check: bool = True, stdin: str | None = None, kubeconfig: Path = KUBECONFIG) -> subprocess.CompletedProcess:  # fmt: skip
    """Run kubectl or helm from .cluster/bin against the test cluster."""
    flag = "--kubeconfig"
    done = subprocess.run(
        [str(BIN / tool), flag, str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def kubectl(*args: str, **kw: object) -> subprocess.CompletedProcess:
    return run("kubectl", *args, **kw)  # type: ignore[arg-type]


def audit_records(user: str) -> list[dict]:
    """Every request `user` made, as the API server's audit log recorded it (one JSON per line)."""
    records = []
    if AUDIT_LOG.exists():
        for line in AUDIT_LOG.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written right now
            if (
                record.get("user", {}).get("username") == user
                and record.get("stage") == "ResponseComplete"
            ):
                records.append(record)
    return records


class Cluster(OperatorChild):
    """Admin clients on the test cluster plus the operator child process."""

    def __init__(self) -> None:
        self.api = kubernetes.config.new_client_from_config(str(KUBECONFIG))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.tmp = tempfile.TemporaryDirectory(prefix="pp-cluster-")
        self.log = Path(self.tmp.name) / "operator.log"
        self.operator_kubeconfig: Path | None = None
        self.s3_url = ""

    def close(self) -> None:
        self.stop_operator()
        self.api.close()
        self.tmp.cleanup()

    # --- namespaces and objects ----------------------------------------------------------------

    def create_namespace(self, name: str, restricted: bool = True) -> None:
        """A namespace with Pod Security `restricted` enforced (what a platform team sets)."""
        labels = {"pod-security.kubernetes.io/enforce": "restricted"} if restricted else {}
        self.core.create_namespace({"metadata": {"name": name, "labels": labels}})
        # The controller-manager's ServiceAccount controller makes `default`; Jobs need it.
        self.wait_for(
            f"ServiceAccount default in {name}",
            lambda: self.core.list_namespaced_service_account(name).items,
        )

    def create_s3_secret(self, ns: str, name: str, s3) -> None:  # type: ignore[no-untyped-def]
        self.core.create_namespaced_secret(ns, s3.secret(name))

    def sweep(self, ns: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def status(self, ns: str, name: str) -> dict:
        return self.sweep(ns, name).get("status") or {}

    def rayjobs(self, ns: str, sweep: str) -> list[dict]:
        selector = f"polypythia.io/sweep={sweep}"
        found = self.custom.list_namespaced_custom_object(
            "ray.io", "v1", ns, "rayjobs", label_selector=selector
        )
        return found["items"]

    def raw(self, obj: object) -> dict:
        """A typed client object as the API server's JSON."""
        return self.api.sanitize_for_serialization(obj)

    def eval_jobs(self, ns: str, sweep: str) -> list[dict]:
        selector = f"polypythia.io/sweep={sweep},app.kubernetes.io/component=evaluator"
        return [
            self.raw(j) for j in self.batch.list_namespaced_job(ns, label_selector=selector).items
        ]

    def events(self, ns: str, name: str) -> list[dict]:
        """Events about the sweep `name`."""
        selector = f"involvedObject.name={name},involvedObject.kind=PolyPythiaSweep"
        return [
            self.raw(e) for e in self.core.list_namespaced_event(ns, field_selector=selector).items
        ]

    def play_kubelet(self, ns: str, selector: str) -> int:
        """Mark matching Pending pods Running and Ready (there is no kubelet); returns how many."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        count = 0
        for pod in self.core.list_namespaced_pod(ns, label_selector=selector).items:
            if pod.status.phase == "Running":
                continue
            containers = [c.name for c in pod.spec.containers]
            ready = [{"type": t, "status": "True", "lastTransitionTime": now} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]  # fmt: skip
            status = {
                "phase": "Running",
                "podIP": f"10.244.0.{10 + count}",
                "podIPs": [{"ip": f"10.244.0.{10 + count}"}],
                "hostIP": "10.0.0.2",
                "startTime": now,
                "conditions": ready,
                "containerStatuses": [
                    {
                        "name": name,
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "image": pod.spec.containers[i].image,
                        "imageID": "",
                        "state": {"running": {"startedAt": now}},
                    }
                    for i, name in enumerate(containers)
                ],
            }
            self.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": status})
            count += 1
        return count

    # --- the operator, as the chart's ServiceAccount ------------------------------------------------

    def service_account_kubeconfig(self, sa: str, ns: str) -> Path:
        """A kubeconfig holding a TokenRequest token for `sa` (what a pod's projected token is)."""
        token = self.core.create_namespaced_service_account_token(
            sa, ns, {"spec": {"expirationSeconds": 7200}}
        ).status.token
        admin = yaml.safe_load(KUBECONFIG.read_text())
        cluster = admin["clusters"][0]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": sa, "context": {"cluster": cluster["name"], "user": sa}}],
            "current-context": sa,
        }
        path = Path(self.tmp.name) / f"{ns}-{sa}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def start_operator(self, kubeconfig: Path, s3_url: str, poll_interval: float = 1.0) -> None:
        self.operator_kubeconfig, self.s3_url = kubeconfig, s3_url
        env = operator_env(
            kubeconfig,
            s3_url,
            POLYPYTHIA_TRAINER_IMAGE=TRAINER_IMAGE,
            POLYPYTHIA_EVAL_IMAGE=EVAL_IMAGE,
            POLYPYTHIA_OPERATOR_NAMESPACE=RELEASE_NS,
        )
        # The operator's own storage credentials (in a cluster: a Secret in its namespace or
        # workload identity); its storage preflight reads the sweeps' data paths with them.
        s3 = shared_s3_server()
        env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
        self.spawn_operator(env, poll_interval)

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 120.0) -> object:
        return wait_for(what, check, timeout, self.operator_log)


def sweep_manifest(name: str = "sweep-tiny.yaml") -> dict:
    return yaml.safe_load((ROOT / "manifests" / "examples" / name).read_text())
