"""Machine-readable CLI output: one JSON and one YAML style for every command.

Keys are camelCase like the CRD (``weightSeed``, ``onsetStep``) in every command's JSON
and YAML, so one sweep's objects read the same in `kubectl`, `plan` and `spikes`. YAML
never carries anchors or aliases (`&id001`): objects that share a sub-dict are written
out in full, as `kubectl` users expect.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import IO, Any

import yaml

FORMATS = ("table", "json", "yaml")


class _NoAliasDumper(yaml.SafeDumper):
    """SafeDumper that writes repeated objects again instead of as aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(obj: Any, stream: IO[str] | None = None) -> str | None:
    """One YAML document without anchors, keys in insertion order."""
    return yaml.dump(obj, stream, Dumper=_NoAliasDumper, sort_keys=False)


def dump_yaml_all(objects: Iterable[Any], stream: IO[str] | None = None) -> str | None:
    """Several YAML documents (`---` between them) without anchors."""
    return yaml.dump_all(objects, stream, Dumper=_NoAliasDumper, sort_keys=False)


def emit(obj: Any, fmt: str, stream: IO[str] | None = None) -> None:
    """Print ``obj`` as ``json`` or ``yaml`` (``table`` is each command's own)."""
    out = stream or sys.stdout
    if fmt == "json":
        out.write(json.dumps(obj, indent=2) + "\n")
    elif fmt == "yaml":
        dump_yaml(obj, out)
    else:
        raise ValueError(f"output: {fmt!r} is not json or yaml")


def camel(name: str) -> str:
    """`onset_step` -> `onsetStep` (the CRD's key style)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_keys(obj: Any) -> Any:
    """A copy of ``obj`` with every dict key camelCased (values untouched)."""
    if isinstance(obj, dict):
        return {camel(str(k)): camel_keys(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [camel_keys(v) for v in obj]
    return obj
