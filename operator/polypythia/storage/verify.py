"""Checkpoints checked against their COMPLETE manifests, without changing anything.

``polypythia verify`` reports every damaged checkpoint of a run or sweep, and readers
that analyse checkpoints (the report, outlier analysis) call ``sound_checkpoints`` so a
damaged one is left out and named instead of analysed. Unlike ``RunStore.checked``
(resume, evaluation), nothing here quarantines: a read-only check may run while the
trainer writes, and on stores the caller may only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from polypythia.storage.base import StorageNotFound
from polypythia.storage.layout import RUN_CONFIG, CheckpointDamaged, RunStore, SweepStore


@dataclass(frozen=True)
class CheckpointCheck:
    """One checkpoint's verdict: ``problem`` is None when every file matches COMPLETE."""

    run: str
    step: int
    uri: str
    files: int = 0
    size: int = 0
    problem: str | None = None

    @property
    def sound(self) -> bool:
        return self.problem is None


@dataclass
class RunCheck:
    """The checkpoints of one run: sound steps and damaged ones with the reason."""

    run: str
    checks: list[CheckpointCheck] = field(default_factory=list)

    @property
    def sound(self) -> list[int]:
        return [c.step for c in self.checks if c.sound]

    @property
    def damaged(self) -> dict[int, str]:
        return {c.step: c.problem for c in self.checks if c.problem is not None}


def check_checkpoint(run: RunStore, name: str, step: int, *, checksums: bool) -> CheckpointCheck:
    """Verify one checkpoint (size and, with ``checksums``, sha256 of every file)."""
    uri = f"{run.uri}/checkpoints/step{step}"
    try:
        manifest = run.read_manifest(step)
        run.verify_checkpoint(step, checksums=checksums)
    except StorageNotFound:
        return CheckpointCheck(name, step, uri, problem="COMPLETE vanished while checking")
    except CheckpointDamaged as exc:
        return CheckpointCheck(name, step, uri, problem=str(exc))
    files = manifest["files"]
    return CheckpointCheck(name, step, uri, len(files), sum(f["size"] for f in files))


def sound_checkpoints(run: RunStore, name: str = "", *, checksums: bool = True) -> RunCheck:
    """Every complete checkpoint of ``run`` checked; a StorageError other than damage
    (an outage, a denied read) propagates, so "unreachable" is never reported as
    "damaged"."""
    name = name or run.uri.rstrip("/").rsplit("/", 1)[-1]
    result = RunCheck(name)
    for step in run.complete_checkpoints():
        result.checks.append(check_checkpoint(run, name, step, checksums=checksums))
    return result


def runs_at(uri: str, **store_kwargs) -> list[tuple[str, RunStore]]:
    """The runs ``uri`` names: itself when it holds ``run.json`` or checkpoints,
    else each run folder of the sweep there."""
    run = RunStore.open(uri, **store_kwargs)
    name = run.uri.rstrip("/").rsplit("/", 1)[-1]
    if run.store.exists(run.key(RUN_CONFIG)) or run.complete_checkpoints():
        return [(name, run)]
    sweep = SweepStore(run.store, run.prefix, run.uri)
    return [(n, sweep.run(n)) for n in sweep.runs()]


def verify_uri(uri: str, *, checksums: bool = True, **store_kwargs) -> list[RunCheck]:
    """Check every checkpoint of the run or sweep at ``uri``."""
    found = runs_at(uri, **store_kwargs)
    return [sound_checkpoints(run, name, checksums=checksums) for name, run in found]
