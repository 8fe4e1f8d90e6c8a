"""The sweep report: one index.html with PNG figures and tables, plus summary.json.

``render_report`` is what ``polypythia report`` and the local driver call. It never
fails on a sweep with missing pieces (no evaluations yet, a failed run): it says
what is missing where the figure would be.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

from polypythia_eval import figures
from polypythia_eval.analysis import Analysis, analyse, eval_table, loss_history, ordered_tasks
from polypythia_eval.init_study import render_init_section, study
from polypythia_eval.results import json_safe
from polypythia_eval.sources import (
    SweepData,
    is_result_folder,
    load_result_files,
    load_sweep,
)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3} img{max-width:100%;border:1px solid #eee;margin:0.3em 0}
.missing{color:#a33} .note{color:#666;font-size:13px} .bad{color:#d62728;font-weight:bold}
"""


def _e(value) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    return f'<img src="{html.escape(path.name)}" alt="{html.escape(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _run_rows(sweep: SweepData) -> list[list]:
    rows = []
    for size in sweep.sizes():
        for run in sweep.by_size(size):
            steps, loss, _ = loss_history(run)
            last = float(loss[-1]) if len(loss) else None
            trained = f"{int(steps[-1]) if len(steps) else 0}/{run.planned_steps or '?'}"
            status = f"FAILED: {run.error}" if run.error else "; ".join(run.problems) or "ok"
            rows.append(
                [run.name, run.size, run.seed, trained, last, len(run.checkpoints),
                 len(run.evals), status]
            )  # fmt: skip
    return rows


def _size_section(sweep: SweepData, size: str, result: Analysis, out: Path, prefix: str) -> str:
    runs = sweep.by_size(size)
    parts = [f"<h2>{_e(size)} ({len(runs)} runs)</h2>"]
    slug = f"{prefix}{size}".replace(".", "_")
    if any(r.telemetry for r in runs):
        png = figures.loss_curves(size, runs, result.spikes, out / f"loss-{slug}.png")
        parts.append(_img(png, f"{size} loss"))
    elif not sweep.reference:
        parts.append(_missing("No training telemetry yet: no loss curves."))
    if any(
        isinstance(e.get("validation"), dict) and e["validation"].get("tokens")
        for r in runs
        for e in r.evals.values()
    ):
        png = figures.heldout_loss(size, runs, result.outliers, out / f"heldout-{slug}.png")
        parts.append(_img(png, f"{size} held-out loss"))
    table = eval_table(sweep).get(size, {})
    tasks = ordered_tasks(table)
    if tasks:
        png = figures.eval_scores(size, table, tasks, result.outliers, out / f"evals-{slug}.png")
        parts.append(_img(png, f"{size} evaluation scores"))
        if len(table) > len(tasks):
            parts.append(f'<p class="note">{len(tasks)} of {len(table)} tasks shown.</p>')
    else:
        parts.append(_missing("No evaluation results yet: no score curves."))
    if any(e.get("weight_stats") for r in runs for e in r.evals.values()):
        png = figures.weight_trajectories(size, runs, out / f"weights-{slug}.png")
        parts.append(_img(png, f"{size} weight statistics"))
    elif not sweep.reference:
        parts.append(_missing("No weight statistics yet (they come with evaluations)."))
    if size in result.maps:
        png = figures.state_paths(size, result.maps[size], out / f"map-{slug}.png")
        parts.append(_img(png, f"{size} training map"))
    if size in result.agreement and result.agreement[size]["self_consistency"]:
        png = figures.kappa_curves(size, result.agreement[size], out / f"kappa-{slug}.png")
        parts.append(_img(png, f"{size} agreement"))
    return "\n".join(parts)


def _verdict_rows(result: Analysis) -> tuple[list[list], list[list], list[list]]:
    spikes = [
        [e.run, e.signal, e.onset_step, e.peak_step, e.peak_value, e.magnitude, e.status,
         e.recovery_step, e.kind, e.cause]
        for e in result.spikes
    ]  # fmt: skip
    outliers = [
        [v.group, v.run, v.signal, v.test, v.first_step, v.score, v.threshold, v.checkpoints]
        for v in result.outliers
    ]
    maps = [
        [size, m.n_states, run, m.departures[run] if m.departures[run] is not None else "-"]
        for size, m in result.maps.items()
        for run in m.paths
    ]
    return spikes, outliers, maps


