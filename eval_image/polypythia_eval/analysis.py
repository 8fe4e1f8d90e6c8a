"""What the report concludes from a sweep: spikes, outliers, training maps, agreement.

Pure: takes ``SweepData``, returns plain data. Spike detection is the monitoring
package's detector and the outlier verdicts are the run core's (``stored_history`` and
``cross_seed_outliers``, what the operator and the local driver run online, with the
sweep's ``spec.instability.outliers``), so the report and the live alerts cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from polypythia.monitoring.common_mode import label_common_mode
from polypythia.monitoring.cross_seed import (
    CrossSeedResult,
    RunHistory,
    cross_seed_outliers,
    validation_losses,
)
from polypythia.monitoring.eval_scores import headline, task_scores
from polypythia.monitoring.outliers import FamilyScores, OutlierSettings, OutlierVerdict
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent, SpikeSettings
from polypythia.planner import POLYPYTHIAS_TASKS
from polypythia.runcore.monitor import stored_history
from polypythia_eval.offline_tasks import OFFLINE_TASKS
from polypythia_eval.sources import RunData, SweepData
from polypythia_eval.trainingmaps import TrainingMap, agreement, fit_training_map
from polypythia_eval.weightstats import map_features

# Evaluation tasks shown first: the project's offline tasks, then PolyPythias' list.
PREFERRED_TASKS = OFFLINE_TASKS + POLYPYTHIAS_TASKS


@dataclass
class Analysis:
    """Everything the report renders besides raw curves."""

    spikes: list[SpikeEvent] = field(default_factory=list)
    outliers: list[OutlierVerdict] = field(default_factory=list)
    # Every tested (signal, group) family with its scores and thresholds, flagged or not.
    scores: list[FamilyScores] = field(default_factory=list)
    # Run -> the run core's group (size, init, branch parent): the seeds it is compared with.
    groups: dict[str, str] = field(default_factory=dict)
    outlier_settings: OutlierSettings = field(default_factory=OutlierSettings)
    maps: dict[str, TrainingMap] = field(default_factory=dict)
    agreement: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def loss_history(run: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(steps, loss, grad_norm) from telemetry, in step order, one record per step."""
    by_step = {int(r["step"]): r for r in run.telemetry if "step" in r and "loss" in r}
    steps = np.array(sorted(by_step), dtype=np.int64)
    loss = np.array([_num(by_step[s].get("loss")) for s in steps], dtype=float)
    gn = [by_step[s].get("grad_norm") for s in steps]
    grad = None if all(g is None for g in gn) else np.array([_num(g) for g in gn], dtype=float)
    return steps, loss, grad


def _num(value) -> float:
    return float(value) if value is not None else math.nan


def detect_spikes(sweep: SweepData, settings: SpikeSettings | None = None) -> list[SpikeEvent]:
    """Final state of every spike of every run (the last event per spike), labelled
    common-mode when most runs (or most of a data order) spike at the same step;
    ``settings`` are the sweep's ``spec.instability`` ones (the CRD defaults if None)."""
    settings = settings or SpikeSettings()
    events: list[SpikeEvent] = []
    reached: dict[str, float] = {}
    for run in sweep.runs:
        steps, loss, grad = loss_history(run)
        reached[run.name] = float(steps[-1]) if len(steps) else -math.inf
        if len(steps) < 2:
            continue
        _, found = RunSpikeDetector.rebuild(run.name, steps, loss, grad, settings)
        last: dict[tuple, SpikeEvent] = {}
        for event in found:
            last[(event.signal, event.onset_step)] = event
        events.extend(last.values())
    data_order = {r.name: r.data_seed for r in sweep.runs}
    labelled = label_common_mode(
        events,
        data_order,
        settings.common_mode_fraction,
        settings.common_mode_tolerance,
        last_step=reached,
    )
    return sorted(labelled, key=lambda e: (e.run, e.onset_step))


def eval_table(sweep: SweepData) -> dict[str, dict[str, dict[str, dict[int, float]]]]:
    """size -> "task/metric" -> run -> step -> headline score."""
    table: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for run in sweep.runs:
        for step, result in run.evals.items():
            for task, scores in task_scores(result).items():
                head = headline(scores)
                if head is None:
                    continue
                key = f"{task}/{head[0]}"
                table.setdefault(run.size, {}).setdefault(key, {}).setdefault(run.name, {})[
                    step
                ] = head[1]
    return table


