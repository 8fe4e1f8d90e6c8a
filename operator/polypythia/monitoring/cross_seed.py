"""Every cross-seed outlier signal of a sweep at once: the loss at checkpoints and each
evaluation task's headline score, grouped by size, init and branch parent (``seed_group``).

The one outlier rule of the project: the operator, the local driver, the report and
`polypythia outliers` all hand their per-run histories here, so a run is flagged (or not)
the same way live, in status and in the report. Pure: histories in, verdicts out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polypythia.monitoring.eval_scores import bad_side, headline, task_scores
from polypythia.monitoring.outliers import (
    Family,
    FamilyScores,
    OutlierSettings,
    OutlierVerdict,
    Point,
    cross_seed_z,
    tested_families,
)


def seed_group(size: str, init: str | None, parent: str | None = None) -> str:
    """The runs compared with each other: same size and init, different seeds; branches
    (``parent``: `<uri>@step<N>`) only with branches of the same parent checkpoint."""
    return f"{size}/{init}" + (f" from {parent}" if parent else "")


def run_group(config: Mapping[str, Any]) -> str:
    """``seed_group`` of a run from its resolved run config (the plan's, or ``run.json`` as
    stored: the same dict), so every reader puts a run in the same group."""
    init = config.get("init") or {}
    branch = config.get("branch") or {}
    parent = (
        f"{branch['parent']}@step{branch['step']}"
        if branch.get("parent") and branch.get("step") is not None
        else None
    )
    return seed_group(str(config.get("size") or "?"), init.get("name") or "pythia", parent)


@dataclass(frozen=True)
class RunHistory:
    """One run's values at its checkpoints: ``evals`` holds raw evaluation files by step."""

    group: str
    run: str
    losses: Mapping[int, float] = field(default_factory=dict)
    evals: Mapping[int, Mapping] = field(default_factory=dict)


@dataclass(frozen=True)
class CrossSeedResult:
    """Verdicts per flagged run (earliest first), each run's latest z per signal, and the
    scores and thresholds of every (signal, group) family tested, flagged or not."""

    verdicts: dict[str, list[OutlierVerdict]]
    latest_z: dict[str, dict[str, float]]
    scores: list[FamilyScores] = field(default_factory=list)

    def all(self) -> list[OutlierVerdict]:
        """Every verdict, ordered by signal, group, first step and run."""
        found = [v for vs in self.verdicts.values() for v in vs]
        return sorted(found, key=lambda v: (v.signal, v.group, v.first_step, v.run))

    def first(self, run: str) -> OutlierVerdict | None:
        """The verdict that flagged the run first, if any."""
        found = self.verdicts.get(run)
        return found[0] if found else None

    def by_family(self, run: str) -> dict[str, tuple[float, bool]]:
        """``loss``/``eval`` -> (z, flagged) for the metrics' bounded ``signal`` label: the
        eval z is that of the task furthest from the seed median."""
        out: dict[str, tuple[float, bool]] = {}
        flagged = {v.signal.split(":", 1)[0] for v in self.verdicts.get(run, [])}
        for signal, z in self.latest_z.get(run, {}).items():
            family = signal.split(":", 1)[0]
            if family not in out or abs(z) > abs(out[family][0]):
                out[family] = (z, family in flagged)
        return out


VALIDATION_SIGNAL = "loss:validation"


def validation_losses(evals: Mapping[int, Mapping]) -> dict[int, float]:
    """step -> held-out loss recorded by the evaluator (NaN where it diverged)."""
    out = {}
    for step, result in evals.items():
        block = result.get("validation") if isinstance(result, Mapping) else None
        if isinstance(block, Mapping) and "loss" in block and block.get("tokens"):
            loss = block["loss"]
            out[step] = float(loss) if isinstance(loss, (int, float)) else math.nan
    return out


def signal_points(histories: Iterable[RunHistory], settings: OutlierSettings) -> dict[str, list]:
    """signal -> points: the loss and ``eval:<task>/<metric>`` (headline metric per task).

    The loss is the held-out loss (``loss:validation``) when any run's evaluations record
    it: every seed on the same tokens. Otherwise each run's training loss at checkpoints
    (``loss``), which compares seeds on different batches."""
    histories = list(histories)
    out: dict[str, list[Point]] = defaultdict(list)
    held = {h.run: validation_losses(h.evals) for h in histories}
    use_held = any(held.values())
    for h in histories:
        if "loss" in settings.signals and use_held:
            out[VALIDATION_SIGNAL] += [Point(h.group, h.run, s, v) for s, v in held[h.run].items()]
        elif "loss" in settings.signals:
            out["loss"] += [Point(h.group, h.run, s, v) for s, v in h.losses.items()]
        if "eval" not in settings.signals:
            continue
        for step, result in h.evals.items():
            for task, scores in task_scores(result).items():
                head = headline(scores)
                if head is not None:
                    out[f"eval:{task}/{head[0]}"].append(Point(h.group, h.run, step, head[1]))
    return dict(out)


def signal_families(histories: Iterable[RunHistory], settings: OutlierSettings) -> list[Family]:
    """The families the cross-seed test looks at, one per signal with its bad side."""
    return [
        Family(
            signal,
            "high" if signal.startswith("loss") else bad_side(signal.rsplit("/", 1)[1]),
            points,
        )
        for signal, points in sorted(signal_points(histories, settings).items())
    ]


def cross_seed_outliers(
    histories: Iterable[RunHistory], settings: OutlierSettings | None = None
) -> CrossSeedResult:
    """Every signal of every group tested as one family (false alarms controlled over all of
    them); a run may be flagged on several signals, its verdicts sorted by first step."""
    settings = settings or OutlierSettings()
    verdicts: dict[str, list[OutlierVerdict]] = defaultdict(list)
    latest: dict[str, dict[str, float]] = defaultdict(dict)
    families = signal_families(histories, settings)
    for family in families:
        for (_, run), series in cross_seed_z(family.points, settings.min_runs).items():
            latest[run][family.signal] = max(series)[1]
    found, scores = tested_families(families, settings)
    for verdict in found:
        verdicts[verdict.run].append(verdict)
    for by_run in verdicts.values():
        by_run.sort(key=lambda v: (v.first_step, v.signal))
    return CrossSeedResult(dict(verdicts), dict(latest), scores)
