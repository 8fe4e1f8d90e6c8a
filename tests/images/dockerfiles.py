"""Read the root Dockerfile: instructions, named stages with resolved bases, and for each image
target the stages it is built from (what `--target` builds) and the USER it ends with."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# Image target -> the pyproject extra it installs (mk/images.mk passes `--build-arg EXTRA=<target>`).
IMAGES = {"operator": "operator", "trainer": "trainer", "eval": "eval"}


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """ARG defaults declared before the first FROM, with ${NAME} references resolved."""
    args: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], default)
    return args


def stages(path: Path = DOCKERFILE) -> list[dict]:
    """Stages in file order: name, base (an image with global ARG defaults applied, or the name
    of an earlier stage) and instructions."""
    args = global_args(path)
    out: list[dict] = []
    for word, rest in instructions(path):
        if word == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append({"name": name, "base": base, "steps": []})
        elif out:
            out[-1]["steps"].append((word, rest))
    return out


def _by_name(path: Path) -> dict[str, dict]:
    return {stage["name"]: stage for stage in stages(path) if stage["name"]}


def chain(target: str, path: Path = DOCKERFILE) -> list[dict]:
    """The stages an image is made of, outermost base first: `target` and the stages it is
    FROM, down to the one FROM an external image."""
    named = _by_name(path)
    if target not in named:
        raise AssertionError(f"{path}: no stage named {target!r}; stages: {sorted(named)}")
    out = [named[target]]
    while out[0]["base"] in named:
        out.insert(0, named[out[0]["base"]])
    return out


def needed(target: str, path: Path = DOCKERFILE) -> list[dict]:
    """Every stage a `--target` build runs: its chain and, recursively, the stages those copy
    from (`COPY --from=`). BuildKit and buildah skip the rest."""
    named = _by_name(path)
    seen: dict[str, dict] = {}
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        stage = named[name]
        seen[name] = stage
        if stage["base"] in named:
            todo.append(stage["base"])
        for word, rest in stage["steps"]:
            if word == "COPY":
                todo += [n for n in re.findall(r"--from=(\S+)", rest) if n in named]
    return [stage for stage in stages(path) if stage["name"] in seen]


def final_steps(target: str, path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """The instructions an image's own stages run, in order (its chain's steps joined)."""
    return [step for stage in chain(target, path) for step in stage["steps"]]


def final_user(target: str, path: Path = DOCKERFILE) -> tuple[int, int | None]:
    """(uid, gid) of the last USER the image's stages set; numeric, as pods need it."""
    users = [rest for word, rest in final_steps(target, path) if word == "USER"]
    if not users:
        raise AssertionError(f"{path}: target {target} sets no USER")
    uid, _, gid = users[-1].partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise AssertionError(f"{path}: target {target}: USER {users[-1]} is not numeric uid[:gid]")
    return int(uid), int(gid) if gid else None
