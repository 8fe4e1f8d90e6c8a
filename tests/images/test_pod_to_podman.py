"""The pod-spec -> run-flags translation the image tests rely on (fast: no engine needed)."""

from __future__ import annotations

import json

import pytest
from pod_to_podman import PodSpecError, run_args

POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100},
    "containers": [
        {
            "name": "main",
            "image": "example/app:1.0",
            "command": ["polypythia"],
            "args": ["evaluate", "s3://b/run"],
            "workingDir": "/home/app",
            "env": [
                {"name": "PLAIN", "value": "1"},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "id"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            ],
            "securityContext": {
                "runAsUser": 2000,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "dshm", "mountPath": "/dev/shm"},
            ],
        }
    ],
    "volumes": [
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
    ],
}
SECRETS = {"creds": {"id": "AKIA"}}
FIELDS = {"metadata.namespace": "ns1"}


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_every_supported_field_becomes_its_flag() -> None:
    argv = run_args(POD, "main", secrets=SECRETS, fields=FIELDS)
    image_at = argv.index("example/app:1.0")
    assert argv[image_at + 1 :] == ["evaluate", "s3://b/run"]
    assert _pairs(argv, "--user") == ["2000:100"]  # the container's uid wins over the pod's
    assert _pairs(argv, "--group-add") == ["100"]
    assert "--read-only" in argv and "--read-only-tmpfs=false" in argv
    assert _pairs(argv, "--security-opt") == ["no-new-privileges"]
    assert _pairs(argv, "--cap-drop") == ["ALL"] and _pairs(argv, "--cap-add") == [
        "NET_BIND_SERVICE"
    ]
    assert _pairs(argv, "--tmpfs") == ["/tmp:rw,exec,mode=0777,size=256m"]
    assert "--shm-size=2g" in argv
    assert _pairs(argv, "--env") == ["PLAIN=1", "KEY=AKIA", "NS=ns1"]
    assert _pairs(argv, "--workdir") == ["/home/app"]
    assert json.loads(_pairs(argv, "--entrypoint")[0]) == ["polypythia"]
    assert argv.index("--user") < image_at


def test_overrides_and_docker() -> None:
    argv = run_args(
        POD, "main", secrets=SECRETS, fields=FIELDS, command=["python"], args=["-V"],
        extra=["--network", "host"], engine="docker",
    )  # fmt: skip
    assert argv[-2:] == ["example/app:1.0", "-V"]
    assert json.loads(_pairs(argv, "--entrypoint")[0]) == ["python"]
    assert "--read-only" in argv and "--read-only-tmpfs=false" not in argv
    assert argv[argv.index("--network") + 1] == "host"


def test_the_root_filesystem_is_read_only_only_where_the_spec_says_so() -> None:
    pod = {"containers": [{"name": "c", "image": "i"}]}
    assert "--read-only" not in run_args(pod, "c")
    pod["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True}
    assert "--read-only" in run_args(pod, "c")
    assert run_args(pod, "c")[-1] == "i"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["volumes"].__setitem__(0, {"name": "tmp", "hostPath": {"path": "/x"}}),
         "volumes tmp: only emptyDir is supported, got ['hostPath']"),
        (lambda p: p["containers"][0]["securityContext"].__setitem__("privileged", True),
         "privileged"),
        (lambda p: p["containers"][0]["securityContext"].__setitem__("runAsUser", 0),
         "runAsNonRoot with runAsUser 0"),
        (lambda p: p["containers"][0].__setitem__("envFrom", [{"secretRef": {"name": "s"}}]),
         "envFrom"),
        (lambda p: p["volumes"].pop(0), "volumeMounts tmp: no volume of that name"),
        (lambda p: p["volumes"].__setitem__(0, {"name": "tmp", "emptyDir": {"sizeLimit": "1G"}}),
         "sizeLimit: '1G'"),
    ],
)  # fmt: skip
def test_what_cannot_be_reproduced_is_an_error(change, message: str) -> None:
    pod = json.loads(json.dumps(POD))
    change(pod)
    with pytest.raises(PodSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_args(pod, "main", secrets=SECRETS, fields=FIELDS)


def test_missing_secret_field_or_container_is_named() -> None:
    with pytest.raises(PodSpecError, match="env KEY: Secret 'creds' key 'id' was not given"):
        run_args(POD, "main", fields=FIELDS)
    with pytest.raises(PodSpecError, match="env NS: field 'metadata.namespace' was not given"):
        run_args(POD, "main", secrets=SECRETS)
    with pytest.raises(PodSpecError, match=r"no container 'other', found \['main'\]"):
        run_args(POD, "other")
