"""values.schema.json turns a wrong value into an error before anything is rendered."""

from __future__ import annotations

import helm_python
import pytest
from chartkit import NAMESPACE, SCENARIOS

WRONG = {
    "unknown top-level key": ({"replicaCount": 2}, "replicaCount"),
    "unknown nested key": ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
    "string for a boolean": ({"rbac": {"create": "yes"}}, "create"),
    "port out of range": ({"operator": {"metricsPort": 70000}}, "metricsPort"),
    "port as a string": ({"operator": {"livenessPort": "8080"}}, "livenessPort"),
    "namespace not a DNS label": ({"watchNamespace": "Research_Team"}, "watchNamespace"),
    "bad pull policy": ({"images": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "digest without algorithm": ({"images": {"operator": {"digest": "abc123"}}}, "digest"),
    "tag with a colon": ({"images": {"eval": {"tag": "v1:2"}}}, "tag"),
    "endpoint with a path": ({"storage": {"endpoint": "http://minio:9000/bucket"}}, "endpoint"),
    "bucket with capitals": ({"storage": {"bucket": "PolyPythias"}}, "bucket"),
    "root container": ({"operator": {"securityContext": {"runAsNonRoot": False}}}, "runAsNonRoot"),
    "privilege escalation": (
        {"operator": {"securityContext": {"allowPrivilegeEscalation": True}}},
        "allowPrivilegeEscalation",
    ),
    "writable root filesystem": (
        {"operator": {"securityContext": {"readOnlyRootFilesystem": False}}},
        "readOnlyRootFilesystem",
    ),
    "capabilities not dropped": (
        {"operator": {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}},
        "drop",
    ),
    "bad quantity": ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    "bad scrape interval": (
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        "interval",
    ),
    "label value not a string": (
        {"metrics": {"prometheusRule": {"labels": {"release": 1}}}},
        "release",
    ),
    "env without name": ({"operator": {"extraEnv": [{"value": "x"}]}}, "extraEnv"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_wrong_value_is_rejected_naming_the_key(chart, case: str) -> None:
    values, key = WRONG[case]
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert key in str(caught.value)
    with pytest.raises(helm_python.HelmError):
        chart.render(values, name="pp", namespace=NAMESPACE)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_documented_scenarios_pass_the_schema(chart, scenario: str) -> None:
    chart.validate_schema(SCENARIOS[scenario])
