"""A CRD's openAPIV3Schema applied the way kube-apiserver applies it: prune, default, validate.

Kept apart from the emulator so that tests can validate rendered objects (RayJobs) against
the same code path the emulated API server uses, without a server.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from polypythia.crd import apply_defaults

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=8)
def load_crd_file(path: str) -> tuple[dict[str, Any], ...]:
    """Every CustomResourceDefinition document in a YAML file (cached: KubeRay's is 1.4 MB)."""
    with Path(path).open() as fh:
        docs = [d for d in yaml.load_all(fh, Loader=_Loader) if d]
    return tuple(d for d in docs if d.get("kind") == "CustomResourceDefinition")


def _to_draft4(schema: Any) -> Any:
    """Structural-schema dialect -> JSON Schema draft 4 (nullable, int-or-string)."""
    if isinstance(schema, list):
        return [_to_draft4(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    skip = ("format", "default", "description", "example")
    out = {
        k: _to_draft4(v)
        for k, v in schema.items()
        if not k.startswith("x-kubernetes-") and k not in skip and k != "properties"
    }
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    # The schema's own keys named "default"/"properties" must survive as data, not dialect.
    if "properties" in schema:
        out["properties"] = {k: _to_draft4(v) for k, v in schema["properties"].items()}
    return out


class StructuralSchema:
    """One version of one CRD: prune unknown fields, apply defaults, validate."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._validator = jsonschema.Draft4Validator(_to_draft4(schema))

    def prune(self, obj: dict[str, Any]) -> list[str]:
        """Drop fields the schema does not know (real servers drop them with a warning)."""
        dropped: list[str] = []
        props = self.schema.get("properties", {})
        for key in list(obj):
            if key in ("apiVersion", "kind", "metadata"):
                continue
            if key not in props:
                dropped.append(key)
                del obj[key]
            else:
                _prune(props[key], obj[key], key, dropped)
        return dropped

    def default(self, obj: dict[str, Any]) -> None:
        """Fill declared defaults recursively, also inside defaulted values."""
        apply_defaults(self.schema, obj)

    def errors(self, obj: dict[str, Any]) -> list[str]:
        """Field-path messages in kube-apiserver's style; empty when valid."""
        found = []
        for err in sorted(self._validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err.path)
            found.append(f"{path.replace('.[', '[') or '<root>'}: Invalid value: {err.message}")
        return found

    def admit(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
        """Prune, default, validate a copy: (object, dropped field paths, errors)."""
        out = pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))  # deepcopy, 2.5x faster
        dropped = self.prune(out)
        self.default(out)
        return out, dropped, self.errors(out)


def _prune(schema: dict[str, Any], value: Any, path: str, dropped: list[str]) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-embedded-resource"
    ):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(value):
            if props is not None and key in props:
                _prune(props[key], value[key], f"{path}.{key}", dropped)
            elif isinstance(extra, dict):
                _prune(extra, value[key], f"{path}.{key}", dropped)
            elif props is not None or extra is False:
                dropped.append(f"{path}.{key}")
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _prune(schema["items"], item, f"{path}[{i}]", dropped)


def crd_versions(crd: dict[str, Any]) -> dict[str, StructuralSchema]:
    """version name -> schema of every served version of a CRD."""
    return {
        v["name"]: StructuralSchema(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
        if v.get("served", True)
    }


@functools.lru_cache(maxsize=8)
def schema_for(path: str, version: str) -> StructuralSchema:
    """The cached schema of ``version`` of the (first) CRD in ``path``."""
    return crd_versions(load_crd_file(path)[0])[version]
