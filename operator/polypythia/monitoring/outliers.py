"""Cross-seed outliers: robust z-scores across the seeds of one size, per checkpoint.

z = (x - median) / (1.4826 * MAD) over the runs of a group (a model size) at one
checkpoint step; when MAD is 0 (half the runs agree exactly) the mean absolute
deviation times 1.2533 stands in (Iglewicz & Hoaglin), and when that is 0 too
every z is 0. A run is an outlier when its z lies beyond ``threshold`` on the bad
side for ``consecutive`` checkpoints in a row.

Defaults: ``threshold`` 3.5 is Iglewicz & Hoaglin's cut-off for the modified
z-score; ``consecutive`` 2 ignores a single bad checkpoint (evaluation noise).
On PolyPythias' 410M training maps (mean z-scored accuracy, where low is bad) they
flag seeds 3 and 4 only: seed 3 from step 83000 (z -23) and seed 4 from 123000
(z -40); the largest excursion of any other seed is 4.0 upwards and -3.3
downwards, each for a single checkpoint.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

Direction = Literal["high", "low", "both"]
# Which side is bad, per known signal: a high loss, a low evaluation score.
BAD_SIDE: dict[str, Direction] = {"loss": "high", "eval": "low"}
MAD_SCALE = 1.4826
MEAN_AD_SCALE = 1.2533


@dataclass(frozen=True)
class OutlierSettings:
    """When a run counts as a cross-seed outlier (see module docstring for the defaults)."""

    threshold: float = 3.5
    consecutive: int = 2
    signals: tuple[str, ...] = ("loss", "eval")
    min_runs: int = 4

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"threshold: must be > 0, got {self.threshold}")
        if self.consecutive < 1:
            raise ValueError(f"consecutive: must be >= 1, got {self.consecutive}")
        if self.min_runs < 3:
            raise ValueError(f"min_runs: must be >= 3, got {self.min_runs}")


class Point(NamedTuple):
    """One value of one run at one checkpoint; ``group`` is the model size."""

    group: str
    run: str
    step: int
    value: float


@dataclass(frozen=True)
class OutlierVerdict:
    """A flagged run: the signal, where its first qualifying streak began, its worst z."""

    group: str
    run: str
    signal: str
    first_step: int
    score: float
    checkpoints: int

    def to_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "run": self.run,
            "signal": self.signal,
            "first_step": self.first_step,
            "score": self.score,
            "checkpoints": self.checkpoints,
        }


def robust_z(values: Mapping[str, float]) -> dict[str, float]:
    """Robust z-score of each run's value against all runs' values."""
    xs = list(values.values())
    med = statistics.median(xs)
    scale = MAD_SCALE * statistics.median(abs(x - med) for x in xs)
    if scale == 0:
        scale = MEAN_AD_SCALE * statistics.fmean(abs(x - med) for x in xs)
    if scale == 0:
        return {run: 0.0 for run in values}
    return {run: (x - med) / scale for run, x in values.items()}


def cross_seed_z(
    points: Iterable[Point], min_runs: int = 4
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(group, run) -> [(step, z)] in step order, for checkpoints with >= ``min_runs`` runs."""
    table: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        table[p.group][p.step][p.run] = p.value
    out: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for group, steps in table.items():
        for step in sorted(steps):
            if len(steps[step]) < min_runs:
                continue
            for run, z in robust_z(steps[step]).items():
                out[(group, run)].append((step, z))
    return dict(out)


def _bad(z: float, threshold: float, direction: Direction) -> bool:
    if direction == "high":
        return z > threshold
    if direction == "low":
        return z < -threshold
    return abs(z) > threshold


def find_outliers(
    points: Iterable[Point],
    signal: str,
    settings: OutlierSettings | None = None,
    direction: Direction | None = None,
) -> list[OutlierVerdict]:
    """Runs beyond the threshold (on the bad side) for ``consecutive`` checkpoints in a row."""
    settings = settings or OutlierSettings()
    side = direction or BAD_SIDE.get(signal, "both")
    verdicts = []
    for (group, run), series in sorted(cross_seed_z(points, settings.min_runs).items()):
        streaks: list[list[tuple[int, float]]] = [[]]
        for step, z in series:
            if _bad(z, settings.threshold, side):
                streaks[-1].append((step, z))
            elif streaks[-1]:
                streaks.append([])
        long = [s for s in streaks if len(s) >= settings.consecutive]
        if long:
            flagged = [z for s in long for _, z in s]
            worst = max(flagged, key=abs)
            verdicts.append(OutlierVerdict(group, run, signal, long[0][0][0], worst, len(flagged)))
    return verdicts
