"""The report's initialisation study: loss curves per init strategy, steps to reach loss
thresholds with confidence intervals across seeds, and the speed-up against ``pythia``.

Input is one record per run: ``{run, size, seed, init, steps, loss}`` (``init`` is the
init's name; an optional ``strategy`` says which strategy it uses, else the name is taken
as the strategy). Statistics, all across seeds:

- seed band: the min/max range of the seeds' smoothed losses on a common step grid;
- steps to threshold, without survivorship bias: a seed that never reaches the threshold
  is censored at its last step (it took *at least* that long), not dropped. The estimate is
  the Kaplan-Meier median over all seeds (the first step by which the estimated share of
  seeds still above the threshold is at most one half; none when more than half never get
  there), with a 95% percentile bootstrap interval over seeds (upper end open when too many
  resamples have no median);
- speed-up: baseline median steps / strategy median steps, with a 95% percentile bootstrap
  interval resampling seeds independently within each strategy (fixed bootstrap seed).
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np

BASELINE = "pythia"
SMOOTH = 5
LEVELS = (0.5, 0.8, 0.95)  # auto thresholds: fractions of the baseline's loss drop
GRID_POINTS = 200
BOOTSTRAP = 2000
BAND = "min/max across seeds"
CI_METHOD = (
    "Kaplan-Meier median over all seeds (seeds that never reach it censored at their last "
    "step), 95% percentile bootstrap over seeds (2000 resamples)"
)
SPEEDUP_METHOD = "ratio of Kaplan-Meier medians, 95% percentile bootstrap over seeds"


def smooth_loss(loss, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over the last ``window`` points (fewer at the start); NaN where the
    window holds a non-finite loss, so a diverged stretch never counts as reaching a level."""
    values = np.asarray(loss, dtype=np.float64)
    if window <= 1 or values.size == 0:
        return values.copy()
    bad = ~np.isfinite(values)
    sums = np.cumsum(np.insert(np.where(bad, 0.0, values), 0, 0.0))
    bads = np.cumsum(np.insert(bad, 0, False))
    idx = np.arange(1, values.size + 1)
    start = np.maximum(idx - window, 0)
    mean = (sums[idx] - sums[start]) / (idx - start)
    return np.where(bads[idx] > bads[start], np.nan, mean)


def steps_to_threshold(steps, loss, threshold: float, smooth: int = SMOOTH) -> int | None:
    """The first step whose smoothed loss is <= ``threshold``; None if never reached."""
    smoothed = smooth_loss(loss, smooth)
    hit = np.flatnonzero(np.isfinite(smoothed) & (smoothed <= threshold))
    return int(np.asarray(steps)[hit[0]]) if hit.size else None


def km_median(times, reached) -> float | None:
    """Kaplan-Meier median time to threshold: ``times`` the step reached, or the last step
    seen for a seed that never reached it (``reached`` False: censored). None when the
    estimated share still above the threshold never falls to one half."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(reached, dtype=bool)
    survival = 1.0
    for step in np.unique(t[e]):
        at_risk = int(np.sum(t >= step))
        events = int(np.sum((t == step) & e))
        survival *= 1.0 - events / at_risk
        if survival <= 0.5:
            return float(step)
    return None


def bootstrap_medians(times, reached, *, rounds: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """Kaplan-Meier medians of seed resamples (inf where a resample has no median)."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(reached, dtype=bool)
    rng = np.random.default_rng(seed)
    out = np.empty(rounds)
    for i, idx in enumerate(rng.integers(0, t.size, (rounds, t.size))):
        m = km_median(t[idx], e[idx])
        out[i] = math.inf if m is None else m
    return out


def _interval(samples: np.ndarray) -> tuple[float, float | None] | None:
    """95% percentile interval; an infinite upper end is None (open: not reached)."""
    if samples.size == 0 or not np.isfinite(samples).any():
        return None
    lo, hi = np.quantile(samples, [0.025, 0.975])
    return float(lo), (float(hi) if math.isfinite(hi) else None)


def _strategy(run: dict) -> str:
    return str(run.get("strategy") or run["init"])


