"""The PolyPythiaSweep CRD file as the schema of a sweep: load, default, validate.

The API server validates and defaults with the CRD's openAPIV3Schema; local mode
does the same here, from the same file, so both see one sweep.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

CRD_FILENAME = "polypythiasweeps.polypythia.io.yaml"
GROUP = "polypythia.io"
VERSION = "v1alpha1"
KIND = "PolyPythiaSweep"
PLURAL = "polypythiasweeps"
API_VERSION = f"{GROUP}/{VERSION}"


def crd_path() -> Path:
    """The CRD file: `$POLYPYTHIA_CRD`, else the package's copy of crds/ (kept identical by
    `tools/sync_chart_crd.py` and a test), so an installed wheel validates like the repository."""
    override = os.environ.get("POLYPYTHIA_CRD")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "crds" / CRD_FILENAME


@functools.cache
def load_crd() -> dict:
    with open(crd_path(), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def schema(version: str = VERSION) -> dict:
    """The openAPIV3Schema of one served version."""
    for entry in load_crd()["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD has no version {version!r}")


def apply_defaults(node_schema: dict, value: Any) -> Any:
    """Fill in `default`s the way the API server does: top-down, nested objects too.

    The one implementation: local mode, `tools/check_structural.py` (defaults must validate)
    and the tests' emulated API server all call it.
    """
    if isinstance(value, dict):
        for name, prop in (node_schema.get("properties") or {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = apply_defaults(prop, value[name])
        extra = node_schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = node_schema.get("properties", {})
            for name in value:
                if name not in known:
                    value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(node_schema.get("items"), dict):
        return [apply_defaults(node_schema["items"], item) for item in value]
    return value


def _strict(node_schema: dict) -> dict:
    """A copy of a structural schema that rejects unknown fields (like `--validate=strict`)."""
    out = {k: v for k, v in node_schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in node_schema:
        out["properties"] = {k: _strict(v) for k, v in node_schema["properties"].items()}
        if (
            "additionalProperties" not in node_schema
            and not node_schema.get("x-kubernetes-preserve-unknown-fields")
            and node_schema.get("type") == "object"
        ):
            out["additionalProperties"] = False
    if isinstance(node_schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(node_schema["additionalProperties"])
    if isinstance(node_schema.get("items"), dict):
        out["items"] = _strict(node_schema["items"])
    if node_schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


@functools.cache
def _validator(version: str = VERSION) -> Draft4Validator:
    root = _strict(schema(version))
    # metadata is validated by the API server itself, not by the CRD schema.
    root["properties"]["metadata"] = {"type": "object"}
    return Draft4Validator(root)


def field_path(parts: Any) -> str:
    """`spec.resources.perSize.70m.workers` / `spec.sizes[2]` from a jsonschema path."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<document>"


# OpenAPI v3 bounds: (operator, operator when the bound is exclusive, the boolean saying so).
_BOUNDS = {"minimum": (">=", ">", "exclusiveMinimum"), "maximum": ("<=", "<", "exclusiveMaximum")}
_ITEM_COUNTS = {"minItems": "at least", "maxItems": "at most"}


def _describe(error) -> str:
    validator = error.validator
    value = error.instance
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(value) - set(allowed)) if isinstance(value, dict) else []
        return f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    if validator == "enum":
        return f"{value!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if validator == "type":
        return f"must be of type {error.validator_value}, got {type(value).__name__} {value!r}"
    if validator in _BOUNDS:
        inclusive, exclusive, flag = _BOUNDS[validator]
        op = exclusive if error.schema.get(flag) else inclusive
        return f"must be {op} {error.validator_value}, got {value!r}"
    if validator in _ITEM_COUNTS:
        return (
            f"must have {_ITEM_COUNTS[validator]} {error.validator_value} item(s), got {len(value)}"
        )
    if validator == "uniqueItems":
        return f"items must be unique, got {value!r}"
    if validator == "pattern":
        return f"{value!r} does not match the pattern {error.validator_value}"
    if validator == "required":
        return error.message.replace("is a required property", "is required")
    return error.message


def validate(obj: dict, version: str = VERSION) -> list[str]:
    """Schema errors of a whole PolyPythiaSweep object, each `field.path: what is allowed`."""
    errors = sorted(_validator(version).iter_errors(obj), key=lambda e: list(map(str, e.path)))
    return [f"{field_path(error.path)}: {_describe(error)}" for error in errors]
