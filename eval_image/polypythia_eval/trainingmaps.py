"""Training maps (Hu et al. 2023, as used by PolyPythias) and per-item agreement (Cohen's kappa).

A training map is a Gaussian HMM fitted jointly to the per-checkpoint statistics of
all seeds of one size, as Hu et al.'s code does it (michahu/modeling-training,
``scripts/04_train_hmm/model_selection.py``): every metric z-scored within each run,
diagonal covariance, several random restarts (the best training likelihood wins), the
number of states chosen on held-out runs (log-likelihood, AIC and BIC on the test runs).
They hold out 20% of runs once; with the 5-10 seeds of a sweep we hold out each seed in
turn (leave-one-seed-out) and take the median of the held-out runs' BIC: the median, so
that an outlier seed (whose checkpoints no model of the others explains) does not pick
the model, and BIC, because held-out likelihood alone keeps rising with more states
when seeds are alike. Each run's Viterbi path is its walk through the
latent training phases; a seed whose path leaves the path most seeds take, and stays
away, is flagged with the step where it left (our addition: the paper reads departures
off the figure). Pure: no I/O.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class TrainingMap:
    """A fitted map: states, per-run paths and departures from the majority path."""

    n_states: int
    heldout_bic: dict[int, float]
    features: list[str]
    steps: dict[str, list[int]]
    paths: dict[str, list[int]]
    majority: dict[int, int | None]
    departures: dict[str, int | None]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _matrix(series: Mapping[str, Mapping[int, Mapping[str, float]]]) -> tuple[list[str], dict]:
    """Feature names present and finite at every checkpoint of every run, non-constant."""
    common: set[str] | None = None
    for points in series.values():
        for feats in points.values():
            keys = {k for k, v in feats.items() if v is not None and math.isfinite(v)}
            common = keys if common is None else common & keys
    names = sorted(common or ())
    arrays = {
        run: np.array([[points[s][n] for n in names] for s in sorted(points)], dtype=np.float64)
        for run, points in series.items()
        if points
    }
    return names, arrays


def _zscore_per_run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each feature z-scored over each run's own checkpoints (constant within a run -> 0)."""
    out = {}
    for run, arr in arrays.items():
        sd = arr.std(axis=0)
        ok = sd > 1e-12 * np.maximum(1.0, np.abs(arr).max(axis=0))
        out[run] = np.where(ok, (arr - arr.mean(axis=0)) / np.where(ok, sd, 1.0), 0.0)
    return out


