"""Pieces shared by the RayJob and eval Job pod templates: credentials, security, placement.

Every pod the operator makes runs as the user its image was built for (the `USER` line of
the `trainer` and `eval` targets of the root `Dockerfile`; tests/images checks both), writes
only to `emptyDir` volumes it owns, and mounts no ServiceAccount token unless the sweep
names a ServiceAccount (workload identity: IRSA, GKE Workload Identity).
"""

from __future__ import annotations

from dataclasses import dataclass

from polypythia.spec import Sweep

ENDPOINT_ENV = "POLYPYTHIA_S3_ENDPOINT"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
CACHE_VOLUME = "cache"
TMP_VOLUME = "tmp"
CACHE_SIZE_LIMIT = "20Gi"


@dataclass(frozen=True)
class ImageUser:
    """Who an image runs as, and where it keeps caches (HOME/.cache, an emptyDir here)."""

    uid: int
    gid: int
    home: str

    @property
    def cache(self) -> str:
        return f"{self.home}/.cache"


# `USER 1000:100` (Ray's `ray` user, group `users`) in the Dockerfile's `trainer` target.
TRAINER_USER = ImageUser(1000, 100, "/home/ray")
# `USER 10001:10001` in the Dockerfile's `eval` target.
EVAL_USER = ImageUser(10001, 10001, "/home/polypythia")


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


def wandb_env(sweep: Sweep) -> list[dict]:
    """``WANDB_API_KEY`` by reference to ``spec.metrics.wandbSecretName`` (trainer and
    evaluator both log to the run's W&B run), nothing when unset."""
    secret = (sweep.spec.get("metrics") or {}).get("wandbSecretName")
    if not secret:
        return []
    key = "WANDB_API_KEY"
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]


def cache_env(user: ImageUser) -> list[dict]:
    """Caches point into the emptyDir mounted at HOME/.cache (the image's own ENV agrees)."""
    return [
        {"name": "HOME", "value": user.home},
        {"name": "XDG_CACHE_HOME", "value": user.cache},
        {"name": "HF_HOME", "value": f"{user.cache}/huggingface"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{user.cache}/torch_extensions"},
        {"name": "TRITON_CACHE_DIR", "value": f"{user.cache}/triton"},
        {"name": "MPLCONFIGDIR", "value": f"{user.cache}/matplotlib"},
    ]


def cache_volumes(user: ImageUser) -> tuple[list[dict], list[dict]]:
    """emptyDir volumes for HOME/.cache and /tmp, and their mounts."""
    volumes = [
        {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": CACHE_SIZE_LIMIT}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    mounts = [
        {"name": CACHE_VOLUME, "mountPath": user.cache},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    return volumes, mounts


def run_env(
    sweep: Sweep, user: ImageUser, storage_endpoint: str | None, own: list[dict] | None = None
) -> list[dict]:
    """A run's pod environment: storage, the image user's caches, the pod's ``own``
    variables, then W&B (trainer and evaluator alike)."""
    return storage_env(sweep, storage_endpoint) + cache_env(user) + (own or []) + wandb_env(sweep)


def image_container(
    name: str, image: str, fields: dict, resources: dict, mounts: list[dict]
) -> dict:
    """A container of one of the project's images, unprivileged, pulled when absent;
    ``fields`` (command, args, env) stand between the pull policy and the resources."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **fields,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }


def image_pod(
    user: ImageUser, container: dict, volumes: list[dict], settings: dict, *, head: bool, **fields
) -> dict:
    """The pod spec of one container run as the image's ``user``, with ``fields`` (restart
    policy, placement) and the cluster's pod ``settings`` (see :func:`apply_pod_settings`)."""
    spec = {
        "securityContext": pod_security(user),
        "containers": [container],
        "volumes": list(volumes),
        **fields,
    }
    return apply_pod_settings(spec, settings, head=head)


def pod_security(user: ImageUser) -> dict:
    """Non-root as the image's own user; fsGroup makes the emptyDir volumes writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user.uid,
        "runAsGroup": user.gid,
        "fsGroup": user.gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict:
    """The Pod Security `restricted` profile's container fields, and a read-only root
    filesystem: every write goes to an emptyDir (HOME/.cache, /tmp) or to object storage
    (tests/images runs each image this way)."""
    return {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


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


def compute(cpu: int | str, memory: str | None, gpus: int, gpu_resource: str | None = None) -> dict:
    """Requests equal limits (Guaranteed QoS for training pods); GPUs only as limits+requests.

    ``gpu_resource`` names the extended resource (`nvidia.com/gpu`, `amd.com/gpu`, a MIG
    profile such as `nvidia.com/mig-1g.10gb`)."""
    amounts: dict = {"cpu": str(cpu)}
    if memory:
        amounts["memory"] = memory
    if gpus:
        amounts[gpu_resource or DEFAULT_GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_settings(sweep: Sweep, defaults: dict | None) -> dict:
    """``spec.pods`` of the sweep over the operator's defaults (chart value `runPods`).

    Scalars and maps: the sweep's value wins. Lists of named things (env, volumes,
    volumeMounts, imagePullSecrets): the defaults first, then the sweep's, one per name."""
    base = dict(defaults or {})
    own = sweep.spec.get("pods") or {}
    out = {**base, **{k: v for k, v in own.items() if k not in _LISTS}}
    for key in _LISTS:
        merged: dict[str, object] = {}
        for item in list(base.get(key) or []) + list(own.get(key) or []):
            merged[item if isinstance(item, str) else item.get("name", str(item))] = item
        if merged:
            out[key] = list(merged.values())
    head = {**(base.get("head") or {}), **(own.get("head") or {})}
    if head:
        out["head"] = head
    return out


_LISTS = ("env", "volumes", "volumeMounts", "imagePullSecrets")


def apply_pod_settings(pod_spec: dict, settings: dict, *, head: bool = False) -> dict:
    """Add the pod-template knobs to a pod spec (in place; returned for chaining).

    ``head``: the Ray head and the submitter run no GPU work, so they take the
    `head` placement (CPU nodes) instead of the GPU workers' affinity and spread."""
    secrets = settings.get("imagePullSecrets") or []
    if secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    account = settings.get("serviceAccountName")
    if account:
        pod_spec["serviceAccountName"] = account
        pod_spec["automountServiceAccountToken"] = True
    else:
        pod_spec["automountServiceAccountToken"] = False
    if head:
        placed = settings.get("head") or {}
        for key in ("nodeSelector", "tolerations", "affinity"):
            if placed.get(key):
                pod_spec[key] = placed[key]
    else:
        for key in ("affinity", "topologySpreadConstraints"):
            if settings.get(key):
                pod_spec[key] = settings[key]
    if settings.get("volumes"):
        pod_spec["volumes"] = list(pod_spec.get("volumes") or []) + list(settings["volumes"])
    for container in pod_spec.get("containers") or []:
        if settings.get("env"):
            container["env"] = list(container.get("env") or []) + list(settings["env"])
        if settings.get("volumeMounts"):
            container["volumeMounts"] = list(container.get("volumeMounts") or []) + list(
                settings["volumeMounts"]
            )
    return pod_spec
