"""Scores out of an evaluation file (lm-eval's result structure), for any lm-eval version.

Pure, and in the operator package because the operator, the local driver and the
report all read them: the Pythia files use ``"acc"`` where lm-eval 0.4 writes
``"acc,none"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from polypythia.monitoring.outliers import Direction

# The held-out loss of an evaluation file, exported as this pseudo-task's ``loss`` metric
# (``loss`` is no headline metric: the cross-seed test takes it as its loss signal instead).
VALIDATION_TASK = "validation"
# Metric preferred as a task's headline score, in order.
HEADLINE_METRICS = ("acc", "acc_norm", "pct_stereotype", "exact_match", "perplexity")
# Metrics where a high value is bad; every other headline metric is better high.
LOWER_IS_BETTER = frozenset(
    {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "pct_stereotype"}
)


def metric_name(key: str) -> tuple[str, str | None]:
    """``"acc,none"`` -> ("acc", "none"); ``"acc"`` (old harness) -> ("acc", None)."""
    name, _, flt = key.partition(",")
    return name, (flt or None)


def task_scores(result_file: Mapping) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from an evaluation file of any lm-eval version.

    Standard errors, aliases and non-numeric fields are left out; for filtered
    metrics the ``none`` filter (or the first one seen) wins. The held-out loss, when
    recorded, is ``{"validation": {"loss": ...}}``.
    """
    out: dict[str, dict[str, float]] = {}
    for task, metrics in (result_file.get("results") or {}).items():
        if not isinstance(metrics, Mapping):
            continue
        scores: dict[str, float] = {}
        for key, value in metrics.items():
            name, flt = metric_name(key)
            if name.endswith("_stderr") or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if name in scores and flt not in (None, "none"):
                continue
            scores[name] = float(value)
        if scores:
            out[task] = scores
    held = result_file.get("validation")
    loss = held.get("loss") if isinstance(held, Mapping) else None
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
        out[VALIDATION_TASK] = {"loss": float(loss)}
    return out


def headline(scores: Mapping[str, float]) -> tuple[str, float] | None:
    """The task's headline metric and value (accuracy first)."""
    for name in HEADLINE_METRICS:
        if name in scores:
            return name, scores[name]
    return None


def bad_side(metric: str) -> Direction:
    """Which side of the seed median makes a run suspicious on this metric."""
    return "high" if metric in LOWER_IS_BETTER else "low"
