"""Custom resources validate against their CRDs: ServiceMonitor and PrometheusRule against
the prometheus-operator fields (schemas/), the alert rules with promtool, and the
example sweeps against the project CRD."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chartkit import REPO, SCENARIOS, one, render_objects
from check_structural import unknown_fields
from jsonschema import Draft4Validator, Draft7Validator

from polypythia.crd import apply_defaults

SCHEMAS = Path(__file__).parent / "schemas"
CRD_FILE = REPO / "crds" / "polypythiasweeps.polypythia.io.yaml"


def _validator(kind: str) -> Draft7Validator:
    schema = json.loads((SCHEMAS / f"monitoring.coreos.com_v1_{kind.lower()}.json").read_text())
    return Draft7Validator(schema)


def _messages(validator, obj: dict) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_monitoring_objects_match_the_prometheus_operator_crd(chart, kind: str) -> None:
    obj = one(render_objects(chart, SCENARIOS["monitoring"]), kind)
    assert _messages(_validator(kind), obj) == []


def test_monitoring_schemas_catch_mistakes(chart) -> None:
    monitor = one(render_objects(chart, SCENARIOS["monitoring"]), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "30 s"
    monitor["spec"]["endpoint"] = []
    assert len(_messages(_validator("ServiceMonitor"), monitor)) == 2
    rule = one(render_objects(chart, SCENARIOS["monitoring"]), "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    assert _messages(_validator("PrometheusRule"), rule)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed "
                    "(apt-get install prometheus)")  # fmt: skip
def test_rendered_alert_rules_pass_promtool(chart, tmp_path) -> None:
    rule = one(render_objects(chart, SCENARIOS["monitoring"]), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def _sweep_validator() -> tuple[dict, Draft4Validator]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = version["schema"]["openAPIV3Schema"]
    return crd, Draft4Validator(schema)


def _sweep_errors(doc: dict) -> list[str]:
    crd, validator = _sweep_validator()
    schema = validator.schema
    defaulted = apply_defaults(schema, json.loads(json.dumps(doc)))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(defaulted)]
    errors += [f"{p}: unknown field" for p in unknown_fields(schema, doc, "")
               if not p.startswith(".metadata")]  # fmt: skip
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    if doc.get("kind") != kind or not str(doc.get("apiVersion", "")).startswith(group + "/"):
        errors.append(f"not a {kind}")
    return errors


EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_sweeps_validate_against_the_project_crd(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert _sweep_errors(doc) == []


def test_sweep_check_rejects_a_wrong_sweep() -> None:
    assert EXAMPLES, "manifests/examples/ holds no sweep"
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc["spec"]["maxRetries"] = "three"
    doc["spec"]["retries"] = 3
    errors = _sweep_errors(doc)
    assert any("maxRetries" in e for e in errors) and any("retries: unknown" in e for e in errors)
