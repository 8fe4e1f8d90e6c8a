"""Pieces shared by the RayJob and eval Job pod templates: credentials, security, placement."""

from __future__ import annotations

from polypythia.spec import Sweep

ENDPOINT_ENV = "POLYPYTHIA_S3_ENDPOINT"


def storage_env(sweep: Sweep, default_endpoint: str | None) -> list[dict]:
    """S3 credentials by reference to the sweep's Secret (never inline) plus the endpoint."""
    storage = sweep.spec.get("storage", {})
    env: list[dict] = []
    secret = storage.get("secretName")
    if secret:
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    endpoint = storage.get("endpoint") or default_endpoint
    if endpoint:
        env.append({"name": ENDPOINT_ENV, "value": endpoint})
    env.append({"name": "AWS_DEFAULT_REGION", "value": storage.get("region", "us-east-1")})
    return env


def pod_security() -> dict:
    """Non-root, no privilege escalation: the images run as user 1000."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def placement(resources: dict) -> dict:
    """nodeSelector / tolerations / priorityClassName of a pod spec, where set."""
    out: dict = {}
    if resources.get("nodeSelector"):
        out["nodeSelector"] = dict(resources["nodeSelector"])
    if resources.get("tolerations"):
        out["tolerations"] = [dict(t) for t in resources["tolerations"]]
    if resources.get("priorityClassName"):
        out["priorityClassName"] = resources["priorityClassName"]
    return out


def compute(cpu: int | str, memory: str | None, gpus: int) -> dict:
    """Requests equal limits (Guaranteed QoS for training pods); GPUs only as limits+requests."""
    amounts: dict = {"cpu": str(cpu)}
    if memory:
        amounts["memory"] = memory
    if gpus:
        amounts["nvidia.com/gpu"] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}