def _curve(runs: list[dict], smooth: int) -> dict:
    """Mean smoothed loss and the min/max seed band on a grid all runs cover."""
    lo = max(min(r["steps"]) for r in runs)
    hi = min(max(r["steps"]) for r in runs)
    steps = np.unique(np.concatenate([np.asarray(r["steps"]) for r in runs]))
    grid = steps[(steps >= lo) & (steps <= hi)]
    if grid.size > GRID_POINTS:
        grid = grid[np.linspace(0, grid.size - 1, GRID_POINTS).round().astype(int)]
    rows = np.array(
        [np.interp(grid, r["steps"], smooth_loss(r["loss"], smooth)) for r in runs]
    )  # (seeds, grid)
    return {
        "steps": grid.tolist(),
        "mean": rows.mean(axis=0).tolist(),
        "low": rows.min(axis=0).tolist(),
        "high": rows.max(axis=0).tolist(),
        "seeds": len(runs),
    }


def auto_thresholds(runs: list[dict], smooth: int = SMOOTH) -> list[float]:
    """Loss levels 50/80/95% of the way from the runs' mean first smoothed loss down to the
    worst seed's final smoothed loss, so every one of these runs reaches them."""
    finite = [c[np.isfinite(c)] for c in (smooth_loss(r["loss"], smooth) for r in runs)]
    finite = [c for c in finite if c.size]
    if not finite:
        return []
    first = float(np.mean([c[0] for c in finite]))
    final = max(float(c[-1]) for c in finite)
    if not (np.isfinite(first) and np.isfinite(final)) or first <= final:
        return []
    return [first - level * (first - final) for level in LEVELS]


def _valid(run: dict) -> bool:
    return len(run.get("steps") or []) > 0 and len(run["steps"]) == len(run.get("loss") or [])


def _size_study(runs: list[dict], thresholds, smooth: int) -> dict:
    groups: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (str(r["init"]), r.get("seed", 0))):
        groups.setdefault(str(run["init"]), []).append(run)
    baselines = [name for name, rs in groups.items() if _strategy(rs[0]) == BASELINE]
    baseline = BASELINE if BASELINE in baselines else (baselines[0] if baselines else None)
    source = "given"
    if thresholds is None:
        source = f"auto from {baseline}" if baseline else "auto from all runs"
        thresholds = auto_thresholds(groups[baseline] if baseline else runs, smooth)
    censored: dict[tuple[str, float], tuple[list[float], list[bool]]] = {}
    rows = []
    for thr in thresholds:
        for name, group in groups.items():
            hits = [steps_to_threshold(r["steps"], r["loss"], thr, smooth) for r in group]
            censored[name, thr] = (
                [float(h) if h is not None else float(max(r["steps"])) for h, r in zip(
                    hits, group, strict=True)],
                [h is not None for h in hits],
            )  # fmt: skip
        base_boot = None
        if baseline:
            base_boot = bootstrap_medians(*censored[baseline, thr])
        for index, (name, group) in enumerate(groups.items(), 1):
            times, hit = censored[name, thr]
            median = km_median(times, hit)
            # resampled independently of the baseline (its own bootstrap seed)
            boot = bootstrap_medians(times, hit, seed=index) if len(group) >= 2 else np.empty(0)
            row = {
                "init": name,
                "strategy": _strategy(group[0]),
                "threshold": float(thr),
                "seeds": len(group),
                "reached": int(sum(hit)),
                "not_reached": len(group) - int(sum(hit)),
                "median_steps": median,
                "ci": _interval(boot),
                "speedup": None,
                "speedup_ci": None,
            }
            base_median = km_median(*censored[baseline, thr]) if baseline else None
            if base_median is not None and median is not None and median > 0:
                row["speedup"] = base_median / median
                if base_boot is not None and len(group) >= 2 and len(groups[baseline]) >= 2:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        ratio = np.where(boot > 0, base_boot / boot, np.nan)
                    ratio = ratio[~np.isnan(ratio)]
                    if ratio.size and np.isfinite(ratio).mean() >= 0.975:
                        finite = ratio[np.isfinite(ratio)]
                        lo, hi = np.quantile(finite, [0.025, 0.975])
                        row["speedup_ci"] = (float(lo), float(hi))
            rows.append(row)
    return {
        "baseline": baseline,
        "thresholds": [float(t) for t in thresholds],
        "thresholds_source": source,
        "curves": {name: _curve(group, smooth) for name, group in groups.items()},
        "rows": rows,
    }


