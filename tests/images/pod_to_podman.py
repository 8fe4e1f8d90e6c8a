"""Turn one container of a rendered Kubernetes pod spec into `podman run` / `docker run`
arguments, so the image tests start each image the way the operator's pods start it.

Kubernetes field -> run flag:
  runAsUser / runAsGroup (container over pod)  -> --user UID:GID
  fsGroup, supplementalGroups                  -> --group-add
  readOnlyRootFilesystem                       -> --read-only (no /tmp tmpfs: a pod gets none)
  capabilities.drop / add                      -> --cap-drop / --cap-add
  allowPrivilegeEscalation: false              -> --security-opt no-new-privileges
  emptyDir mounted at /dev/shm (medium Memory) -> --shm-size
  other emptyDir mounts                        -> --tmpfs PATH (mode 0777, as kubelet makes them)
  env value / secretKeyRef / fieldRef          -> --env (secrets and fields given by the caller)
  command / args / workingDir                  -> --entrypoint / arguments / --workdir
Anything else a test would silently get wrong (hostPath, envFrom, privileged...) is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

SHM_PATH = "/dev/shm"
DEFAULT_SHM = "1g"


class PodSpecError(ValueError):
    """A pod spec field this translation cannot reproduce faithfully."""


def find_container(pod_spec: dict, name: str) -> dict:
    """The container called ``name`` in ``pod_spec``; the error lists the names there are."""
    containers = pod_spec.get("containers") or []
    for container in containers:
        if container.get("name") == name:
            return container
    names = [c.get("name") for c in containers]
    raise PodSpecError(f"containers: no container {name!r}, found {names}")


def security(pod_spec: dict, container: dict) -> dict:
    """The effective security settings: the container's own fields win over the pod's."""
    merged = dict(pod_spec.get("securityContext") or {})
    merged.update(container.get("securityContext") or {})
    return merged


def _k8s_quantity_to_podman(quantity: str) -> str:
    """`256Mi` -> `256m`, `2Gi` -> `2g` (podman's binary units); plain bytes pass through."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t"}
    for suffix, short in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + short
    if quantity.isdigit():
        return quantity
    raise PodSpecError(f"sizeLimit: {quantity!r} is not a binary quantity (Ki, Mi, Gi, Ti)")


def _env_flags(
    container: dict, secrets: Mapping[str, Mapping[str, str]], fields: Mapping[str, str]
) -> list[str]:
    if container.get("envFrom"):
        raise PodSpecError("envFrom: not supported (list variables under env)")
    out = []
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            value = str(item["value"])
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            try:
                value = secrets[ref["name"]][ref["key"]]
            except KeyError:
                raise PodSpecError(
                    f"env {name}: Secret {ref['name']!r} key {ref['key']!r} was not given"
                ) from None
        elif "fieldRef" in (item.get("valueFrom") or {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise PodSpecError(f"env {name}: field {path!r} was not given")
            value = fields[path]
        else:
            raise PodSpecError(f"env {name}: only value, secretKeyRef and fieldRef are supported")
        out += ["--env", f"{name}={value}"]
    return out


def _volume_flags(pod_spec: dict, container: dict) -> list[str]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    out = []
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodSpecError(f"volumeMounts {mount['name']}: no volume of that name")
        if "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise PodSpecError(f"volumes {mount['name']}: only emptyDir is supported, got {kinds}")
        empty = volume["emptyDir"] or {}
        size = empty.get("sizeLimit")
        if mount["mountPath"] == SHM_PATH:
            out += [f"--shm-size={_k8s_quantity_to_podman(size) if size else DEFAULT_SHM}"]
            continue
        options = ["rw", "exec", "mode=0777"]
        if size:
            options.append(f"size={_k8s_quantity_to_podman(size)}")
        out += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]
    return out


def _user_flags(sec: dict, engine: str) -> list[str]:
    if sec.get("privileged"):
        raise PodSpecError("securityContext.privileged: the images must not need it")
    uid, gid = sec.get("runAsUser"), sec.get("runAsGroup")
    if sec.get("runAsNonRoot") and uid == 0:
        raise PodSpecError("securityContext: runAsNonRoot with runAsUser 0")
    out = []
    if uid is not None:
        out += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    groups = list(sec.get("supplementalGroups") or [])
    if sec.get("fsGroup") is not None:
        groups.append(sec["fsGroup"])
    for group in dict.fromkeys(groups):
        out += ["--group-add", str(group)]
    if sec.get("readOnlyRootFilesystem"):
        out.append("--read-only")
        if engine == "podman":  # podman alone adds /tmp, /run tmpfs to --read-only
            out.append("--read-only-tmpfs=false")
    if sec.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    caps = sec.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        out += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        out += ["--cap-add", cap]
    return out


def run_args(
    pod_spec: dict,
    container_name: str,
    *,
    image: str | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    fields: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    engine: str = "podman",
) -> list[str]:
    """Arguments after `podman` for running ``container_name`` of ``pod_spec`` once.

    ``command``/``args`` replace the container's (as `kubectl debug` would); ``extra``
    goes before the image (network, bind mounts of test inputs); ``engine``: `podman`
    or `docker` (the program name)."""
    container = find_container(pod_spec, container_name)
    sec = security(pod_spec, container)
    out = ["run", "--rm", *_user_flags(sec, engine), *_volume_flags(pod_spec, container)]
    out += _env_flags(container, secrets or {}, fields or {})
    if container.get("workingDir"):
        out += ["--workdir", container["workingDir"]]
    entry = list(command) if command is not None else container.get("command")
    if entry:
        out += ["--entrypoint", json.dumps(entry)]
    out += list(extra)
    out.append(image or container["image"])
    out += list(args if args is not None else container.get("args") or [])
    return out
