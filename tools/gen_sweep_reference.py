"""Generate docs/sweep-reference.md from the PolyPythiaSweep CRD schema.

The CRD's openAPIV3Schema is the one definition of a sweep; this page is derived from it
so it cannot drift: `--check` (and a test) fails when the page differs from a fresh
rendering.

Usage: python tools/gen_sweep_reference.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "polypythiasweeps.polypythia.io.yaml"
OUTPUT = REPO / "docs" / "sweep-reference.md"


def _cell(text: str) -> str:
    """Markdown table cells cannot hold pipes or line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def type_name(node: dict) -> str:
    """`integer`, `[]string`, `map[string]object`, `int-or-string`, `object`."""
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    kind = node.get("type", "any")
    if kind == "array":
        return "[]" + type_name(node.get("items") or {})
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + type_name(node["additionalProperties"])
    return kind


def constraints(node: dict, required: bool) -> str:
    """What values are allowed, in words: required, enum, bounds, pattern, list type."""
    parts = ["**required**"] if required else []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    bounds = [("minimum", ">="), ("maximum", "<="), ("minLength", "length >="),
              ("maxLength", "length <="), ("minItems", "items >="), ("maxItems", "items <=")]  # fmt: skip
    for key, word in bounds:
        if key in node:
            strict = key in ("minimum", "maximum") and node.get("exclusive" + key.capitalize())
            parts.append(f"{word.replace('=', '') if strict else word} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    if "format" in node:
        parts.append(f"format {node['format']}")
    if node.get("x-kubernetes-list-type") == "set":
        parts.append("unique items")
    if node.get("x-kubernetes-list-type") == "map":
        parts.append("list keyed by " + ", ".join(node.get("x-kubernetes-list-map-keys", [])))
    items = node.get("items") or {}
    if "enum" in items:
        parts.append("items one of " + ", ".join(f"`{v}`" for v in items["enum"]))
    parts += [f"rule: {v['message']}" for v in node.get("x-kubernetes-validations") or []]
    return ", ".join(parts)


def rows(node: dict, path: str, required: bool = False) -> list[tuple[str, ...]]:
    """One row per field below `path`, depth first, in schema order."""
    out: list[tuple[str, ...]] = []
    default = json.dumps(node["default"]) if "default" in node else ""
    out.append((f"`{path}`", type_name(node), f"`{default}`" if default else "",
                constraints(node, required), node.get("description", "")))  # fmt: skip
    target = node
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        target, path = node["items"], path + "[]"
    elif isinstance(node.get("additionalProperties"), dict):
        target, path = node["additionalProperties"], path + ".<key>"
    needed = set(target.get("required", []))
    for name, child in (target.get("properties") or {}).items():
        out += rows(child, f"{path}.{name}", name in needed)
    return out


def _table(entries: list[tuple[str, ...]]) -> str:
    lines = ["| Field | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in entry) + " |" for entry in entries]
    return "\n".join(lines)


def reference_markdown(crd: dict) -> str:
    """The whole reference page for the storage version of the CRD."""
    spec = crd["spec"]
    (version,) = [v for v in spec["versions"] if v.get("storage")]
    schema = version["schema"]["openAPIV3Schema"]
    names = spec["names"]
    api_version = f"{spec['group']}/{version['name']}"
    columns = [(f"`{c['name']}`", c["type"], f"`{c['jsonPath']}`",
                "wide only" if c.get("priority", 0) else "") for c in
               version.get("additionalPrinterColumns", [])]  # fmt: skip
    column_table = "\n".join(
        ["| Column | Type | Field | Shown |", "|---|---|---|---|"]
        + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in columns]
    )
    properties = schema.get("properties", {})
    sections = []
    for part in ("spec", "status"):
        if part in properties:
            needed = part in schema.get("required", [])
            sections.append(f"## `{part}`\n\n{_table(rows(properties[part], part, needed))}\n")
    shorts = ", ".join(f"`{s}`" for s in names.get("shortNames", []))
    rules = "".join(
        f"- Rule: {v['message']}\n" for v in schema.get("x-kubernetes-validations") or []
    )
    return (
        f"# {names['kind']} reference\n\n"
        "<!-- Generated by tools/gen_sweep_reference.py from "
        f"crds/{CRD.name}. Do not edit. -->\n\n"
        f"{schema.get('description', '')}\n\n"
        f"- `apiVersion: {api_version}`, `kind: {names['kind']}`, {spec['scope'].lower()}\n"
        f"- `kubectl get {names['plural']}` (short names: {shorts})\n"
        f"{rules}"
        "- Defaults below are applied by the API server, and identically by "
        "`polypythia run` in local mode.\n\n"
        f"## `kubectl get {names.get('shortNames', [names['plural']])[0]}` columns\n\n"
        f"{column_table}\n\n" + "\n".join(sections)
    )


def render(crd_file: Path = CRD) -> str:
    return reference_markdown(yaml.safe_load(crd_file.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else None
    if args.check:
        if current != text:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run python tools/gen_sweep_reference.py",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