def study(runs: list[dict], thresholds=None, *, smooth: int = SMOOTH) -> dict:
    """The study per model size. ``thresholds``: None (automatic), a list of losses for
    every size, or ``{size: [losses]}``."""
    by_size: dict[str, list[dict]] = {}
    skipped = []
    for run in runs:
        if _valid(run):
            by_size.setdefault(str(run["size"]), []).append(run)
        else:
            skipped.append(str(run.get("run")))
    sizes = {}
    for size, group in sorted(by_size.items()):
        given = thresholds.get(size) if isinstance(thresholds, dict) else thresholds
        sizes[size] = _size_study(group, given, smooth)
    return {
        "sizes": sizes,
        "skipped": skipped,
        "smooth": smooth,
        "band": BAND,
        "ci_method": CI_METHOD,
        "speedup_method": SPEEDUP_METHOD,
    }


def plot_curves(size: str, curves: dict, thresholds: list[float], path: Path) -> Path:
    """Mean smoothed loss per init with its min/max seed band; thresholds dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        (line,) = ax.plot(c["steps"], c["mean"], label=f"{name} ({c['seeds']} seeds)")
        ax.fill_between(c["steps"], c["low"], c["high"], color=line.get_color(), alpha=0.2)
    for thr in thresholds:
        ax.axhline(thr, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="step", ylabel="loss (smoothed)", title=f"{size}: loss by initialisation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _e(value) -> str:
    return html.escape(str(value))


def _fmt(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_ci(ci, digits: int = 1) -> str:
    if ci is None:
        return ""
    high = "not reached" if ci[1] is None else f"{ci[1]:.{digits}f}"
    return f" [{ci[0]:.{digits}f}, {high}]"


def _table(size_result: dict) -> str:
    head = (
        "<tr><th>init</th><th>strategy</th><th>loss threshold</th><th>median steps [95% CI]</th>"
        "<th>not reached</th><th>speed-up [95% CI]</th></tr>"
    )
    body = []
    for row in size_result["rows"]:
        if row["median_steps"] is None:
            steps = "not reached by half the seeds"
        else:
            steps = _fmt(row["median_steps"]) + _fmt_ci(row["ci"])
            if row["ci"] is None:
                steps += " (one seed: no interval)"
        speed = _fmt(row["speedup"], 2) + _fmt_ci(row["speedup_ci"], 2)
        if row["speedup"] is not None and row["speedup_ci"] is None:
            speed += " (too few seeds: no interval)"
        body.append(
            f"<tr><td>{_e(row['init'])}</td><td>{_e(row['strategy'])}</td>"
            f"<td>{row['threshold']:.4f}</td><td>{_e(steps)}</td>"
            f"<td>{row['not_reached']} of {row['seeds']}</td><td>{_e(speed)}</td></tr>"
        )
    return "<table>" + head + "".join(body) + "</table>"


def render_init_section(study_result: dict, out_dir: Path) -> str:
    """Write one PNG per size into ``out_dir``; return the report's HTML ``<section>``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["<section>", "<h2>Initialisation study</h2>"]
    if not study_result["sizes"]:
        parts.append("<p>No runs with loss telemetry to compare.</p>")
    parts.append(
        f"<p>Loss smoothed by a trailing mean over {study_result['smooth']} points. "
        f"Band: {_e(study_result['band'])}. Steps to threshold: "
        f"{_e(study_result['ci_method'])}. Speed-up: {_e(study_result['speedup_method'])}.</p>"
    )
    for size, res in study_result["sizes"].items():
        parts.append(f"<h3>{_e(size)}</h3>")
        png = plot_curves(
            size, res["curves"], res["thresholds"], out_dir / f"init_{_safe(size)}.png"
        )
        parts.append(f'<img src="{_e(png.name)}" alt="{_e(size)} loss by initialisation">')
        if res["baseline"] is None:
            parts.append(f"<p>No {BASELINE} baseline for {_e(size)}: no speed-up computed.</p>")
        if max((c["seeds"] for c in res["curves"].values()), default=0) < 2:
            parts.append("<p>One seed per init: too few seeds for confidence intervals.</p>")
        if not res["thresholds"]:
            parts.append("<p>The loss did not fall: no thresholds to compare.</p>")
        else:
            parts.append(f"<p>Thresholds: {_e(res['thresholds_source'])}.</p>" + _table(res))
    if study_result["skipped"]:
        parts.append(
            "<p>Runs without loss telemetry: "
            + ", ".join(_e(r) for r in study_result["skipped"])
            + "</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)
