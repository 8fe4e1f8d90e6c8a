"""The sweep report: one self-contained ``index.html`` (Plotly figures, plotly.js inlined once,
readable offline) rendered from a Jinja2 template, plus ``summary.json``.

``render_report`` is what ``polypythia report`` and the local driver call. It never fails
on a sweep with missing pieces (no evaluations yet, a failed run): it says what is missing
where the figure would be. The page leads with findings in words (which seed spiked, when,
whether it recovered; which seed is an outlier and on which signal; how scores moved), then
a section per size. The functions that build rows and findings are pure.
"""

from __future__ import annotations

import base64
import json
import math
import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from polypythia.monitoring.outliers import FamilyScores, OutlierSettings, OutlierVerdict
from polypythia.monitoring.settings import InstabilitySettings
from polypythia.monitoring.spikes import SpikeEvent, SpikeSettings
from polypythia.monitoring.stored import applied_settings
from polypythia.output import camel_keys
from polypythia.storage.layout import APPLIED_SWEEP
from polypythia_eval import figures
from polypythia_eval.analysis import Analysis, analyse, eval_table, loss_history, ordered_tasks
from polypythia_eval.init_study import render_init_section, study
from polypythia_eval.results import json_safe
from polypythia_eval.sources import (
    RunData,
    SweepData,
    is_result_folder,
    load_result_files,
    load_sweep,
)