def _fit_hmm(x: np.ndarray, lengths: list[int], n: int, seeds: Iterable[int]):
    """The best of several random restarts by training log-likelihood, or None."""
    from hmmlearn.hmm import GaussianHMM

    best = None
    for seed in seeds:
        model = GaussianHMM(
            n_components=n, covariance_type="diag", n_iter=200, random_state=seed, min_covar=1e-3
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.fit(x, lengths)
                score = model.score(x, lengths)
            except ValueError:  # a degenerate start (e.g. a state never left): next seed
                continue
        if np.isfinite(score) and (best is None or score > best[0]):
            best = (score, model)
    return best


def _stack(z: dict[str, np.ndarray], runs: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    return np.concatenate([z[r] for r in runs]), [len(z[r]) for r in runs]


def heldout_bic(z: dict[str, np.ndarray], n: int, seeds: Sequence[int]) -> float | None:
    """Median over runs of the BIC of that run under a model fitted to the other runs."""
    scores = []
    for held in z:
        others = [r for r in z if r != held]
        x, lengths = _stack(z, others)
        if n > len(x):
            return None
        fitted = _fit_hmm(x, lengths, n, seeds)
        if fitted is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = float(fitted[1].bic(z[held]))
        if not math.isfinite(score):
            return None
        scores.append(score)
    return float(np.median(scores))


def _relabel(paths: dict[str, np.ndarray], n: int) -> dict[str, list[int]]:
    """Number states by the mean position (fraction of training) at which runs visit them."""
    position: dict[int, list[float]] = {s: [] for s in range(n)}
    for path in paths.values():
        for i, state in enumerate(path):
            position[int(state)].append(i / max(len(path) - 1, 1))
    order = sorted(range(n), key=lambda s: (np.mean(position[s]) if position[s] else 2.0, s))
    rename = {old: new for new, old in enumerate(order)}
    return {run: [rename[int(s)] for s in path] for run, path in paths.items()}


def majority_path(steps: Mapping[str, Sequence[int]], paths: Mapping[str, Sequence[int]]):
    """Per step: the state most runs are in (None on a tie or with fewer than 3 runs there)."""
    at: dict[int, list[int]] = {}
    for run, path in paths.items():
        for step, state in zip(steps[run], path, strict=True):
            at.setdefault(step, []).append(state)
    out: dict[int, int | None] = {}
    for step in sorted(at):
        counts = Counter(at[step]).most_common()
        tie = len(counts) > 1 and counts[0][1] == counts[1][1]
        out[step] = None if len(at[step]) < 3 or tie else counts[0][0]
    return out


def departure(
    steps: Sequence[int],
    path: Sequence[int],
    majority: Mapping[int, int | None],
    min_run: int,
    lag: int = 1,
) -> int | None:
    """First step from which the path is off the majority for ``min_run`` checkpoints in a row;
    None if it never is.

    Off means: in none of the majority states of the ``lag`` checkpoints either side,
    so a seed that passes a phase boundary one checkpoint late is not a departure.
    A step without a majority counts as on it.
    """
    order = sorted(majority)
    index = {s: i for i, s in enumerate(order)}

    def off(step: int, state: int) -> bool:
        if majority.get(step) is None:
            return False
        i = index[step]
        near = {majority[s] for s in order[max(0, i - lag) : i + lag + 1]}
        return state not in near

    flags = [off(s, state) for s, state in zip(steps, path, strict=True)]
    for i in range(len(flags) - min_run + 1):
        if all(flags[i : i + min_run]):
            return int(steps[i])
    return None


def fit_training_map(
    series: Mapping[str, Mapping[int, Mapping[str, float]]],
    *,
    states: Sequence[int] = (1, 2, 3, 4, 5, 6),
    n_init: int = 5,
    min_run: int = 2,
    lag: int = 1,
    seed: int = 0,
) -> TrainingMap:
    """Fit one Gaussian HMM to all runs' checkpoint statistics; choose the number of states
    by the median leave-one-seed-out held-out BIC.

    ``series`` is run -> step -> {feature: value} (``weightstats.map_features``: Hu et
    al.'s metric set). Needs at least 3 runs (two to fit, one to hold out).
    """
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    names, arrays = _matrix(series)
    notes: list[str] = []
    if not arrays or not names:
        raise ValueError("training map: no feature is present at every checkpoint of every run")
    if len(arrays) < 3:
        raise ValueError(f"training map: {len(arrays)} runs; held-out model selection needs 3")
    steps = {run: sorted(series[run]) for run in arrays}
    z = _zscore_per_run(arrays)
    runs = list(z)
    restarts = range(seed, seed + n_init)
    scores: dict[int, float] = {}
    for n in states:
        score = heldout_bic(z, n, restarts)
        if score is None:
            notes.append(f"{n} states: too few checkpoints or no convergence")
            continue
        scores[n] = score
        best = min(scores, key=scores.get)
        if sum(1 for m in scores if m > best) >= 2:  # past the minimum twice: stop early
            notes.append(f"stopped at {n} states: held-out BIC rose twice past {best}")
            break
    if not scores:
        raise ValueError("training map: no HMM could be fitted")
    best_n = min(scores, key=scores.get)
    x, lengths = _stack(z, runs)
    fitted = _fit_hmm(x, lengths, best_n, restarts)
    if fitted is None:
        raise ValueError(f"training map: the {best_n}-state HMM did not converge on all runs")
    model = fitted[1]
    raw_paths = {r: model.predict(z[r]) for r in runs}
    paths = _relabel(raw_paths, best_n)
    majority = majority_path(steps, paths)
    departures = {r: departure(steps[r], paths[r], majority, min_run, lag) for r in runs}
    return TrainingMap(
        n_states=best_n,
        heldout_bic=scores,
        features=names,
        steps=steps,
        paths=paths,
        majority=majority,
        departures=departures,
        notes=notes,
    )


# Per-item agreement (PolyPythias section 4): kappa against the final checkpoint and seed 0.


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two label sequences; None when undefined (both constant, same label)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: sequences differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb.get(k, 0) for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _aligned(p: Mapping, q: Mapping) -> tuple[list, list]:
    qi = dict(zip(q["doc_id"], q["pred"], strict=True))
    pairs = [(x, qi[d]) for d, x in zip(p["doc_id"], p["pred"], strict=True) if d in qi]
    return [x for x, _ in pairs], [y for _, y in pairs]


def agreement(
    predictions: Mapping[str, Mapping[int, Mapping[str, Mapping]]], reference: str | None
) -> dict:
    """Kappa per run, task and step: vs the run's final checkpoint and vs ``reference``.

    ``predictions`` is run -> step -> task -> {"doc_id": [...], "pred": [...]} (the
    ``predictions`` block of evaluation files). Items are matched by ``doc_id``.
    """
    self_consistency: dict[str, dict[str, dict[int, float | None]]] = {}
    inter_seed: dict[str, dict[str, dict[int, float | None]]] = {}
    for run, by_step in predictions.items():
        if not by_step:
            continue
        final = by_step[max(by_step)]
        for step in sorted(by_step):
            for task, preds in by_step[step].items():
                if task in final:
                    a, b = _aligned(preds, final[task])
                    self_consistency.setdefault(run, {}).setdefault(task, {})[step] = cohen_kappa(
                        a, b
                    )
                ref = (predictions.get(reference) or {}).get(step, {}) if reference else {}
                if run != reference and task in ref:
                    a, b = _aligned(preds, ref[task])
                    inter_seed.setdefault(run, {}).setdefault(task, {})[step] = cohen_kappa(a, b)
    return {"reference": reference, "self_consistency": self_consistency, "inter_seed": inter_seed}
