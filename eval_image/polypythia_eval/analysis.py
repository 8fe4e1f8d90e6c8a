"""What the report concludes from a sweep: spikes, outliers, training maps, agreement.

Pure: takes ``SweepData``, returns plain data. Spike and outlier detection are the
monitoring package's detectors (the same ones the operator runs online), so the
report and the live alerts cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from polypythia.monitoring.common_mode import label_common_mode
from polypythia.monitoring.cross_seed import VALIDATION_SIGNAL, validation_losses
from polypythia.monitoring.eval_scores import bad_side, headline, task_scores
from polypythia.monitoring.outliers import (
    Family,
    FamilyScores,
    OutlierVerdict,
    Point,
    family_scores,
    flag_families,
)
from polypythia.monitoring.spikes import RunSpikeDetector, SpikeEvent
from polypythia.planner import POLYPYTHIAS_TASKS
from polypythia_eval.offline_tasks import OFFLINE_TASKS
from polypythia_eval.sources import RunData, SweepData
from polypythia_eval.trainingmaps import TrainingMap, agreement, fit_training_map
from polypythia_eval.weightstats import map_features

# Evaluation tasks shown first: the project's offline tasks, then PolyPythias' list.
PREFERRED_TASKS = OFFLINE_TASKS + POLYPYTHIAS_TASKS
LOSS_BUCKETS = 40


@dataclass
class Analysis:
    """Everything the report renders besides raw curves."""

    spikes: list[SpikeEvent] = field(default_factory=list)
    outliers: list[OutlierVerdict] = field(default_factory=list)
    # Every tested (signal, size) family with its scores and thresholds, flagged or not.
    scores: list[FamilyScores] = field(default_factory=list)
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


def detect_spikes(sweep: SweepData) -> list[SpikeEvent]:
    """Final state of every spike of every run (the last event per spike), labelled
    common-mode when most runs (or most of a data order) spike at the same step."""
    events: list[SpikeEvent] = []
    reached: dict[str, float] = {}
    for run in sweep.runs:
        steps, loss, grad = loss_history(run)
        reached[run.name] = float(steps[-1]) if len(steps) else -math.inf
        if len(steps) < 2:
            continue
        _, found = RunSpikeDetector.rebuild(run.name, steps, loss, grad)
        last: dict[tuple, SpikeEvent] = {}
        for event in found:
            last[(event.signal, event.onset_step)] = event
        events.extend(last.values())
    data_order = {r.name: r.data_seed for r in sweep.runs}
    labelled = label_common_mode(events, data_order, last_step=reached)
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


def loss_points(sweep: SweepData, buckets: int = LOSS_BUCKETS) -> list[Point]:
    """Mean loss per bucket of steps, per run: comparable across seeds of a size."""
    points = []
    for run in sweep.runs:
        steps, loss, _ = loss_history(run)
        finite = np.isfinite(loss)
        if finite.sum() < buckets:
            continue
        last = run.planned_steps or int(steps.max())
        edges = np.linspace(0, last, buckets + 1)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            sel = finite & (steps > lo) & (steps <= hi)
            if sel.any():
                points.append(Point(run.size, run.name, int(hi), float(loss[sel].mean())))
    return points


def outlier_families(sweep: SweepData) -> tuple[list[Family], list[str]]:
    """The cross-seed test's families: the held-out loss (training loss when none is
    recorded) and every evaluation score, each compared within a size. Branched runs share
    their parent's history, so they are not seeds: they stay out of the test."""
    notes = []
    seeds = {r.name for r in sweep.runs if not r.branch}
    if len(seeds) < len(sweep.runs) and any(r.branch for r in sweep.runs):
        notes.append("branched runs are not seeds: left out of the cross-seed test and the map")
    held = [
        Point(r.size, r.name, step, loss)
        for r in sweep.runs
        if r.name in seeds
        for step, loss in validation_losses(r.evals).items()
    ]
    if held:
        families = [Family(VALIDATION_SIGNAL, "high", held)]
    else:
        notes.append("no held-out loss recorded: the loss test compares training losses")
        families = [Family("loss", "high", [p for p in loss_points(sweep) if p.run in seeds])]
    for size, tasks in eval_table(sweep).items():
        if len([r for r in sweep.by_size(size) if not r.branch]) < 4:
            notes.append(f"{size}: fewer than 4 seeds, no cross-seed outlier test")
            continue
        for key, runs in tasks.items():
            points = [
                Point(size, run, s, v)
                for run, by in runs.items()
                if run in seeds
                for s, v in by.items()
            ]
            families.append(Family(f"eval:{key}", bad_side(key.rsplit("/", 1)[1]), points))
    return families, notes


def detect_outliers(sweep: SweepData) -> tuple[list[OutlierVerdict], list[str]]:
    """Cross-seed outliers on loss and on every evaluation score, tested as one family (the
    false-alarm rate holds over all signals and sizes together)."""
    families, notes = outlier_families(sweep)
    return flag_families(families), notes


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


def analyse(sweep: SweepData) -> Analysis:
    """Run every detector the report needs."""
    result = Analysis()
    result.spikes = detect_spikes(sweep)
    families, notes = outlier_families(sweep)
    result.outliers = flag_families(families)
    result.scores = family_scores(families)
    result.notes.extend(notes)
    result.maps, notes = training_maps(sweep)
    result.notes.extend(notes)
    result.agreement = seed_agreement(sweep)
    return result
