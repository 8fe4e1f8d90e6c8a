"""Read the three Dockerfiles: instructions, stages with resolved bases, the final USER."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = {
    "operator": (REPO / "operator" / "Dockerfile", "operator"),
    "trainer": (REPO / "trainer_image" / "Dockerfile", "trainer"),
    "eval": (REPO / "eval_image" / "Dockerfile", "eval"),
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def global_args(path: Path) -> dict[str, str]:
    """ARG defaults declared before the first FROM, with ${NAME} references resolved."""
    args: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], default)
    return args


def stages(path: Path) -> list[dict]:
    """Stages with their resolved base image and instructions (global ARG defaults applied)."""
    args = global_args(path)
    out: list[dict] = []
    for word, rest in instructions(path):
        if word == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
            out.append({"base": base, "steps": []})
        elif out:
            out[-1]["steps"].append((word, rest))
    return out


def final_user(path: Path) -> tuple[int, int | None]:
    """(uid, gid) of the last USER of the final stage; numeric, as pods need it."""
    users = [rest for word, rest in stages(path)[-1]["steps"] if word == "USER"]
    if not users:
        raise AssertionError(f"{path}: the final stage sets no USER")
    uid, _, gid = users[-1].partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise AssertionError(f"{path}: USER {users[-1]} is not numeric uid[:gid]")
    return int(uid), int(gid) if gid else None
