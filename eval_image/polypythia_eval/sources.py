"""Read what a report shows: a sweep's runs from storage, or lm-eval result files on disk.

Adapters only: every reader returns plain data and records what it could not find
(``problems``) instead of failing, so a report of a half-finished sweep still renders.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from polypythia.storage import StorageError, SweepStore
from polypythia.storage.verify import sound_checkpoints

_STEP_FILE = re.compile(r"step(\d+)\.json$")


@dataclass
class RunData:
    """One run as the report sees it."""

    name: str
    size: str
    seed: int | None = None
    data_seed: int | None = None
    telemetry: list[dict] = field(default_factory=list)
    evals: dict[int, dict] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)
    planned_steps: int | None = None
    init: str | None = None
    strategy: str | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    # run.json's ``branch`` block (parent URI, step, checksum, optimizer) for a branched run.
    branch: dict | None = None
    rewinds: list[dict] = field(default_factory=list)
    # run.json as stored ({} when unreadable): the run core reads the run's group there.
    config: dict = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        """The run this one branched from (last part of the parent's URI), if a branch."""
        if not self.branch or not self.branch.get("parent"):
            return None
        return str(self.branch["parent"]).rstrip("/").rsplit("/", 1)[-1]


@dataclass
class SweepData:
    """All runs of a sweep (or of a folder of result files) plus what was missing."""

    source: str
    runs: list[RunData] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    reference: bool = False

    def sizes(self) -> list[str]:
        return sorted({r.size for r in self.runs}, key=_size_key)

    def by_size(self, size: str) -> list[RunData]:
        return sorted((r for r in self.runs if r.size == size), key=_run_key)


def _size_key(size: str) -> tuple[float, str]:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([mb])", size)
    if not m:
        return (-1.0, size)
    return (float(m[1]) * (1000 if m[2] == "b" else 1), size)


def _run_key(run: RunData) -> tuple:
    return (run.seed is None, run.seed if run.seed is not None else 0, run.name)


def _run_from_store(store, name: str) -> RunData:
    run = RunData(name=name, size="?")
    try:
        cfg = store.read_run_config()
        run.config = cfg if isinstance(cfg, dict) else {}
        run.size = str(cfg.get("size", "?"))
        init = cfg.get("init") or {}
        if init.get("name"):
            # A sweep with an init axis compares seeds within (size, init): one group each.
            run.init, run.strategy = init["name"], init.get("strategy", "pythia")
            run.size = f"{run.size}-{run.init}"
        run.seed = cfg.get("seed")
        run.data_seed = cfg.get("dataSeed", run.seed)
        run.planned_steps = (cfg.get("training") or {}).get("steps")
        branch = cfg.get("branch")
        if isinstance(branch, dict) and branch.get("parent") and branch.get("step") is not None:
            run.branch = dict(branch)
    except StorageError as exc:
        run.problems.append(f"no run config ({exc})")
    for what, read in (
        ("telemetry", store.read_telemetry),
        ("checkpoints", store.complete_checkpoints),
        ("evals", store.read_evals),
        ("rewinds", lambda: store.read_rewinds()["rewinds"]),
    ):
        try:
            setattr(run, what, read())
        except (StorageError, ValueError, KeyError) as exc:
            run.problems.append(f"{what} unreadable ({exc})")
    _drop_damaged(store, run)
    if not run.telemetry:
        run.problems.append("no telemetry yet")
    if not run.checkpoints and not run.evals:
        run.problems.append("no complete checkpoint yet")
    if not run.evals:
        run.problems.append("no evaluation results yet")
    return run


def _drop_damaged(store, run: RunData) -> None:
    """Leave out checkpoints whose files do not match COMPLETE (sizes: one HEAD per file;
    the evaluator checked sha256 when it loaded them), and their evaluations, naming each."""
    try:
        checked = sound_checkpoints(store, run.name, checksums=False)
    except StorageError as exc:
        run.problems.append(f"checkpoints not verified ({exc})")
        return
    for step, problem in checked.damaged.items():
        run.problems.append(
            f"step{step}: damaged checkpoint excluded with its evaluation ({problem})"
        )
    run.checkpoints = [s for s in run.checkpoints if s not in checked.damaged]
    run.evals = {s: e for s, e in run.evals.items() if s not in checked.damaged}


def load_sweep(uri: str, run_errors: dict[str, str] | None = None, **store_kwargs) -> SweepData:
    """Every run under a sweep folder (local path or s3://...)."""
    data = SweepData(source=uri)
    try:
        sweep = SweepStore.open(uri, **store_kwargs)
        names = sweep.runs()
    except (StorageError, OSError) as exc:
        data.problems.append(f"{uri}: cannot list runs ({exc})")
        return data
    if not names:
        data.problems.append(f"{uri}: no runs in storage yet")
    for name in names:
        run = _run_from_store(sweep.run(name), name)
        if run_errors and name in run_errors:
            run.error = run_errors[name]
        data.runs.append(run)
    for name, error in (run_errors or {}).items():
        if name not in names:
            data.runs.append(RunData(name=name, size="?", error=error, problems=["no data"]))
    return data


def _read_json(path: Path, problems: list[str]) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None


def load_result_files(folder: str | Path) -> SweepData:
    """lm-eval result files laid out as ``<model>/[<n-shot>/]*step<N>.json``.

    This is how EleutherAI publishes the Pythia evaluations
    (``pythia-70m/zero-shot/70m_step1000.json``). Each model folder becomes a run
    (size from the name, seed unknown); five-shot results are merged in under
    ``<task> [5-shot]``.
    """
    folder = Path(folder)
    data = SweepData(source=str(folder), reference=True)
    if not folder.is_dir():
        data.problems.append(f"{folder}: not a folder")
        return data
    for model_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = re.search(r"(\d+(?:\.\d+)?[mb])", model_dir.name)
        run = RunData(name=model_dir.name, size=m[1] if m else model_dir.name)
        for path in sorted(model_dir.rglob("*.json")):
            step_match = _STEP_FILE.search(path.name)
            if not step_match:
                continue
            result = _read_json(path, data.problems)
            if result is None:
                continue
            step = int(step_match[1])
            shots = (result.get("config") or {}).get("num_fewshot") or 0
            entry = run.evals.setdefault(step, {"results": {}})
            for task, metrics in (result.get("results") or {}).items():
                entry["results"][task if not shots else f"{task} [{shots}-shot]"] = metrics
        if run.evals:
            run.checkpoints = sorted(run.evals)
            run.problems.append("no telemetry (evaluation files only)")
            data.runs.append(run)
    if not data.runs:
        data.problems.append(f"{folder}: no lm-eval result files named *step<N>.json")
    return data


def is_result_folder(path: str) -> bool:
    """Whether a local folder holds lm-eval result files rather than a sweep's runs."""
    p = Path(path)
    if not p.is_dir():
        return False
    return not any(p.glob("*/run.json")) and any(
        _STEP_FILE.search(f.name) and "evals" not in f.parts for f in p.glob("*/**/*.json")
    )
