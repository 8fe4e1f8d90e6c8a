"""The project CRD is structural, and the chart carries exactly the file in crds/."""

from __future__ import annotations

import copy

import pytest
import yaml
from chartkit import CHART, REPO
from check_structural import check_files, crd_errors, main, schema_errors

CRD_FILE = REPO / "crds" / "polypythiasweeps.polypythia.io.yaml"


def _crd() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def _spec_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_project_crd_is_structural() -> None:
    assert check_files([CRD_FILE]) == []
    assert main([str(CRD_FILE)]) == 0


def test_chart_carries_the_same_crd_file() -> None:
    (chart_copy,) = (CHART / "crds").glob("*.yaml")
    assert chart_copy.name == CRD_FILE.name
    assert chart_copy.read_bytes() == CRD_FILE.read_bytes(), (
        "charts/polypythia/crds/ differs from crds/: run `python tools/sync_chart_crd.py`"
    )


def test_package_carries_the_same_crd_file() -> None:
    """An installed wheel validates sweeps with this copy (tests/core/test_wheel.py)."""
    copy = REPO / "operator" / "polypythia" / "crds" / CRD_FILE.name
    assert copy.read_bytes() == CRD_FILE.read_bytes(), (
        "operator/polypythia/crds/ differs from crds/: run `python tools/sync_chart_crd.py`"
    )


def test_chart_loads_the_crd_for_helm_install(chart) -> None:
    (entry,) = chart.crds
    assert yaml.safe_load(entry["data"]) == _crd()


def _broken(mutate) -> list[str]:
    crd = _crd()
    mutate(crd)
    return crd_errors(crd)


NEGATIVE = {
    "untyped field": (
        lambda c: _spec_schema(c)["properties"].update(loose={"description": "no type"}),
        "spec.properties.loose.type: missing",
    ),
    "$ref": (
        lambda c: _spec_schema(c)["properties"].update(ref={"$ref": "#/definitions/x"}),
        "ref.$ref: not allowed",
    ),
    "additionalProperties false": (
        lambda c: _spec_schema(c).update(additionalProperties=False),
        "additionalProperties: cannot be false",
    ),
    "array without items": (
        lambda c: _spec_schema(c)["properties"].update(tags={"type": "array"}),
        "tags.items: an array must declare its items",
    ),
    "preserve-unknown-fields false": (
        lambda c: _spec_schema(c).update({"x-kubernetes-preserve-unknown-fields": False}),
        "x-kubernetes-preserve-unknown-fields: must be true or unset",
    ),
    "int-or-string with a type": (
        lambda c: _spec_schema(c)["properties"].update(
            port={"type": "string", "x-kubernetes-int-or-string": True}
        ),
        "port.type: must be unset with x-kubernetes-int-or-string",
    ),
    "embedded resource not an object": (
        lambda c: _spec_schema(c)["properties"].update(
            template={"type": "string", "x-kubernetes-embedded-resource": True}
        ),
        "x-kubernetes-embedded-resource: needs type object",
    ),
    "map list key not required": (
        lambda c: _spec_schema(c)["properties"].update(
            pools={
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            }
        ),
        "'name' must be required or defaulted",
    ),
    "set of objects": (
        lambda c: _spec_schema(c)["properties"].update(
            pools={
                "type": "array",
                "x-kubernetes-list-type": "set",
                "items": {"type": "object", "properties": {"n": {"type": "string"}}},
            }
        ),  # fmt: skip
        "set needs scalar or atomic items",
    ),
    "list type on an object": (
        lambda c: _spec_schema(c).update({"x-kubernetes-list-type": "atomic"}),
        "only allowed with type array",
    ),
    "default of the wrong type": (
        lambda c: _spec_schema(c)["properties"]["maxRetries"].update(default="three"),
        "maxRetries.default: 'three' is not of type 'integer'",
    ),
    "default below the minimum": (
        lambda c: _spec_schema(c)["properties"]["maxRetries"].update(default=-1),
        "maxRetries.default: -1 is less than the minimum",
    ),
    "default with a pruned field": (
        lambda c: _spec_schema(c)["properties"]["training"].update(default={"stepz": 5}),
        "default.stepz is not in the schema",
    ),
    "field only inside anyOf": (
        lambda c: _spec_schema(c).update(anyOf=[{"properties": {"ghost": {"type": "string"}}}]),
        "anyOf[0].properties.ghost: must also be declared outside anyOf",
    ),
    "type inside anyOf": (
        lambda c: _spec_schema(c).update(anyOf=[{"type": "object"}]),
        "anyOf[0].type: not allowed inside",
    ),
    "misspelt keyword": (
        lambda c: _spec_schema(c)["properties"]["maxRetries"].update(minimun=0),
        "maxRetries.minimun: unknown schema keyword",
    ),
    "required field that does not exist": (
        lambda c: _spec_schema(c)["required"].append("sizez"),
        "'sizez' is not among the properties",
    ),
    "enum value of the wrong type": (
        lambda c: _spec_schema(c)["properties"]["maxRetries"].update(enum=[1, "two"]),
        "'two' is not of type integer",
    ),
    "unknown format": (
        lambda c: _spec_schema(c)["properties"].update(when={"type": "string", "format": "when"}),
        "format: 'when' is not a format",
    ),
    "metadata beyond name": (
        lambda c: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"].update(
            metadata={"type": "object", "properties": {"labels": {"type": "object"}}}
        ),
        "only name and generateName may be restricted",
    ),
    "printer column to a missing field": (
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"].append(
            {"name": "X", "type": "integer", "jsonPath": ".status.nothingHere"}
        ),
        ".status.nothingHere is not a field of the schema",
    ),
    "wrong name": (
        lambda c: c["metadata"].update(name="sweeps.polypythia.io"),
        "metadata.name: must be <plural>.<group>",
    ),
    "two storage versions": (
        lambda c: c["spec"]["versions"].append(
            dict(copy.deepcopy(c["spec"]["versions"][0]), name="v1beta1")
        ),
        "exactly one version must have storage: true",
    ),
}


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_non_structural_schema_is_reported(case: str) -> None:
    mutate, expected = NEGATIVE[case]
    errors = _broken(mutate)
    assert any(expected in error for error in errors), errors


def test_valid_extensions_pass() -> None:
    schema = {
        "type": "object",
        "properties": {
            "port": {"x-kubernetes-int-or-string": True,
                     "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "template": {"type": "object", "x-kubernetes-embedded-resource": True,
                         "x-kubernetes-preserve-unknown-fields": True},
            "pools": {"type": "array", "x-kubernetes-list-type": "map",
                      "x-kubernetes-list-map-keys": ["name"],
                      "items": {"type": "object", "required": ["name"],
                                "properties": {"name": {"type": "string"}}}},
            "labels": {"type": "object", "x-kubernetes-map-type": "atomic",
                       "additionalProperties": {"type": "string"}},
            "limit": {"type": "integer", "nullable": True, "default": None,
                      "x-kubernetes-validations": [{"rule": "self >= 0", "message": "≥ 0"}]},
        },
    }  # fmt: skip
    assert schema_errors(schema) == []


def test_cli_reports_errors(tmp_path, capsys) -> None:
    crd = _crd()
    _spec_schema(crd)["properties"]["loose"] = {"description": "untyped"}
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(crd))
    assert main([str(path)]) == 1
    assert "spec.properties.loose.type: missing" in capsys.readouterr().err
