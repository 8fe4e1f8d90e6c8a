"""The report's initialisation study: loss curves per init strategy, steps to reach loss
thresholds with confidence intervals across seeds, and the speed-up against ``pythia``.

Input is one record per run: ``{run, size, seed, init, steps, loss}`` (``init`` is the
init's name; an optional ``strategy`` says which strategy it uses, else the name is taken
as the strategy). Statistics, all across seeds:

- seed band: the min/max range of the seeds' smoothed losses on a common step grid;
- steps to threshold: the mean over the seeds that reached it, a 95% Student-t interval
  (needs two such seeds) and the count of seeds that never reached it;
- speed-up: baseline mean steps / strategy mean steps, with a 95% percentile bootstrap
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
CI_METHOD = "95% Student-t interval across seeds"
SPEEDUP_METHOD = "95% percentile bootstrap over seeds (2000 resamples)"


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


def t_interval(values) -> tuple[float, float] | None:
    """95% Student-t interval of the mean; None with fewer than two values."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    half = float(t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return float(x.mean()) - half, float(x.mean()) + half


def bootstrap_ratio(base, other, *, rounds: int = BOOTSTRAP, seed: int = 0):
    """95% percentile interval of mean(base) / mean(other), seeds resampled per group."""
    a, b = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return None
    rng = np.random.default_rng(seed)
    num = a[rng.integers(0, a.size, (rounds, a.size))].mean(axis=1)
    den = b[rng.integers(0, b.size, (rounds, b.size))].mean(axis=1)
    ratios = num / den
    return float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


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
    reached: dict[tuple[str, float], list[int]] = {}
    rows = []
    for thr in thresholds:
        for name, group in groups.items():
            hits = [steps_to_threshold(r["steps"], r["loss"], thr, smooth) for r in group]
            reached[name, thr] = [h for h in hits if h is not None]
        for name, group in groups.items():
            got = reached[name, thr]
            row = {
                "init": name,
                "strategy": _strategy(group[0]),
                "threshold": float(thr),
                "seeds": len(group),
                "reached": len(got),
                "not_reached": len(group) - len(got),
                "mean_steps": float(np.mean(got)) if got else None,
                "ci": t_interval(got),
                "speedup": None,
                "speedup_ci": None,
            }
            base = reached.get((baseline, thr), []) if baseline else []
            if base and got and np.mean(got) > 0:
                row["speedup"] = float(np.mean(base) / np.mean(got))
                row["speedup_ci"] = bootstrap_ratio(base, got)
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
    return "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _table(size_result: dict) -> str:
    head = (
        "<tr><th>init</th><th>strategy</th><th>loss threshold</th><th>mean steps [95% CI]</th>"
        "<th>not reached</th><th>speed-up [95% CI]</th></tr>"
    )
    body = []
    for row in size_result["rows"]:
        steps = _fmt(row["mean_steps"]) + _fmt_ci(row["ci"])
        if row["mean_steps"] is not None and row["ci"] is None:
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
        f"Band: {_e(study_result['band'])}. Mean steps over the seeds that reached the "
        f"threshold, {_e(study_result['ci_method'])}. Speed-up = baseline mean steps / "
        f"mean steps, {_e(study_result['speedup_method'])}.</p>"
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
