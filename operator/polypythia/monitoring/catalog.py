"""THE catalogue of metric names: the exporter builds its metrics from it, the
alert rules and the dashboard are tested against it, ``docs/metrics.md`` is
generated from it (``python -m polypythia.monitoring.catalog --markdown``).

Prometheus conventions: ``polypythia_`` prefix, base units (seconds, ratios),
counters end in ``_total``; labels are bounded (never a step or a time).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from polypythia.runcore.phase import RunPhase

MetricType = Literal["gauge", "counter", "histogram"]

RUN_LABELS: tuple[str, ...] = ("namespace", "sweep", "size", "seed", "init", "run")
SWEEP_LABELS: tuple[str, ...] = ("namespace", "sweep")
# Every label any metric may carry; each has a bounded set of values.
LABELS: dict[str, str] = {
    "namespace": "Kubernetes namespace of the sweep (`local` in local mode)",
    "sweep": "sweep name",
    "size": "model size preset (e.g. `410m`)",
    "seed": "run seed",
    "init": "initialisation strategy name of the run (`pythia` unless the sweep sets `inits`)",
    "run": "run name, unique in the sweep (`<sweep>-<size>-s<seed>[-<init>]`)",
    "signal": "`loss` or `grad_norm` (spikes); `loss` or `eval` (outliers)",
    "kind": "`seed-specific` or `common-mode` (most runs, or most runs of a data order, spiked at that step)",
    "cause": "why a common-mode spike happened: `data` (shared data order), `schedule-or-system` (different orders), `unknown`; `none` for seed-specific",
    "task": "evaluation task",
    "metric": "evaluation metric of the task (e.g. `acc`)",
    "phase": "run phase (see PHASES)",
}
PHASES: tuple[str, ...] = tuple(p.value for p in RunPhase)
RECONCILE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Metric:
    """One exported metric family."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]


def _run(name: str, type_: MetricType, help_: str, *extra: str) -> Metric:
    return Metric(name, type_, help_, RUN_LABELS + extra)


METRICS: tuple[Metric, ...] = (
    _run("polypythia_run_loss", "gauge", "Training loss of the last step."),
    _run(
        "polypythia_run_loss_smoothed",
        "gauge",
        "Exponential moving average of the training loss (weight 0.05 per step).",
    ),
    _run(
        "polypythia_run_heldout_loss",
        "gauge",
        "Held-out loss of the last step that measured one (telemetry field `heldout_loss`).",
    ),
    _run("polypythia_run_grad_norm", "gauge", "Gradient norm (before clipping) of the last step."),
    _run("polypythia_run_step", "gauge", "Last optimiser step completed."),
    _run(
        "polypythia_run_last_step_timestamp_seconds",
        "gauge",
        "Unix time at which the last step completed.",
    ),
    _run("polypythia_run_tokens_per_second", "gauge", "Training throughput of the last step."),
    _run(
        "polypythia_spikes_total",
        "counter",
        "Spikes detected, by signal, kind and cause; counted once the kind is settled "
        "(every run of the sweep passed the onset, or ended).",
        "signal",
        "kind",
        "cause",
    ),
    _run(
        "polypythia_spike_in_progress",
        "gauge",
        "1 while a spike of the signal has started and not yet recovered.",
        "signal",
    ),
    _run(
        "polypythia_spikes_unrecovered_total",
        "counter",
        "Spikes still above baseline recoverySteps after their onset.",
        "signal",
    ),
    _run(
        "polypythia_spike_score_ratio",
        "gauge",
        "OLMo 2 spike score: share of the last scoreWindow values at least "
        "scoreThreshold sd from the rolling mean.",
        "signal",
    ),
    _run(
        "polypythia_outlier_score",
        "gauge",
        "Robust z-score of the run against the other seeds of its group (size, init, branch "
        "parent) at the latest checkpoint: the run core's, as in status and the report.",
        "signal",
    ),
    _run(
        "polypythia_outlier",
        "gauge",
        "1 when the run is a cross-seed outlier for the signal, else 0.",
        "signal",
    ),
    _run(
        "polypythia_eval_score",
        "gauge",
        "Evaluation score of the latest evaluated checkpoint.",
        "task",
        "metric",
    ),
    _run("polypythia_eval_step", "gauge", "Step of the latest evaluated checkpoint."),
    _run(
        "polypythia_run_phase", "gauge", "1 for the run's current phase, 0 for the others.", "phase"
    ),
    _run("polypythia_checkpoints_total", "counter", "Complete checkpoints written by the run."),
    _run(
        "polypythia_checkpoint_last_step", "gauge", "Step of the run's latest complete checkpoint."
    ),
    _run("polypythia_evaluations_total", "counter", "Checkpoint evaluations completed."),
    _run(
        "polypythia_evaluation_failures_total",
        "counter",
        "Checkpoint evaluations that failed after their retries.",
    ),
    _run(
        "polypythia_evaluations_pending",
        "gauge",
        "Complete checkpoints selected for evaluation and not yet evaluated.",
    ),
    _run("polypythia_run_retries_total", "counter", "Times the run was restarted after a failure."),
    _run("polypythia_run_rewinds_total", "counter", "Times the run was rewound after a spike."),
    Metric(
        "polypythia_sweep_runs",
        "gauge",
        "Runs of the sweep in each phase.",
        SWEEP_LABELS + ("phase",),
    ),
    Metric(
        "polypythia_reconcile_duration_seconds",
        "histogram",
        "Time the operator spent in one reconcile pass of a sweep.",
        (),
    ),
    Metric(
        "polypythia_reconcile_errors_total",
        "counter",
        "Reconcile passes that ended in an error.",
        (),
    ),
)

_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> Metric:
    """The catalogue entry for ``name`` (KeyError if it is not exported)."""
    return _BY_NAME[name]


def series_names() -> set[str]:
    """Every name that can appear in the exposition (histograms add their suffixes)."""
    out = set()
    for m in METRICS:
        if m.type == "histogram":
            out.update(m.name + s for s in ("_bucket", "_sum", "_count", "_created"))
        else:
            out.add(m.name)
            if m.type == "counter":
                out.add(m.name.removesuffix("_total") + "_created")
    return out


def markdown() -> str:
    """The metric reference page (``docs/metrics.md``)."""
    lines = [
        "# Metrics",
        "",
        "Generated from `operator/polypythia/monitoring/catalog.py` by",
        "`python -m polypythia.monitoring.catalog --markdown`; do not edit by hand.",
        "",
        "| name | type | labels | help |",
        "|---|---|---|---|",
    ]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} |")
    lines += ["", "## Labels", "", "| label | values |", "|---|---|"]
    lines += [f"| `{name}` | {text} |" for name, text in LABELS.items()]
    lines += ["", "Run phases: " + ", ".join(f"`{p}`" for p in PHASES) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="polypythia metric catalogue")
    parser.add_argument("--markdown", action="store_true", help="print docs/metrics.md")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    else:
        for m in METRICS:
            print(f"{m.name}\t{m.type}\t{','.join(m.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
