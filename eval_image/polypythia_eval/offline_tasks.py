"""The project's offline lm-eval tasks: data generated from the corpus grammar, YAMLs from templates.

The task YAMLs shipped in ``tasks/`` hold everything but the data file; at run time
the items are generated (deterministically: same seed, same items for every run and
checkpoint, which per-item agreement needs) into a work dir, and a copy of each
YAML naming that file by absolute path is written next to them. lm-eval then finds
the tasks through ``TaskManager(include_path=<work dir>/tasks)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from polypythia import corpus
from polypythia.errors import UsageError

PREFIX = "pp_"
CLOZE = "pp_cloze"
# A group name that expands to every minimal-pair phenomenon.
MINIMAL_PAIRS_GROUP = "pp_blimp"
PAIR_TASKS = {f"{PREFIX}{p}": p for p in corpus.PHENOMENA}
OFFLINE_TASKS = (*PAIR_TASKS, CLOZE)
# Items the evaluation uses come from a fixed seed: never the training seed.
ITEM_SEED = 1234


@dataclass(frozen=True)
class OfflineItems:
    """How many items each offline task generates."""

    pairs_per_phenomenon: int = 200
    cloze: int = 300
    seed: int = ITEM_SEED


def is_offline(task: str) -> bool:
    """Whether ``task`` names one of the project's own tasks (or the pp_blimp group)."""
    return task.startswith(PREFIX)


def expand_tasks(tasks: list[str]) -> list[str]:
    """Expand ``pp_blimp``, drop duplicates, and reject unknown ``pp_*`` names."""
    out: list[str] = []
    for task in tasks:
        names = list(PAIR_TASKS) if task == MINIMAL_PAIRS_GROUP else [task]
        for name in names:
            if is_offline(name) and name not in OFFLINE_TASKS:
                allowed = ", ".join((*OFFLINE_TASKS, MINIMAL_PAIRS_GROUP))
                raise UsageError(f"--tasks: unknown project task {name!r}; allowed: {allowed}")
            if name not in out:
                out.append(name)
    return out


def _template(name: str) -> dict:
    text = resources.files("polypythia_eval").joinpath("tasks").joinpath(name).read_text()
    return yaml.safe_load(text)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(path)


def _write_task(folder: Path, config: dict, data_file: Path) -> None:
    config["dataset_kwargs"]["data_files"]["test"] = str(data_file.resolve())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def prepare_offline_tasks(
    tasks: list[str], workdir: Path, items: OfflineItems | None = None
) -> Path | None:
    """Generate data and task YAMLs for the offline tasks among ``tasks``.

    Returns the folder to give lm-eval as ``include_path`` (None when no offline
    task is requested). Data files are named by their content's parameters, so
    re-running reuses them.
    """
    items = items or OfflineItems()
    wanted = [t for t in tasks if is_offline(t)]
    if not wanted:
        return None
    version = getattr(corpus, "CORPUS_VERSION", 0)
    tag = f"v{version}-s{items.seed}"
    folder = Path(workdir) / "tasks" / tag
    data = Path(workdir) / "data" / tag
    for task in wanted:
        if task in PAIR_TASKS:
            n = items.pairs_per_phenomenon
            file = data / f"{task}-{n}.jsonl"
            if not file.exists():
                _write_jsonl(file, corpus.minimal_pairs(PAIR_TASKS[task], n, items.seed))
            config = _template("pp_minimal_pairs.yaml")
            config["task"] = task
        else:
            file = data / f"{task}-{items.cloze}.jsonl"
            if not file.exists():
                _write_jsonl(file, corpus.cloze_items(items.cloze, items.seed))
            config = _template("pp_cloze.yaml")
        _write_task(folder, config, file)
    return folder
