"""Cross-seed outliers with the false-alarm rate controlled over the whole family of checks.

Per family (one signal of one group of seeds, e.g. the held-out loss of the 410M runs),
each checkpoint's values are turned into robust z-scores across the seeds:
z = (x - median) / (1.4826 * MAD) (mean absolute deviation x 1.2533 when MAD is 0;
every z is 0 when both are). Two statistics per seed, on the bad side:

- **level**: the largest z that the seed keeps for ``consecutive`` checkpoints in a row
  (the old "beyond 3.5 for 2 checkpoints" rule, now with a calibrated cut-off);
- **change**: the largest standardised shift of the seed's z between the checkpoints
  before an onset and those after it (at least ``consecutive`` after), over the noise of
  z from one checkpoint to the next (pooled over seeds, from first differences), over
  onsets whose first ``consecutive`` checkpoints each carry at least half the shift. A
  seed's own persistent offset cancels, so this finds a seed that *falls away*.

Thresholds come from the null distribution, simulated once per (seeds, checkpoints,
consecutive, sidedness) and cached in memory and on disk (``null_cache``, keyed on every
input of the simulation, so a restarted operator reads it back): seeds exchangeable and
Gaussian at each checkpoint, a share ``rho`` of their variance a persistent per-seed offset
and the rest noise from checkpoint to checkpoint; the threshold is the largest over ``rho`` in ``NULL_RHOS``, so
it holds however persistent seed differences are (up to 99% of the variance). The
family-wise level ``falseAlarmRate`` is split by Bonferroni over every (signal, group)
family looked at and then equally between the two statistics, which keeps it valid
whatever the correlation between signals. Tails rarer than the simulation resolves are
extrapolated with an exponential (peaks over threshold), which is conservative for
Gaussian-like maxima. Non-finite values are flagged on their own (a NaN loss is news).
Error rates from simulation are in docs/statistics.md.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np

from polypythia.monitoring import null_cache
from polypythia.typed import FIXED

Direction = Literal["high", "low", "both"]
# Which side is bad, per known signal: a high loss, a low evaluation score.
BAD_SIDE: dict[str, Direction] = {"loss": "high", "eval": "low"}
MAD_SCALE = 1.4826
MEAN_AD_SCALE = 1.2533
# Shares of the seed-to-seed variance that persist across checkpoints, simulated for the null.
NULL_RHOS: tuple[float, ...] = (0.0, 0.5, 0.9, 0.99)
# Null families simulated per rho; at most NULL_VALUES seed-checkpoint values per rho.
NULL_FAMILIES = 8000
NULL_VALUES = 3_000_000
# Empirical quantiles need this many simulated exceedances; rarer tails are extrapolated.
TAIL_EXCEEDANCES = 50


@dataclass(frozen=True)
class OutlierSettings:
    """When a run counts as a cross-seed outlier: ``false_alarm_rate`` is the chance of any
    flag at all on a sweep whose seeds differ only by chance."""

    false_alarm_rate: float = 0.05
    consecutive: int = 2
    signals: tuple[str, ...] = ("loss", "eval")
    min_runs: int = field(default=4, metadata=FIXED)  # no sweep field

    def __post_init__(self) -> None:
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"false_alarm_rate: must be in (0, 1), got {self.false_alarm_rate}")
        if self.consecutive < 1:
            raise ValueError(f"consecutive: must be >= 1, got {self.consecutive}")
        if self.min_runs < 4:
            raise ValueError(f"min_runs: must be >= 4, got {self.min_runs}")


class Point(NamedTuple):
    """One value of one run at one checkpoint; ``group`` is the model size."""

    group: str
    run: str
    step: int
    value: float


@dataclass(frozen=True)
class OutlierVerdict:
    """A flagged run: the signal, the test that flagged it (``level``, ``change`` or
    ``non-finite``), where the bad stretch began, its score and the threshold it passed."""

    group: str
    run: str
    signal: str
    first_step: int
    score: float
    checkpoints: int
    threshold: float = math.nan
    test: str = "level"

    def to_dict(self) -> dict[str, object]:
        finite = math.isfinite(self.score)
        return {
            "group": self.group,
            "run": self.run,
            "signal": self.signal,
            "test": self.test,
            "first_step": self.first_step,
            "score": round(self.score, 3) if finite else None,
            "threshold": round(self.threshold, 3) if math.isfinite(self.threshold) else None,
            "checkpoints": self.checkpoints,
        }


class Family(NamedTuple):
    """The points of one signal, compared within each group; ``direction`` is the bad side."""

    signal: str
    direction: Direction
    points: Sequence[Point]


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
    """(group, run) -> [(step, z)] in step order, for checkpoints with >= ``min_runs`` finite values."""
    table: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        if math.isfinite(p.value):
            table[p.group][p.step][p.run] = p.value
    out: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for group, steps in table.items():
        for step in sorted(steps):
            if len(steps[step]) < min_runs:
                continue
            for run, z in robust_z(steps[step]).items():
                out[(group, run)].append((step, z))
    return dict(out)


# -- the statistics, vectorised over (families, seeds, checkpoints); NaN = no value ----------


def _median(x: np.ndarray, axis: int) -> np.ndarray:
    return (
        np.nanmedian(x, axis=axis, keepdims=True)
        if np.isnan(x).any()
        else np.median(x, axis=axis, keepdims=True)
    )


def _zscores(x: np.ndarray) -> np.ndarray:
    """Robust z across seeds (axis -2) at each checkpoint, NaN where a value is missing."""
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        med = _median(x, -2)
        dev = np.abs(x - med)
        scale = MAD_SCALE * _median(dev, -2)
        mean_ad = MEAN_AD_SCALE * np.nanmean(dev, axis=-2, keepdims=True)
        scale = np.where(scale > 0, scale, mean_ad)
        z = np.where(scale > 0, (x - med) / np.where(scale > 0, scale, 1.0), 0.0)
    return np.where(np.isnan(x), np.nan, z)


class _quiet:
    """Silence numpy's all-NaN-slice warnings (a checkpoint column with no values)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _statistics(z: np.ndarray, k: int, two_sided: bool) -> tuple[np.ndarray, ...]:
    """Per seed: (level, level_at, change, change_at) from bad-side z of shape (F, n, T).

    ``level_at`` is the first checkpoint index of the seed's worst k-run, ``change_at`` the
    onset index of its largest shift; statistics are -inf where they cannot be computed.
    """
    f, n, t = z.shape
    s = np.abs(z) if two_sided else z
    if t >= k:
        window = np.where(np.isnan(s), -np.inf, s)[..., : t - k + 1].copy()
        filled = np.where(np.isnan(s), -np.inf, s)
        for j in range(1, k):
            window = np.minimum(window, filled[..., j : t - k + 1 + j])
        level, level_at = window.max(-1), window.argmax(-1)
    else:
        level = np.full((f, n), -np.inf)
        level_at = np.zeros((f, n), dtype=int)
    valid = ~np.isnan(z)
    diffs = np.abs(np.diff(z, axis=-1)).reshape(f, -1)
    with _quiet():
        sigma = np.nanmedian(diffs, axis=-1) / (0.6745 * math.sqrt(2))
        fallback = np.nanmean(diffs, axis=-1) * MEAN_AD_SCALE / math.sqrt(2)
    sigma = np.where(sigma > 0, sigma, fallback)
    filled = np.where(valid, z, 0.0)
    cum = np.cumsum(filled, -1)[..., :-1]
    cnt = np.cumsum(valid, -1)[..., :-1]
    total, count = filled.sum(-1, keepdims=True), valid.sum(-1, keepdims=True)
    post_cnt = count - cnt
    ok = (cnt >= 1) & (post_cnt >= k) & valid[..., 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        pre = cum / cnt
        shift = (total - cum) / post_cnt - pre
        std = np.sqrt(1.0 / cnt + 1.0 / post_cnt) * sigma[:, None, None]
        change = np.abs(shift) / std if two_sided else shift / std
        # Sustained: each of the first k checkpoints from the onset carries at least half
        # the shift (one huge excursion among many ordinary ones is not a change).
        for j in range(k):
            ahead = np.full_like(z, np.nan)
            ahead[..., : t - 1 - j] = z[..., 1 + j :]
            ahead = ahead[..., : t - 1]
            ok &= np.sign(shift) * (ahead - pre) > 0.5 * np.abs(shift)
    change = np.where(ok & np.isfinite(change), change, -np.inf)
    if change.shape[-1]:
        change_at = change.argmax(-1) + 1
        change_max = change.max(-1)
    else:
        change_at = np.zeros((f, n), dtype=int)
        change_max = np.full((f, n), -np.inf)
    return level, level_at, change_max, change_at


NULL_SEED = 20251201


def _null_families(n: int, t: int) -> int:
    return int(min(NULL_FAMILIES, max(1000, NULL_VALUES // (n * t))))


def _null_params(n: int, t: int, k: int, two_sided: bool) -> dict[str, object]:
    """Everything a null simulation depends on: its shape and sizes, the RNG seed, numpy's
    version (its normal sampler may change between releases) and the code that computes it."""
    return {
        "seeds": n,
        "checkpoints": t,
        "consecutive": k,
        "twoSided": two_sided,
        "rhos": list(NULL_RHOS),
        "families": _null_families(n, t),
        "seed": NULL_SEED,
        "numpy": np.__version__,
        "code": _null_code(),
    }


@lru_cache(maxsize=1)
def _null_code() -> str:
    """A digest of the code a null simulation runs (read once: this module as loaded)."""
    code = "".join(inspect.getsource(f) for f in (_zscores, _statistics, _SIMULATE))
    return hashlib.sha256(code.encode()).hexdigest()


@lru_cache(maxsize=256)
def _null_maxima(n: int, t: int, k: int, two_sided: bool) -> tuple[tuple[np.ndarray, ...], ...]:
    """Sorted family maxima of (level, change) under the null, one pair per rho in NULL_RHOS:
    from memory, else from the disk cache (``null_cache``), else simulated and stored."""
    params = _null_params(n, t, k, two_sided)
    key = null_cache.cache_key(params)
    folder = null_cache.cache_folder()
    sims = null_cache.load(folder, key, len(NULL_RHOS), _null_families(n, t))
    if sims is None:
        sims = _simulate_null(n, t, k, two_sided)
        null_cache.save(folder, key, sims, params)
    return sims


def _simulate_null(n: int, t: int, k: int, two_sided: bool) -> tuple[tuple[np.ndarray, ...], ...]:
    """The simulation itself (seeded: the same parameters give the same arrays)."""
    rng = np.random.default_rng([n, t, k, int(two_sided), NULL_SEED])
    families = _null_families(n, t)
    out = []
    for rho in NULL_RHOS:
        levels, changes = [], []
        for start in range(0, families, 1000):
            size = min(1000, families - start)
            x = math.sqrt(rho) * rng.standard_normal((size, n, 1)) + math.sqrt(
                1 - rho
            ) * rng.standard_normal((size, n, t))
            level, _, change, _ = _statistics(_zscores(x), k, two_sided)
            levels.append(level.max(-1))
            changes.append(change.max(-1))
        out.append((np.sort(np.concatenate(levels)), np.sort(np.concatenate(changes))))
    return tuple(out)


_SIMULATE = _simulate_null  # the code the cache key digests, whatever later rebinds the name


def _upper_quantile(sorted_sample: np.ndarray, p: float) -> float:
    """x with P(X > x) = p from a sorted sample; an exponential tail below the sample's reach."""
    size = len(sorted_sample)
    finite = sorted_sample[np.isfinite(sorted_sample)]
    if len(finite) < TAIL_EXCEEDANCES:
        return math.inf
    if p * size >= TAIL_EXCEEDANCES:
        return float(np.quantile(sorted_sample, 1 - p, method="higher"))
    top = finite[-TAIL_EXCEEDANCES:]
    u = float(sorted_sample[size - TAIL_EXCEEDANCES - 1])
    beta = float(np.mean(top - u))
    return u + beta * math.log(TAIL_EXCEEDANCES / size / p)


def _checkpoint_bucket(t: int) -> int:
    """Checkpoint counts share a simulation when rounded up (more checkpoints, higher maxima)."""
    return t if t <= 32 else 32 * math.ceil(t / 32)


def null_thresholds(n: int, t: int, k: int, two_sided: bool, level: float) -> tuple[float, float]:
    """(level, change) thresholds so that each has family-wise chance <= ``level`` / 2."""
    sims = _null_maxima(n, _checkpoint_bucket(t), k, two_sided)
    return (
        max(_upper_quantile(lv, level / 2) for lv, _ in sims),
        max(_upper_quantile(ch, level / 2) for _, ch in sims),
    )


# -- families ---------------------------------------------------------------------------------


class _Table(NamedTuple):
    group: str
    runs: list[str]
    steps: list[int]
    values: np.ndarray  # (n, T), NaN where a run has no finite value
    nonfinite: list[tuple[str, int, float]]


def _tables(points: Iterable[Point], min_runs: int) -> list[_Table]:
    """One table per group over the checkpoints where >= ``min_runs`` runs have finite values."""
    by_group: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        by_group[p.group][p.step][p.run] = p.value
    tables = []
    for group, steps in sorted(by_group.items()):
        bad = [
            (run, step, v)
            for step, runs in sorted(steps.items())
            for run, v in runs.items()
            if not math.isfinite(v)
        ]
        kept = [
            s for s in sorted(steps) if sum(math.isfinite(v) for v in steps[s].values()) >= min_runs
        ]
        runs = sorted({r for s in kept for r in steps[s]})
        values = np.full((len(runs), len(kept)), np.nan)
        index = {r: i for i, r in enumerate(runs)}
        for j, s in enumerate(kept):
            for r, v in steps[s].items():
                if math.isfinite(v):
                    values[index[r], j] = v
        tables.append(_Table(group, runs, kept, values, bad))
    return tables


@dataclass(frozen=True)
class FamilyScores:
    """One tested (signal, group) family: every seed's bad-side robust z per checkpoint,
    its level and change statistics, and the thresholds they are held to (what a report
    draws beside the verdicts)."""

    signal: str
    group: str
    runs: list[str]
    steps: list[int]
    z: np.ndarray  # (seeds, checkpoints), bad side positive, NaN where a value is missing
    level: np.ndarray  # per seed; -inf where it cannot be computed
    level_at: np.ndarray
    change: np.ndarray
    change_at: np.ndarray
    level_threshold: float
    change_threshold: float
    two_sided: bool = False


def _nonfinite_verdicts(fam: Family, table: _Table) -> list[OutlierVerdict]:
    first_bad: dict[str, tuple[int, float]] = {}
    for run, step, value in table.nonfinite:
        first_bad.setdefault(run, (step, value))
    out = []
    for run, (step, value) in first_bad.items():
        count = sum(1 for r, _, _ in table.nonfinite if r == run)
        out.append(
            OutlierVerdict(table.group, run, fam.signal, step, value, count, math.nan, "non-finite")
        )
    return out


def _tested(
    families: Iterable[Family], settings: OutlierSettings
) -> tuple[list[OutlierVerdict], list[FamilyScores]]:
    k = settings.consecutive
    work = []
    nonfinite: list[OutlierVerdict] = []
    for fam in families:
        for table in _tables(fam.points, settings.min_runs):
            nonfinite += _nonfinite_verdicts(fam, table)
            if len(table.runs) >= settings.min_runs and len(table.steps) >= 1:
                work.append((fam, table))
    per_family = settings.false_alarm_rate / max(1, len(work))
    scores = []
    for fam, table in work:
        two_sided = fam.direction == "both"
        sign = -1.0 if fam.direction == "low" else 1.0
        z = sign * _zscores(table.values[None])
        level, level_at, change, change_at = (a[0] for a in _statistics(z, k, two_sided))
        n, t = table.values.shape
        level_thr, change_thr = null_thresholds(n, t, k, two_sided, per_family)
        scores.append(
            FamilyScores(
                fam.signal, table.group, table.runs, table.steps, z[0], level, level_at,
                change, change_at, level_thr, change_thr, two_sided,
            )
        )  # fmt: skip
    return nonfinite, scores


def flag_families(
    families: Iterable[Family], settings: OutlierSettings | None = None
) -> list[OutlierVerdict]:
    """Flag runs over every (signal, group) family at once, false alarms controlled over all
    of them; at most one verdict per run and signal (the earlier of level and change)."""
    return tested_families(families, settings)[0]


def tested_families(
    families: Iterable[Family], settings: OutlierSettings | None = None
) -> tuple[list[OutlierVerdict], list[FamilyScores]]:
    """``flag_families``'s verdicts with the scores of every family tested (flagged or not),
    from one computation: what a report draws beside the verdicts."""
    settings = settings or OutlierSettings()
    verdicts, scores = _tested(families, settings)
    for fs in scores:
        flagged_runs = {v.run for v in verdicts if v.signal == fs.signal and v.group == fs.group}
        for i, run in enumerate(fs.runs):
            found = []
            if fs.level[i] > fs.level_threshold:
                bad = np.abs(fs.z[i]) if fs.two_sided else fs.z[i]
                found.append(
                    OutlierVerdict(
                        fs.group,
                        run,
                        fs.signal,
                        fs.steps[int(fs.level_at[i])],
                        float(fs.level[i]),
                        int(np.sum(bad > fs.level_threshold)),
                        fs.level_threshold,
                        "level",
                    )
                )
            if fs.change[i] > fs.change_threshold:
                onset = int(fs.change_at[i])
                found.append(
                    OutlierVerdict(
                        fs.group,
                        run,
                        fs.signal,
                        fs.steps[onset],
                        float(fs.change[i]),
                        int(np.sum(~np.isnan(fs.z[i, onset:]))),
                        fs.change_threshold,
                        "change",
                    )
                )
            if found and run not in flagged_runs:
                verdicts.append(min(found, key=lambda v: (v.first_step, v.test)))
    return sorted(verdicts, key=lambda v: (v.signal, v.group, v.first_step, v.run)), scores


def find_outliers(
    points: Iterable[Point],
    signal: str,
    settings: OutlierSettings | None = None,
    direction: Direction | None = None,
) -> list[OutlierVerdict]:
    """Flagged runs of one signal, false alarms controlled over all its groups."""
    side = direction or BAD_SIDE.get(signal, "both")
    return flag_families([Family(signal, side, list(points))], settings)