def ordered_tasks(keys, limit: int = 12) -> list[str]:
    """Task/metric keys in report order: preferred tasks first, then alphabetical."""
    rank = {t: i for i, t in enumerate(PREFERRED_TASKS)}
    ordered = sorted(keys, key=lambda k: (rank.get(k.split("/")[0], len(rank)), k))
    return ordered[:limit]


def run_histories(sweep: SweepData) -> list[RunHistory]:
    """Every run as the live monitors see it: its group from ``run.json``, its training
    loss at the planned checkpoints, its evaluation files (lm-eval result folders have no
    ``run.json``: their runs are grouped by the size in their names)."""
    return [
        stored_history(r.name, r.config or {"size": r.size}, r.telemetry, r.evals)
        for r in sweep.runs
    ]


def outlier_notes(
    histories: list[RunHistory], result: CrossSeedResult, settings: OutlierSettings
) -> list[str]:
    """What the cross-seed test could not look at, and which loss it compared."""
    notes = []
    if "loss" in settings.signals and not any(validation_losses(h.evals) for h in histories):
        notes.append(
            "no held-out loss recorded: the loss test compares training losses at checkpoints"
        )
    tested = {fs.group for fs in result.scores}
    groups: dict[str, int] = {}
    for h in histories:
        if h.losses or h.evals:
            groups[h.group] = groups.get(h.group, 0) + 1
    for group, count in sorted(groups.items()):
        if group not in tested:
            notes.append(
                f"{group}: {count} run{'s' if count != 1 else ''} with checkpoint values, no "
                f"cross-seed outlier test (it needs {settings.min_runs} at the same checkpoints)"
            )
    return notes


def detect_outliers(
    sweep: SweepData, settings: OutlierSettings | None = None
) -> tuple[CrossSeedResult, dict[str, str], list[str]]:
    """The run core's cross-seed verdicts on the stored runs (loss and every evaluation
    score, false alarms controlled over all signals and groups together), each run's group,
    and notes on what was not tested."""
    settings = settings or OutlierSettings()
    histories = run_histories(sweep)
    result = cross_seed_outliers(histories, settings)
    groups = {h.run: h.group for h in histories}
    return result, groups, outlier_notes(histories, result, settings)


def _series(runs: list[RunData]) -> dict[str, dict[int, dict[str, float]]]:
    series = {}
    for run in runs:
        points = {
            step: map_features(result["weight_stats"])
            for step, result in run.evals.items()
            if result.get("weight_stats")
        }
        if points:
            series[run.name] = points
    return series


def training_maps(sweep: SweepData, **opts) -> tuple[dict[str, TrainingMap], list[str]]:
    """One training map per size, over the weight statistics of all its seeds."""
    maps, notes = {}, []
    for size in sweep.sizes():
        series = _series([r for r in sweep.by_size(size) if not r.branch])
        points = sum(len(p) for p in series.values())
        if points < 4:
            notes.append(f"{size}: {points} checkpoints with weight statistics, no training map")
            continue
        try:
            maps[size] = fit_training_map(series, **opts)
        except ValueError as exc:
            notes.append(f"{size}: no training map ({exc})")
    return maps, notes


def seed_agreement(sweep: SweepData) -> dict[str, dict]:
    """Per size: kappa vs final checkpoint and vs the lowest seed (seed 0 when present)."""
    out = {}
    for size in sweep.sizes():
        runs = sweep.by_size(size)
        predictions: dict[str, Mapping] = {
            r.name: {s: e["predictions"] for s, e in r.evals.items() if e.get("predictions")}
            for r in runs
        }
        predictions = {k: v for k, v in predictions.items() if v}
        if not predictions:
            continue
        reference = next((r.name for r in runs if r.name in predictions), None)
        out[size] = agreement(predictions, reference)
    return out


def analyse(
    sweep: SweepData,
    outliers: OutlierSettings | None = None,
    spikes: SpikeSettings | None = None,
) -> Analysis:
    """Run every detector the report needs; ``outliers`` and ``spikes`` are the sweep's
    ``spec.instability`` settings, as the live verdicts use them (the CRD defaults when
    not given)."""
    result = Analysis(outlier_settings=outliers or OutlierSettings())
    result.spikes = detect_spikes(sweep, spikes)
    cross_seed, result.groups, notes = detect_outliers(sweep, result.outlier_settings)
    result.outliers = cross_seed.all()
    result.scores = cross_seed.scores
    result.notes.extend(notes)
    result.maps, notes = training_maps(sweep)
    result.notes.extend(notes)
    result.agreement = seed_agreement(sweep)
    return result
