"""Shared data and helpers of the chart tests: scenarios, stand-ins, rendering.

The chart reads three files that other parts of the project write
(`files/operator-rbac-rules.yaml`, `files/prometheus-rules.yaml`,
`files/grafana-dashboard.json`). The tests render a copy of the chart; a file that
has not been written yet is replaced in the copy (never in the repository) by a small
stand-in of the same format, so the chart's own logic is still tested.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "polypythia"
sys.path.insert(0, str(REPO / "tools"))

KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
RELEASE = "pp"
NAMESPACE = "polypythia"

STAND_INS = {
    "files/operator-rbac-rules.yaml": """\
- apiGroups: [polypythia.io]
  resources: [polypythiasweeps]
  verbs: [get, list, watch, patch]
- apiGroups: [polypythia.io]
  resources: [polypythiasweeps/status]
  verbs: [get, patch]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
""",
    "files/prometheus-rules.yaml": """\
groups:
  - name: polypythia.stand-in
    rules:
      - alert: PolyPythiaStandIn
        expr: sum by (sweep) (increase(polypythia_spikes_total[15m])) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Loss spike in sweep {{ $labels.sweep }}"
""",
    "files/grafana-dashboard.json": '{"title": "PolyPythias", "uid": "polypythia", "panels": []}\n',
}

# Scenarios that together set every value of values.yaml to something other than its
# default (test_every_value_is_exercised proves it).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespace": "research", "nameOverride": "pps"},
    "monitoring": {
        "metrics": {
            "service": {"type": "NodePort", "port": 9100, "annotations": {"team": "ml"}},
            "serviceMonitor": {
                "enabled": True,
                "interval": "15s",
                "scrapeTimeout": "5s",
                "labels": {"release": "kube-prometheus-stack"},
            },
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "runbookBaseUrl": "https://github.com/polypythia/polypythia/blob/main/docs/runbook.md",
                "operatorHealth": {"for": "10m"},
            },
            "dashboard": {
                "namespace": "monitoring",
                "labels": {"team": "ml"},
                "annotations": {"grafana_folder": "PolyPythias"},
            },
        }
    },
    "gpu-cluster": {
        "rayJobs": {"clusterTtlSeconds": 60},
        "images": {
            "submitter": {
                "repository": "rayproject/ray",
                "tag": "2.60.0-py311",
                "digest": "sha256:" + "d" * 64,
            }
        },  # fmt: skip
        "runPods": {
            "imagePullSecrets": ["regcred"],
            "serviceAccountName": "trainer-irsa",
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "gpu", "operator": "In", "values": ["h100"]}
                                ]
                            }
                        ]
                    }
                }
            },  # fmt: skip
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }  # fmt: skip
            ],
            "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
            "volumes": [{"name": "pile", "persistentVolumeClaim": {"claimName": "pile"}}],
            "volumeMounts": [{"name": "pile", "mountPath": "/data"}],
            "head": {
                "nodeSelector": {"pool": "cpu"},
                "tolerations": [{"key": "cpu-only", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {
                    "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}
                },
            },
        },
        "rbac": {"sweepSecretNamespaces": ["research", "team-b"], "aggregateToDefaultRoles": False},
        "metrics": {
            "serviceMonitor": {"enabled": True, "honorLabels": False},
            "prometheusRule": {"enabled": True, "operatorHealth": {"enabled": False}},
        },
    },
    "workload-identity": {
        "storage": {"endpoint": "s3.amazonaws.com", "bucket": "polypythias"},
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pp-operator"}
        },
        "runPods": {"serviceAccountName": "polypythia-run"},
        "runServiceAccounts": {
            "namespaces": ["research", "team-b"],
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pp-run"},
        },
    },
    "existing-account": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "research-operator"},
        "metrics": {"dashboard": {"enabled": False}},
    },
    "storage": {
        "storage": {
            "endpoint": "http://minio.minio.svc:9000",
            "bucket": "polypythias",
            "secure": False,
            "region": "eu-west-1",
            "credentialsSecret": {
                "name": "polypythia-s3",
                "accessKeyIdKey": "accesskey",
                "secretAccessKeyKey": "secretkey",
            },
        },
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pp"}},
        "images": {
            "operator": {"digest": "sha256:" + "c" * 64},
            "trainer": {"tag": "2024.1"},
        },
    },
    "pinned-images": {
        "fullnameOverride": "polypythia",
        "images": {
            "operator": {"repository": "registry.example:5000/ml/op", "tag": "1.2.3", "digest": ""},
            "trainer": {"repository": "ml/trainer", "tag": "", "digest": "sha256:" + "a" * 64},
            "eval": {"repository": "ml/eval", "tag": "cu124", "digest": "sha256:" + "b" * 64},
            "pullPolicy": "Always",
            "pullSecrets": ["regcred"],
        },
    },
    "scheduling": {
        "operator": {
            "metricsPort": 9000,
            "livenessPort": 9090,
            "livenessProbe": {
                "initialDelaySeconds": 30,
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 6,
            },
            "logFormat": "json",
            "extraArgs": ["--poll-interval", "15"],
            "extraEnv": [{"name": "POLYPYTHIA_POLL_INTERVAL", "value": "20"}],
            "resources": {
                "requests": {"cpu": "250m", "memory": "512Mi"},
                "limits": {"cpu": 1, "memory": "1Gi"},
            },
            "podSecurityContext": {
                "runAsNonRoot": True,
                "runAsUser": 2000,
                "runAsGroup": 2000,
                "fsGroup": 2000,
                "seccompProfile": {"type": "Localhost", "localhostProfile": "operator.json"},
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "privileged": False,
                "capabilities": {"drop": ["ALL", "NET_RAW"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "operator.json"},
            },
            "podAnnotations": {"example.com/owner": "ml-platform"},
            "podLabels": {"team": "ml"},
            "nodeSelector": {"node-pool": "system"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}
            ],  # fmt: skip
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/arch",
                                        "operator": "In",
                                        "values": ["amd64"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },  # fmt: skip
            "priorityClassName": "system-cluster-critical",
        }
    },
}


def render_docs(chart, values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template pp -n polypythia` would print."""
    return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def render_objects(chart, values: dict[str, Any]) -> list[dict]:
    """Every Kubernetes object the chart renders (templates only; the CRD is separate)."""
    objects = []
    for path, text in sorted(render_docs(chart, values).items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
