"""Training maps (Hu et al. 2023, as used by PolyPythias) and per-item agreement (Cohen's kappa).

A training map is a Gaussian HMM fitted jointly to the per-checkpoint statistics of
all seeds of one size; each run's Viterbi path is its walk through the latent
training phases. A seed whose path leaves the path most seeds take, and stays
away, is flagged with the step where it left. Pure: no I/O.
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
    bic: dict[int, float]
    features: list[str]
    components: int
    explained_variance: list[float]
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


def _project(arrays: dict[str, np.ndarray], max_components: int):
    """Z-score every feature over all points, then PCA to a few components."""
    stacked = np.concatenate(list(arrays.values()))
    sd = stacked.std(axis=0)
    keep = sd > 1e-12 * np.maximum(1.0, np.abs(stacked).max(axis=0))
    z = (stacked[:, keep] - stacked[:, keep].mean(axis=0)) / sd[keep]
    k = max(1, min(max_components, z.shape[1], z.shape[0] - 1))
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    explained = (s**2 / max((s**2).sum(), 1e-300))[:k]
    projected = z @ vt[:k].T
    out, start = {}, 0
    for run, arr in arrays.items():
        out[run] = projected[start : start + len(arr)]
        start += len(arr)
    return out, keep, [float(e) for e in explained]


def _fit_hmm(x: np.ndarray, lengths: list[int], n: int, seeds: Iterable[int]):
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
    max_components: int = 4,
    n_init: int = 3,
    min_run: int = 2,
    lag: int = 1,
    seed: int = 0,
) -> TrainingMap:
    """Fit one Gaussian HMM to all runs' checkpoint statistics; choose states by BIC.

    ``series`` is run -> step -> {feature: value} (e.g. ``weightstats.map_features``).
    Features are z-scored over all points and reduced by PCA to ``max_components``
    (a full 100-feature HMM on a few dozen checkpoints would be all parameters).
    """
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    names, arrays = _matrix(series)
    notes: list[str] = []
    if not arrays or not names:
        raise ValueError("training map: no feature is present at every checkpoint of every run")
    steps = {run: sorted(series[run]) for run in arrays}
    projected, keep, explained = _project(arrays, max_components)
    runs = list(projected)
    x = np.concatenate([projected[r] for r in runs])
    lengths = [len(projected[r]) for r in runs]
    bic: dict[int, float] = {}
    models = {}
    for n in states:
        if n > len(x):
            notes.append(f"{n} states skipped: only {len(x)} checkpoints")
            continue
        fitted = _fit_hmm(x, lengths, n, range(seed, seed + n_init))
        if fitted is None:
            notes.append(f"{n} states: the HMM did not converge")
            continue
        try:
            bic[n] = float(fitted[1].bic(x, lengths))
        except ValueError as exc:
            notes.append(f"{n} states: {exc}")
            continue
        models[n] = fitted[1]
    if not models:
        raise ValueError("training map: no HMM could be fitted")
    best_n = min(bic, key=bic.get)
    model = models[best_n]
    raw_paths = {r: model.predict(projected[r]) for r in runs}
    paths = _relabel(raw_paths, best_n)
    majority = majority_path(steps, paths)
    if len(runs) < 3:
        notes.append("fewer than 3 runs: no majority path, no departures")
    departures = {r: departure(steps[r], paths[r], majority, min_run, lag) for r in runs}
    return TrainingMap(
        n_states=best_n,
        bic=bic,
        features=[n for n, k in zip(names, keep, strict=True) if k],
        components=projected[runs[0]].shape[1],
        explained_variance=explained,
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
