"""Runs read straight from storage for `polypythia spikes` and `outliers`: a run folder
(``run.json``, ``telemetry/``) or a sweep folder (one sub-folder per run), local or s3://.

A run's telemetry chunks become one history (``RunStore.read_telemetry``: the newest
attempt wins, records abandoned by a rewind are left out), so the commands see exactly
what the driver and the operator saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from polypythia.errors import UsageError
from polypythia.monitoring.settings import InstabilitySettings, settings_from_spec
from polypythia.storage import RunStore, StorageError, StorageNotFound, SweepStore


@dataclass(frozen=True)
class StoredRun:
    """What the detectors need of one stored run."""

    name: str
    size: str | None
    init: str | None
    data_seed: int | None
    checkpoints: tuple[int, ...]
    telemetry: list[dict] = field(default_factory=list)
    evals: dict[int, dict] = field(default_factory=dict)
    # run.json as stored (empty when the run has none): the run core reads its group there.
    config: dict = field(default_factory=dict)


def is_stored(path: str) -> bool:
    """An s3:// URI or a local folder (rather than a log file)."""
    return path.startswith("s3://") or Path(path).is_dir()


def _is_run(store: RunStore) -> bool:
    try:
        store.read_run_config()
        return True
    except StorageNotFound:
        return bool(store.telemetry_files())


def _read(store: RunStore, name: str, evals: bool) -> StoredRun:
    try:
        config = store.read_run_config()
    except StorageNotFound:
        config = {}
    planned = ((config.get("checkpoints") or {}).get("steps")) or []
    return StoredRun(
        name=name,
        size=config.get("size"),
        init=(config.get("init") or {}).get("name"),
        data_seed=config.get("dataSeed"),
        checkpoints=tuple(planned),
        telemetry=store.read_telemetry(),
        evals=store.read_evals() if evals else {},
        config=config,
    )


def stored_runs(uri: str, *, evals: bool = False, **store_kwargs) -> tuple[list[StoredRun], str]:
    """The runs under ``uri`` and what it named (``run`` or ``sweep``); a sweep's runs in
    name order. Raises UsageError when ``uri`` holds neither."""
    uri = uri.rstrip("/")
    try:
        run = RunStore.open(uri, **store_kwargs)
        if _is_run(run):
            return [_read(run, uri.rsplit("/", 1)[-1], evals)], "run"
        sweep = SweepStore.open(uri, **store_kwargs)
        runs = [
            _read(sweep.run(name), name, evals) for name in sweep.runs() if _is_run(sweep.run(name))
        ]
    except StorageError as exc:
        raise UsageError(f"{uri}: cannot read it ({exc})") from None
    if not runs:
        raise UsageError(
            f"{uri}: neither a run folder (run.json, telemetry/) nor a sweep folder "
            "(one sub-folder per run)"
        )
    return runs, "sweep"


def applied_settings(uri: str, **store_kwargs) -> InstabilitySettings | None:
    """The spike and outlier settings of the sweep at ``uri`` (a sweep folder, or a run
    folder of it) as applied, from the ``sweep.json`` the driver or operator wrote beside
    its runs: what the live verdicts used. None where nothing recorded them."""
    uri = uri.rstrip("/")
    if _is_run(RunStore.open(uri, **store_kwargs)):
        uri = uri.rsplit("/", 1)[0]  # a run folder: its sweep's record
    applied = SweepStore.open(uri, **store_kwargs).read_applied()
    return settings_from_spec(applied["spec"].get("instability")) if applied else None