TEMPLATE = "report.html.jinja"
# Final training loss: the mean of this many last steps (one step's loss is noisy).
FINAL_LOSS_STEPS = 10
MIN_SEEDS = OutlierSettings().min_runs
COMMON_TOLERANCE = SpikeSettings().common_mode_tolerance


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def final_train_loss(run: RunData, last: int = FINAL_LOSS_STEPS) -> float | None:
    """Mean training loss over the run's last ``last`` logged steps."""
    _, loss, _ = loss_history(run)
    tail = loss[-last:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if len(tail) else None


def final_heldout(run: RunData) -> tuple[int, float] | None:
    """(step, held-out loss) at the run's last checkpoint that recorded one."""
    points = [
        (step, r["validation"]["loss"]) for step, r in run.evals.items()
        if isinstance(r.get("validation"), dict) and r["validation"].get("tokens")
        and isinstance(r["validation"].get("loss"), (int, float))
    ]  # fmt: skip
    return max(points) if points else None


def outlier_verdict(
    run: str,
    seeds: int,
    verdicts: list[OutlierVerdict],
    scores: list[FamilyScores],
    min_seeds: int = MIN_SEEDS,
    branch: bool = False,
) -> str:
    """What the cross-seed test said about one run, in words: flagged (signal, test, score
    and threshold), tested and not flagged, or not tested and why. ``seeds`` counts the runs
    of its group (a branch is compared with the other branches of its parent checkpoint)."""
    mine = [v for v in verdicts if v.run == run]
    if mine:
        parts = []
        for v in sorted(mine, key=lambda v: (v.first_step, v.signal)):
            if v.test == "non-finite":
                parts.append(f"{v.signal}: non-finite value at step {v.first_step}")
            else:
                parts.append(
                    f"{v.signal} from step {v.first_step} ({v.test} test: score "
                    f"{v.score:.2f} > threshold {v.threshold:.2f})"
                )
        return "outlier: " + "; ".join(parts)
    tested = sorted({fs.signal for fs in scores if run in fs.runs})
    if tested:
        return f"not an outlier (tested on {len(tested)} signal{'s' if len(tested) > 1 else ''})"
    if seeds < min_seeds:
        noun = ("branch", "branches") if branch else ("seed", "seeds")
        what = f"{seeds} {noun[seeds != 1]}" + (" of its parent checkpoint" if branch else "")
        return f"not tested ({what}; the test needs {min_seeds})"
    return f"not tested (no checkpoint with {min_seeds} seeds evaluated yet)"


def rewind_text(run: RunData) -> str:
    """The run's recorded rewinds: restart step and the spike that caused each."""
    if not run.rewinds:
        return "none"
    return "; ".join(
        f"restarted at step {r.get('restartStep')} (spike at step "
        f"{(r.get('spike') or {}).get('onsetStep', '?')})"
        for r in run.rewinds
    )


def branch_text(run: RunData) -> str:
    """'branch of <parent> at step N (optimizer restored|fresh)', or '' for ordinary runs."""
    if not run.branch:
        return ""
    b = run.branch
    return f"branch of {run.parent} at step {b.get('step')} (optimizer {b.get('optimizer', '?')})"


def summary_rows(runs: list[RunData], result: Analysis) -> list[dict]:
    """One row per run of a size: the summary table's columns."""
    groups = Counter(result.groups.values())
    rows = []
    for run in runs:
        seeds = groups.get(result.groups.get(run.name, ""), 1)
        steps, _, _ = loss_history(run)
        held = final_heldout(run)
        spikes = [e for e in result.spikes if e.run == run.name]
        rows.append(
            {
                "run": run.name,
                "seed": run.seed,
                "branch": branch_text(run),
                "steps": f"{int(steps[-1]) if len(steps) else 0}/{run.planned_steps or '?'}",
                "train_loss": final_train_loss(run),
                "heldout_loss": held[1] if held else None,
                "heldout_step": held[0] if held else None,
                "spikes": [figures.spike_text(e) for e in spikes],
                "outlier": outlier_verdict(
                    run.name,
                    seeds,
                    result.outliers,
                    result.scores,
                    result.outlier_settings.min_runs,
                    branch=bool(run.branch),
                ),
                "flagged": any(v.run == run.name for v in result.outliers),
                "rewinds": rewind_text(run),
                "status": f"FAILED: {run.error}" if run.error else "; ".join(run.problems) or "ok",
            }
        )
    return rows


@dataclass
class EvalRow:
    """One task of the evaluation table: per checkpoint the median and range over seeds."""

    task: str
    steps: list[int]
    median: dict[int, float] = field(default_factory=dict)
    low: dict[int, float] = field(default_factory=dict)
    high: dict[int, float] = field(default_factory=dict)
    seeds: dict[int, int] = field(default_factory=dict)
    per_seed: dict[str, dict[int, float]] = field(default_factory=dict)


def eval_rows(table: dict[str, dict[str, dict[int, float]]], tasks: list[str]) -> list[EvalRow]:
    """Task x checkpoint: median, min and max over the seeds that have a score there."""
    rows = []
    for task in tasks:
        runs = table[task]
        steps = sorted({s for by in runs.values() for s in by})
        row = EvalRow(task, steps, per_seed={r: dict(by) for r, by in sorted(runs.items())})
        for step in steps:
            values = [by[step] for by in runs.values() if step in by and math.isfinite(by[step])]
            if values:
                row.median[step] = float(np.median(values))
                row.low[step], row.high[step] = float(min(values)), float(max(values))
                row.seeds[step] = len(values)
        rows.append(row)
    return rows


def spike_findings(spikes: list[SpikeEvent], runs: int, limit: int = 10) -> list[str]:
    """Seed-specific spikes one by one (the ``limit`` largest), common-mode ones once per
    shared onset (within the detector's common-mode tolerance)."""
    own = [e for e in spikes if e.kind != "common-mode"]
    top = sorted(own, key=lambda e: -e.magnitude if math.isfinite(e.magnitude) else -math.inf)
    shown = sorted(top[:limit], key=lambda e: (e.onset_step, e.run))
    out = [f"{e.run}: {figures.spike_text(e)}." for e in shown]
    if len(own) > limit:
        out.append(f"{len(own) - limit} smaller seed-specific spikes: see the spike table.")
    shared = sorted((e for e in spikes if e.kind == "common-mode"), key=lambda e: e.onset_step)
    groups: list[list[SpikeEvent]] = []
    for e in shared:
        group = next(
            (g for g in groups if g[0].signal == e.signal
             and e.onset_step - g[0].onset_step <= COMMON_TOLERANCE),
            None,
        )  # fmt: skip
        if group is None:
            groups.append([e])
        else:
            group.append(e)
    for g in groups:
        hit = {e.run for e in g}
        out.append(
            f"common-mode {g[0].signal} spike at step {g[0].onset_step} in {len(hit)} of {runs} "
            f"runs (cause: {g[0].cause}): shared by the sweep, not one seed's instability."
        )
    return out


def eval_findings(rows: list[EvalRow], limit: int = 4) -> list[str]:
    """How each shown task's median score moved from the first to the last checkpoint."""
    out = []
    for row in rows[:limit]:
        steps = [s for s in row.steps if s in row.median]
        if len(steps) < 2:
            if steps:
                out.append(
                    f"{row.task}: only step {steps[0]} evaluated (median {_fmt(row.median[steps[0]])})."
                )
            continue
        first, last = steps[0], steps[-1]
        best = max(steps, key=lambda s: row.median[s])
        out.append(
            f"{row.task}: median {_fmt(row.median[first])} at step {first} → "
            f"{_fmt(row.median[last])} at step {last} (best {_fmt(row.median[best])} at step "
            f"{best}; seeds at the end {_fmt(row.low[last])} to {_fmt(row.high[last])})."
        )
    return out


def heldout_findings(runs: list[RunData]) -> list[str]:
    """How the seeds' median held-out loss moved from the first to the last checkpoint."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        if run.branch:
            continue
        for step, r in run.evals.items():
            v = r.get("validation")
            if isinstance(v, dict) and v.get("tokens") and isinstance(v.get("loss"), (int, float)):
                by_step[step].append(float(v["loss"]))
    if len(by_step) < 2:
        return []
    first, last = min(by_step), max(by_step)
    return [
        f"held-out loss: median {_fmt(float(np.median(by_step[first])))} at step {first} → "
        f"{_fmt(float(np.median(by_step[last])))} at step {last}."
    ]


def findings(sweep: SweepData, result: Analysis, tables: dict) -> dict[str, list[str]]:
    """Per size, what a reader should take away, in sentences."""
    out: dict[str, list[str]] = {}
    for size in sweep.sizes():
        runs = sweep.by_size(size)
        names = {r.name for r in runs}
        lines = spike_findings([e for e in result.spikes if e.run in names], len(runs))
        if not any(e.run in names for e in result.spikes) and any(r.telemetry for r in runs):
            lines.append("no loss or gradient-norm spikes in any seed.")
        flagged = [v for v in result.outliers if v.run in names]
        seeds = len([r for r in runs if not r.branch])
        for v in flagged:
            said = outlier_verdict(v.run, seeds, [v], []).removeprefix("outlier: ")
            lines.append(f"{v.run} is a cross-seed outlier on {said}.")
        tested = any(set(fs.runs) & names for fs in result.scores)
        if not flagged and tested:
            lines.append("no seed is a cross-seed outlier on any tested signal.")
        elif not tested:
            needed = result.outlier_settings.min_runs
            lines.append(f"outlier test: {outlier_verdict('', seeds, [], [], needed)}.")
        tmap = result.maps.get(size)
        if tmap is not None:
            for run, at in tmap.departures.items():
                if at is not None:
                    lines.append(f"{run} leaves the other seeds' training-map path at step {at}.")
        for run in runs:
            if run.branch:
                lines.append(f"{run.name} is a {branch_text(run)}.")
            if run.rewinds:
                lines.append(f"{run.name} was rewound: {rewind_text(run)}.")
        lines += heldout_findings(runs)
        lines += eval_findings(tables.get(size, []))
        out[size] = lines
    return out


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def size_section(sweep: SweepData, size: str, result: Analysis, prefix: str = "") -> dict:
    """Everything one size's section shows: summary rows, figures, tables."""
    runs = sweep.by_size(size)
    names = [r.name for r in runs]
    palette = figures.colours(names)
    flagged = {v.run for v in result.outliers if v.run in names}
    table = eval_table(sweep).get(size, {})
    tasks = ordered_tasks(table)
    scores = [fs for fs in result.scores if set(fs.runs) & set(names)]
    shown: dict[str, figures.Figure] = {}
    if not sweep.reference:
        spikes = [e for e in result.spikes if e.run in palette]
        shown["train"] = figures.training_curves(size, runs, spikes, palette, flagged)
        shown["heldout"] = figures.heldout_loss(size, runs, result.outliers, palette)
    if tasks:
        shown["evals"] = figures.eval_curves(size, table, tasks, result.outliers, palette)
    else:
        shown["evals"] = figures.Figure(f"evals-{size}", f"{size}: evaluation scores",
                                        absent="No evaluation results yet: no score curves.")  # fmt: skip
    if not sweep.reference:
        shown["weights"] = figures.weight_statistics(size, runs, palette)
    if size in result.maps:
        shown["map"] = figures.training_map(size, result.maps[size])
    if scores:
        shown["outliers"] = figures.outlier_scores(size, scores, palette)
    if size in result.agreement and result.agreement[size]["self_consistency"]:
        shown["kappa"] = figures.kappa_curves(size, result.agreement[size], palette)
    for fig in shown.values():
        fig.key = _key(prefix + fig.key)
    outlier_rows = [
        {"signal": fs.signal, "run": run, "level": fs.level[i], "change": fs.change[i],
         "level_threshold": fs.level_threshold, "change_threshold": fs.change_threshold,
         "flagged": fs.level[i] > fs.level_threshold or fs.change[i] > fs.change_threshold}
        for fs in scores for i, run in enumerate(fs.runs)
    ]  # fmt: skip
    return {
        "name": size,
        "seeds": len([r for r in runs if not r.branch]),
        "rows": summary_rows(runs, result),
        "figures": shown,
        "evals": eval_rows(table, tasks),
        "more_tasks": max(0, len(table) - len(tasks)),
        "id": _key(f"{prefix}size-{size}"),
        "outlier_rows": outlier_rows,
        "has_telemetry": any(r.telemetry for r in runs),
    }


def sweep_context(sweep: SweepData, result: Analysis, prefix: str = "") -> dict:
    """The template's view of one sweep (the report's own, or a reference)."""
    sections = [size_section(sweep, size, result, prefix) for size in sweep.sizes()]
    return {
        "reference": sweep.reference,
        "problems": list(sweep.problems),
        "sections": sections,
        "findings": findings(sweep, result, {s["name"]: s["evals"] for s in sections}),
        "spikes": [
            {
                "run": e.run,
                "signal": e.signal,
                "onset": e.onset_step,
                "peak": e.peak_step,
                "peak_value": e.peak_value,
                "magnitude": e.magnitude,
                "status": e.status,
                "recovery": e.recovery_step,
                "label": figures.spike_label(e),
            }
            for e in result.spikes
        ],  # fmt: skip
        "outliers": [v.to_dict() for v in result.outliers],
        "notes": list(result.notes),
    }


def _summary(sweep: SweepData, result: Analysis) -> dict:
    return json_safe(
        {
            "source": sweep.source,
            "generated": time.time(),
            "problems": sweep.problems,
            "runs": {
                r.name: {
                    "size": r.size,
                    "seed": r.seed,
                    "problems": r.problems,
                    "error": r.error,
                    "branch": r.branch,
                    "rewinds": len(r.rewinds),
                }
                for r in sweep.runs
            },  # fmt: skip
            "spikes": [e.to_dict() for e in result.spikes],
            "outliers": [v.to_dict() for v in result.outliers],
            "outlierSettings": {
                "falseAlarmRate": result.outlier_settings.false_alarm_rate,
                "consecutive": result.outlier_settings.consecutive,
                "signals": list(result.outlier_settings.signals),
            },
            "training_maps": {s: m.to_dict() for s, m in result.maps.items()},
            "notes": result.notes,
        }
    )


def init_records(sweep: SweepData) -> list[dict]:
    """Loss histories of the runs of an init study, in init_study's record format."""
    records = []
    for run in sweep.runs:
        if run.init is None or not run.telemetry:
            continue
        records.append(
            {
                "run": run.name,
                "size": run.size.removesuffix(f"-{run.init}"),
                "seed": run.seed,
                "init": run.init,
                "strategy": run.strategy,
                "steps": [r["step"] for r in run.telemetry],
                "loss": [r["loss"] for r in run.telemetry],
            }
        )
    return records


def _inline_images(fragment: str, folder: Path) -> str:
    """``<img src="x.png">`` of files in ``folder`` as data: URIs, so the page stands alone."""

    def embed(match: re.Match) -> str:
        path = folder / match[1]
        if not path.is_file():
            return match[0]
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    return re.sub(r'src="([^"/]+\.png)"', embed, fragment)


def load_source(source: str, run_errors: dict[str, str] | None = None, **store_kwargs):
    """A sweep from storage, or a folder of lm-eval result files (auto-detected)."""
    if not source.startswith("s3://") and is_result_folder(source):
        return load_result_files(source)
    return load_sweep(source, run_errors=run_errors, **store_kwargs)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["num"] = _fmt
    return env


def render_page(context: dict) -> str:
    """The HTML page from the package's template."""
    source = resources.files("polypythia_eval").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return _environment().from_string(source).render(**context)


def render_report(
    source: str,
    out_dir: Path,
    *,
    pythia_evals: str | Path | None = None,
    run_errors: dict[str, str] | None = None,
    title: str | None = None,
    settings: InstabilitySettings | None = None,
    **store_kwargs,
) -> Path:
    """Write ``out_dir/index.html`` (self-contained) and ``summary.json``; return the page.

    ``source`` is a sweep folder (local or s3://) or a folder of lm-eval result
    files; ``pythia_evals`` adds a reference section from such a folder;
    ``run_errors`` (run -> message) marks runs the caller saw fail; ``settings`` are the
    sweep's ``spec.instability`` ones (the live verdicts' spike and outlier settings); when
    None, those of the sweep as applied (its ``sweep.json`` in storage), else the CRD
    defaults.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = load_source(str(source), run_errors, **store_kwargs)
    settings_from = "given"
    if settings is None:
        settings = applied_settings(str(source), **store_kwargs)
        settings_from = APPLIED_SWEEP if settings else "CRD defaults"
    settings = settings or InstabilitySettings()
    outliers = settings.outliers
    result = analyse(sweep, outliers, settings.spikes)
    summary = _summary(sweep, result)
    summary["outlierSettings"]["from"] = settings_from
    summary["spikeSettings"] = {**camel_keys(asdict(settings.spikes)), "from": settings_from}
    summary["sizes"] = {}
    main = sweep_context(sweep, result)
    for section in main["sections"]:
        summary["sizes"][section["name"]] = json_safe(section["rows"])
    init_html = None
    studied = init_records(sweep)
    if len({r["init"] for r in studied}) > 1:
        init_result = study(studied)
        with tempfile.TemporaryDirectory() as tmp:
            init_html = Markup(
                _inline_images(render_init_section(init_result, Path(tmp)), Path(tmp))
            )
        summary["init_study"] = {size: part["rows"] for size, part in init_result["sizes"].items()}
    reference = None
    if pythia_evals:
        ref = load_result_files(pythia_evals)
        ref_result = analyse(ref, outliers, settings.spikes)
        reference = {"name": Path(pythia_evals).name, **sweep_context(ref, ref_result, "ref-")}
        summary["reference"] = _summary(ref, ref_result)
    name = title or f"polypythia report: {Path(str(source).rstrip('/')).name}"
    page = render_page(
        {
            "title": name,
            "source": str(source),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "plotly_js": Markup(get_plotlyjs()),
            "sweep": main,
            "runs": _run_rows(sweep),
            "init_html": init_html,
            "ref": reference,
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _run_rows(sweep: SweepData) -> list[dict]:
    rows = []
    for size in sweep.sizes():
        for run in sweep.by_size(size):
            steps, loss, _ = loss_history(run)
            rows.append(
                {
                    "run": run.name, "size": run.size, "seed": run.seed,
                    "steps": f"{int(steps[-1]) if len(steps) else 0}/{run.planned_steps or '?'}",
                    "last_loss": float(loss[-1]) if len(loss) else None,
                    "checkpoints": len(run.checkpoints), "evaluated": len(run.evals),
                    "status": f"FAILED: {run.error}" if run.error else "; ".join(run.problems)
                    or "ok",
                }
            )  # fmt: skip
    return rows
