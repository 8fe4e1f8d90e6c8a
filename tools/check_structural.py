"""Check that CustomResourceDefinitions carry structural schemas the API server accepts.

No released tool checks this offline, and a non-structural CRD is only rejected when
it reaches a real cluster. The rules follow the Kubernetes documentation ("Specifying
a structural schema", "Defaulting", "x-kubernetes-* extensions") and the validation
in apiextensions-apiserver, plus a few project rules that catch typos: unknown
schema keywords, `required` names that are not properties, printer columns that
point at no field.

Usage: python tools/check_structural.py crds/*.yaml    (exit 1 and one line per error)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

from polypythia.crd import apply_defaults

TYPES = {"object", "array", "string", "integer", "number", "boolean"}
SCALARS = {"string", "integer", "number", "boolean"}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# Keys of apiextensions/v1 JSONSchemaProps.
KNOWN_KEYS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum",
    "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
    "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
    "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "patternProperties", "dependencies", "additionalItems",
    "definitions", "externalDocs", "example", "nullable",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
FORBIDDEN_KEYS = {
    "$ref", "$schema", "id", "definitions", "dependencies", "patternProperties", "additionalItems",
}  # fmt: skip
JUNCTOR_FORBIDDEN = {"description", "type", "default", "additionalProperties", "nullable"}
FORMATS = {
    "bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid", "uuid3",
    "uuid4", "uuid5", "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor", "rgbcolor",
    "byte", "password", "date", "duration", "datetime", "date-time", "int32", "int64", "float",
    "double",
}  # fmt: skip
INT_OR_STRING_JUNCTOR = [{"type": "integer"}, {"type": "string"}]
VALIDATION_RULE_KEYS = {
    "rule",
    "message",
    "messageExpression",
    "reason",
    "fieldPath",
    "optionalOldSelf",
}
PRINTER_TYPES = {"integer": {"integer"}, "number": {"number", "integer"}, "string": {"string"},
                 "boolean": {"boolean"}, "date": {"string"}}  # fmt: skip


def _preserves(node: dict) -> bool:
    return node.get("x-kubernetes-preserve-unknown-fields") is True


def _int_or_string(node: dict) -> bool:
    return node.get("x-kubernetes-int-or-string") is True


def schema_errors(root: dict, path: str = "openAPIV3Schema") -> list[str]:
    """Every rule the schema breaks, as `path: message` lines (empty when structural)."""
    errors: list[str] = []
    if not isinstance(root, dict):
        return [f"{path}: schema must be an object"]
    if root.get("type") != "object":
        errors.append(f"{path}.type: the root must be type object")
    for key in ("default", "nullable"):
        if key in root:
            errors.append(f"{path}.{key}: not allowed at the root")
    metadata = root.get("properties", {}).get("metadata")
    if isinstance(metadata, dict):
        errors += _metadata_errors(metadata, f"{path}.properties.metadata")
    for name in ("apiVersion", "kind"):
        field = root.get("properties", {}).get(name)
        if isinstance(field, dict) and field.get("type") != "string":
            errors.append(f"{path}.properties.{name}.type: must be string")
    _walk(root, path, errors, in_junctor=False, skip_metadata=True)
    return errors


def _metadata_errors(node: dict, path: str) -> list[str]:
    errors = [f"{path}.{key}: only type and properties (name, generateName) may be set"
              for key in node if key not in ("type", "properties")]  # fmt: skip
    if node.get("type") != "object":
        errors.append(f"{path}.type: must be object")
    for name in node.get("properties", {}):
        if name not in ("name", "generateName"):
            errors.append(f"{path}.properties.{name}: only name and generateName may be restricted")
    return errors


def _walk(node: Any, path: str, errors: list[str], in_junctor: bool, skip_metadata: bool) -> None:
    if not isinstance(node, dict):
        errors.append(f"{path}: schema must be an object, got {type(node).__name__}")
        return
    for key in node:
        if key not in KNOWN_KEYS:
            errors.append(f"{path}.{key}: unknown schema keyword")
        elif key in FORBIDDEN_KEYS:
            errors.append(f"{path}.{key}: not allowed in a structural schema")
    if node.get("uniqueItems") is True:
        errors.append(f"{path}.uniqueItems: cannot be true (use x-kubernetes-list-type: set)")
    if in_junctor:
        _junctor_node_errors(node, path, errors)
    else:
        _typed_node_errors(node, path, errors)
    _extension_errors(node, path, errors, in_junctor)
    for junctor in JUNCTORS:
        if junctor in node:
            _junctor_errors(node, junctor, path, errors)
    for name, child in (node.get("properties") or {}).items():
        if skip_metadata and name == "metadata":
            continue
        _walk(child, f"{path}.properties.{name}", errors, in_junctor, skip_metadata=False)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _walk(extra, f"{path}.additionalProperties", errors, in_junctor, skip_metadata=False)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}.items", errors, in_junctor, skip_metadata=False)
    elif "items" in node:
        errors.append(f"{path}.items: must be one schema, not a list")
    if "default" in node and not in_junctor:
        errors += _default_errors(node, path)


def _typed_node_errors(node: dict, path: str, errors: list[str]) -> None:
    kind = node.get("type")
    if kind is None:
        if not (_int_or_string(node) or _preserves(node)):
            errors.append(f"{path}.type: missing (every field needs a type)")
    elif kind not in TYPES:
        errors.append(f"{path}.type: {kind!r} is not one of {sorted(TYPES)}")
    if kind == "array" and "items" not in node:
        errors.append(f"{path}.items: an array must declare its items")
    if "items" in node and kind != "array":
        errors.append(f"{path}.items: only allowed with type array")
    if ("properties" in node or "additionalProperties" in node) and kind not in (None, "object"):
        errors.append(f"{path}: properties/additionalProperties only allowed with type object")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    extra = node.get("additionalProperties")
    if extra is False:
        errors.append(f"{path}.additionalProperties: cannot be false (unknown fields are pruned)")
    elif extra is True:
        errors.append(
            f"{path}.additionalProperties: true leaves values untyped; "
            "give a schema or use x-kubernetes-preserve-unknown-fields"
        )
    fmt = node.get("format")
    if fmt is not None and fmt not in FORMATS:
        errors.append(f"{path}.format: {fmt!r} is not a format the API server knows")
    required = node.get("required", [])
    props = node.get("properties")
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        errors.append(f"{path}.required: must be a list of field names")
    elif props is not None and not _preserves(node):
        for name in required:
            if name not in props:
                errors.append(f"{path}.required: {name!r} is not among the properties")
    if "enum" in node and kind in TYPES:
        probe = Draft4Validator(_to_jsonschema({"type": kind, "nullable": node.get("nullable")}))
        for value in node["enum"]:
            if not probe.is_valid(value):
                errors.append(f"{path}.enum: {value!r} is not of type {kind}")


def _junctor_node_errors(node: dict, path: str, errors: list[str]) -> None:
    for key in JUNCTOR_FORBIDDEN & node.keys():
        errors.append(f"{path}.{key}: not allowed inside allOf/anyOf/oneOf/not")
    for key in node:
        if key.startswith("x-kubernetes-"):
            errors.append(f"{path}.{key}: not allowed inside allOf/anyOf/oneOf/not")


def _junctor_errors(node: dict, junctor: str, path: str, errors: list[str]) -> None:
    branches = node[junctor]
    if junctor == "not":
        branches = [branches]
    elif not isinstance(branches, list) or not branches:
        errors.append(f"{path}.{junctor}: must be a non-empty list of schemas")
        return
    if _int_or_string(node) and junctor in ("anyOf", "allOf"):
        inner = node[junctor] if junctor == "anyOf" else node[junctor][0].get("anyOf")
        if inner != INT_OR_STRING_JUNCTOR:
            errors.append(f"{path}.{junctor}: with x-kubernetes-int-or-string only the "
                          "[{type: integer}, {type: string}] pattern is allowed")  # fmt: skip
        return
    outer = node.get("properties") or {}
    for i, branch in enumerate(branches):
        where = f"{path}.{junctor}" + ("" if junctor == "not" else f"[{i}]")
        if not isinstance(branch, dict):
            errors.append(f"{where}: must be a schema object")
            continue
        for name in branch.get("properties") or {}:
            if name not in outer:
                errors.append(f"{where}.properties.{name}: must also be declared outside {junctor}")
        if "items" in branch and "items" not in node:
            errors.append(f"{where}.items: must also be declared outside {junctor}")
        _walk(branch, where, errors, in_junctor=True, skip_metadata=False)


def _extension_errors(node: dict, path: str, errors: list[str], in_junctor: bool) -> None:
    if in_junctor:
        return
    kind = node.get("type")
    if node.get("x-kubernetes-preserve-unknown-fields", True) is not True:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or unset")
    if "x-kubernetes-int-or-string" in node:
        if node["x-kubernetes-int-or-string"] is not True:
            errors.append(f"{path}.x-kubernetes-int-or-string: must be true or unset")
        elif kind is not None:
            errors.append(f"{path}.type: must be unset with x-kubernetes-int-or-string")
    if node.get("x-kubernetes-embedded-resource") is True:
        if kind != "object":
            errors.append(f"{path}.x-kubernetes-embedded-resource: needs type object")
        if not node.get("properties") and not _preserves(node):
            errors.append(
                f"{path}.x-kubernetes-embedded-resource: needs properties or "
                "x-kubernetes-preserve-unknown-fields: true"
            )
    _list_type_errors(node, path, errors)
    map_type = node.get("x-kubernetes-map-type")
    if map_type is not None:
        if map_type not in ("granular", "atomic"):
            errors.append(f"{path}.x-kubernetes-map-type: must be granular or atomic")
        if kind != "object":
            errors.append(f"{path}.x-kubernetes-map-type: only allowed with type object")
    rules = node.get("x-kubernetes-validations")
    if rules is not None:
        if not isinstance(rules, list):
            errors.append(f"{path}.x-kubernetes-validations: must be a list")
            return
        for i, rule in enumerate(rules):
            where = f"{path}.x-kubernetes-validations[{i}]"
            if (
                not isinstance(rule, dict)
                or not isinstance(rule.get("rule"), str)
                or not rule["rule"]
            ):
                errors.append(f"{where}.rule: a non-empty CEL expression is required")
            elif set(rule) - VALIDATION_RULE_KEYS:
                errors.append(f"{where}: unknown keys {sorted(set(rule) - VALIDATION_RULE_KEYS)}")


def _list_type_errors(node: dict, path: str, errors: list[str]) -> None:
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys")
    if keys is not None and list_type != "map":
        errors.append(f"{path}.x-kubernetes-list-map-keys: only allowed with list-type map")
    if list_type is None:
        return
    if list_type not in ("atomic", "set", "map"):
        errors.append(f"{path}.x-kubernetes-list-type: must be atomic, set or map")
        return
    if node.get("type") != "array":
        errors.append(f"{path}.x-kubernetes-list-type: only allowed with type array")
        return
    items = node.get("items") if isinstance(node.get("items"), dict) else {}
    if list_type == "set":
        scalar = items.get("type") in SCALARS or _int_or_string(items)
        atomic = items.get("x-kubernetes-map-type") == "atomic"
        if not (scalar or atomic):
            errors.append(f"{path}.x-kubernetes-list-type: set needs scalar or atomic items")
    if list_type == "map":
        if items.get("type") != "object":
            errors.append(f"{path}.x-kubernetes-list-type: map needs object items")
        if not isinstance(keys, list) or not keys:
            errors.append(f"{path}.x-kubernetes-list-map-keys: required (non-empty) for a map list")
            return
        if len(set(keys)) != len(keys):
            errors.append(f"{path}.x-kubernetes-list-map-keys: keys must be unique")
        props = items.get("properties") or {}
        for key in keys:
            prop = props.get(key)
            if not isinstance(prop, dict):
                errors.append(f"{path}.x-kubernetes-list-map-keys: {key!r} is not an item property")
            elif prop.get("type") not in SCALARS:
                errors.append(f"{path}.x-kubernetes-list-map-keys: {key!r} must be scalar")
            elif key not in items.get("required", []) and "default" not in prop:
                errors.append(
                    f"{path}.x-kubernetes-list-map-keys: {key!r} must be required or defaulted"
                )


def _to_jsonschema(node: Any) -> Any:
    """A draft-4 equivalent of a Kubernetes schema node (nullable, int-or-string)."""
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for key in ("properties",):
        if key in out:
            out[key] = {name: _to_jsonschema(child) for name, child in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _to_jsonschema(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_to_jsonschema(child) for child in out[key]]
    if _int_or_string(node) and "anyOf" not in out:
        out["anyOf"] = INT_OR_STRING_JUNCTOR
    if node.get("nullable") is True:
        kind = out.pop("type", None)
        out = {"anyOf": [{"type": "null"}, dict(out, **({"type": kind} if kind else {}))]}
    return out


def unknown_fields(node: dict, value: Any, path: str) -> list[str]:
    """Paths in `value` that pruning would drop: fields the schema does not declare."""
    found: list[str] = []
    if isinstance(value, dict) and node.get("type") == "object" and not _preserves(node):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for name, child in value.items():
            if name in props:
                found += unknown_fields(props[name], child, f"{path}.{name}")
            elif isinstance(extra, dict):
                found += unknown_fields(extra, child, f"{path}.{name}")
            else:
                found.append(f"{path}.{name}")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(node["items"], item, f"{path}[{i}]")
    return found


def _default_errors(node: dict, path: str) -> list[str]:
    default = node["default"]
    if default is None and node.get("nullable") is not True:
        return [f"{path}.default: null is only allowed with nullable: true"]
    errors = [f"{path}.default: {p} is not in the schema (it would be pruned)"
              for p in unknown_fields(node, default, "default")]  # fmt: skip
    defaulted = apply_defaults(node, copy.deepcopy(default))
    validator = Draft4Validator(_to_jsonschema(node))
    for error in sorted(validator.iter_errors(defaulted), key=lambda e: list(e.path)):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        errors.append(f"{path}.default{where}: {error.message}")
    return errors


def _field_at(schema: dict, json_path: str) -> dict | None:
    node: dict | None = schema
    for part in json_path.lstrip(".").split("."):
        if node is None:
            return None
        node = (node.get("properties") or {}).get(part)
    return node


def crd_errors(crd: dict) -> list[str]:
    """Errors of a whole CRD object: names, versions, printer columns and every schema."""
    if not isinstance(crd, dict):
        return ["CRD: not a mapping"]
    errors: list[str] = []
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1":
        errors.append(f"apiVersion: must be apiextensions.k8s.io/v1, got {crd.get('apiVersion')!r}")
    if crd.get("kind") != "CustomResourceDefinition":
        errors.append(f"kind: must be CustomResourceDefinition, got {crd.get('kind')!r}")
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if (crd.get("metadata") or {}).get("name") != expected:
        errors.append(f"metadata.name: must be <plural>.<group> = {expected!r}")
    for key in ("plural", "singular"):
        if names.get(key) and names[key] != names[key].lower():
            errors.append(f"spec.names.{key}: must be lowercase")
    versions = spec.get("versions") or []
    if sum(1 for v in versions if v.get("storage") is True) != 1:
        errors.append("spec.versions: exactly one version must have storage: true")
    seen: set[str] = set()
    for i, version in enumerate(versions):
        where = f"spec.versions[{i}]"
        if version.get("name") in seen:
            errors.append(f"{where}.name: duplicate version {version.get('name')!r}")
        seen.add(version.get("name"))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(f"{where}.schema.openAPIV3Schema: required")
            continue
        errors += schema_errors(schema, f"{where}.schema.openAPIV3Schema")
        if "status" in (version.get("subresources") or {}) and not _field_at(schema, ".status"):
            errors.append(f"{where}.subresources.status: the schema declares no status field")
        for j, column in enumerate(version.get("additionalPrinterColumns") or []):
            errors += _column_errors(column, schema, f"{where}.additionalPrinterColumns[{j}]")
    return errors


def _column_errors(column: dict, schema: dict, path: str) -> list[str]:
    json_path = column.get("jsonPath", "")
    kind = column.get("type")
    if kind not in PRINTER_TYPES:
        return [f"{path}.type: {kind!r} is not one of {sorted(PRINTER_TYPES)}"]
    if not json_path.startswith("."):
        return [f"{path}.jsonPath: must start with '.'"]
    if json_path == ".metadata.creationTimestamp":
        return [] if kind == "date" else [f"{path}.type: creationTimestamp is a date"]
    field = _field_at(schema, json_path)
    if field is None:
        return [f"{path}.jsonPath: {json_path} is not a field of the schema"]
    if field.get("type") not in PRINTER_TYPES[kind]:
        return [f"{path}.type: {kind} does not match {json_path} of type {field.get('type')}"]
    return []


def check_files(paths: list[Path]) -> list[str]:
    """Errors of every CRD document in the files, prefixed with the file name."""
    errors: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            documents = [d for d in yaml.safe_load_all(handle) if d is not None]
        if not documents:
            errors.append(f"{path}: no YAML document")
        errors += [f"{path}: {error}" for doc in documents for error in crd_errors(doc)]
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="CRD YAML files")
    args = parser.parse_args(argv)
    errors = check_files(args.files)
    for error in errors:
        print(error, file=sys.stderr)
    if not errors:
        print(f"structural: {len(args.files)} file(s) OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