def _summary(sweep: SweepData, result: Analysis) -> dict:
    return json_safe(
        {
            "source": sweep.source,
            "generated": time.time(),
            "problems": sweep.problems,
            "runs": {
                r.name: {"size": r.size, "seed": r.seed, "problems": r.problems, "error": r.error}
                for r in sweep.runs
            },  # fmt: skip
            "spikes": [e.to_dict() for e in result.spikes],
            "outliers": [v.to_dict() for v in result.outliers],
            "training_maps": {s: m.to_dict() for s, m in result.maps.items()},
            "notes": result.notes,
        }
    )


def _sweep_body(sweep: SweepData, result: Analysis, out: Path, prefix: str = "") -> str:
    parts = []
    problems = list(sweep.problems)
    if problems:
        parts.append("<h2>Missing</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems))
        parts.append("</ul>")
    if sweep.runs:
        parts.append("<h2>Runs</h2>")
        parts.append(
            _table(
                ["run", "size", "seed", "steps", "last loss", "checkpoints", "evaluated", "status"],
                _run_rows(sweep),
            )  # fmt: skip
        )
    for size in sweep.sizes():
        parts.append(_size_section(sweep, size, result, out, prefix))
    spikes, outliers, maps = _verdict_rows(result)
    if not sweep.reference:
        parts.append("<h2>Loss spikes</h2>")
        parts.append(
            _table(
                [
                    "run",
                    "signal",
                    "onset",
                    "peak",
                    "peak value",
                    "magnitude (sd)",
                    "status",
                    "recovered at",
                    "kind",
                    "cause",
                ],
                spikes,
            )  # fmt: skip
            if spikes
            else "<p>No loss spikes detected.</p>"
        )
    parts.append("<h2>Cross-seed outliers</h2>")
    parts.append(
        _table(
            ["size", "run", "signal", "test", "first step", "score", "threshold", "checkpoints"],
            outliers,
        )
        if outliers
        else "<p>No outlier runs.</p>"
    )
    if maps:
        parts.append("<h2>Training maps: departures from the majority path</h2>")
        parts.append(_table(["size", "states", "run", "departs at step"], maps))
    if result.notes:
        parts.append("<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in result.notes))
        parts.append("</ul>")
    return "\n".join(parts)


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


def load_source(source: str, run_errors: dict[str, str] | None = None, **store_kwargs):
    """A sweep from storage, or a folder of lm-eval result files (auto-detected)."""
    if not source.startswith("s3://") and is_result_folder(source):
        return load_result_files(source)
    return load_sweep(source, run_errors=run_errors, **store_kwargs)


def render_report(
    source: str,
    out_dir: Path,
    *,
    pythia_evals: str | Path | None = None,
    run_errors: dict[str, str] | None = None,
    title: str | None = None,
    **store_kwargs,
) -> Path:
    """Write ``out_dir/index.html`` (+ PNGs, summary.json) for a sweep; return its path.

    ``source`` is a sweep folder (local or s3://) or a folder of lm-eval result
    files; ``pythia_evals`` adds a reference section from such a folder;
    ``run_errors`` (run -> message) marks runs the caller saw fail.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sweep = load_source(str(source), run_errors, **store_kwargs)
    result = analyse(sweep)
    body = [_sweep_body(sweep, result, out)]
    summary = _summary(sweep, result)
    studied = init_records(sweep)
    if len({r["init"] for r in studied}) > 1:
        init_result = study(studied)
        body.append(render_init_section(init_result, out))
        summary["init_study"] = {size: part["rows"] for size, part in init_result["sizes"].items()}
    if pythia_evals:
        ref = load_result_files(pythia_evals)
        ref_result = analyse(ref)
        body.append(f"<h1>Reference: {_e(Path(pythia_evals).name)}</h1>")
        body.append(_sweep_body(ref, ref_result, out, prefix="ref-"))
        summary["reference"] = _summary(ref, ref_result)
    name = title or f"polypythia report: {Path(str(source).rstrip('/')).name}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(name)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(name)}</h1>"
        f"<p class='note'>source: {_e(source)} &middot; generated "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>" + "\n".join(body) + "</body></html>"
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    index = out / "index.html"
    index.write_text(page)
    return index
