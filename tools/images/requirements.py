"""Print the requirements of the project with one extra, from pyproject.toml alone.

The images install these in a layer of their own, keyed on pyproject.toml and
constraints.txt only, so that a change to the project's code rebuilds the small layer
holding the project wheel and not the gigabytes of torch, Ray and DeepSpeed below it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def requirements(pyproject: dict, extra: str) -> list[str]:
    """The base dependencies plus `extra`'s, with `name[a,b]` self-references expanded."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    name = project["name"]
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(which: str) -> None:
        if which in seen:
            return
        if which not in extras:
            raise SystemExit(f"extra {which!r} not in pyproject.toml; allowed: {', '.join(extras)}")
        seen.add(which)
        for req in extras[which]:
            own = re.fullmatch(rf"{re.escape(name)}\[([\w,\s-]+)\]", req.strip())
            if own:
                for inner in own.group(1).split(","):
                    add(inner.strip())
            else:
                out.append(req)

    add(extra)
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: requirements.py PYPROJECT EXTRA", file=sys.stderr)
        return 2
    with Path(argv[0]).open("rb") as handle:
        print("\n".join(requirements(tomllib.load(handle), argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
