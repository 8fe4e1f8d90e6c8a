"""The report's interactive figures (Plotly): one function per figure, each returns a ``Figure``.

A figure that would have fewer than two points along its x axis is not drawn: its
``absent`` text says why, so the report never shows empty axes. Seeds keep one colour
and one legend group across all panels of a figure, so a click in the legend toggles a
seed everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from polypythia.monitoring.outliers import FamilyScores, OutlierVerdict
from polypythia.monitoring.spikes import SpikeEvent, SpikeSettings
from polypythia_eval.analysis import loss_history
from polypythia_eval.sources import RunData
from polypythia_eval.trainingmaps import TrainingMap

KIND_ORDER = (
    "embedding", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "layernorm_gain", "layernorm_bias",
    "unembedding",
)  # fmt: skip
# nu is unbounded for a Gaussian tensor; the nu panel draws it at this height.
NU_GAUSSIAN = 1e3
OUTLIER_COLOUR = "#d62728"
PALETTE = qualitative.D3 + qualitative.Dark24
# Most points one trace carries; longer histories are thinned evenly (spike peaks kept).
MAX_POINTS = 3000
COMMON_TOLERANCE = SpikeSettings().common_mode_tolerance
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Figure:
    """One figure of the report, or the words that stand in for it."""

    key: str
    title: str
    figure: go.Figure | None = None
    absent: str | None = None
    caption: str = ""

    def html(self) -> str:
        """The figure's ``<div>`` and script; plotly.js itself is in the page head, once."""
        if self.figure is None:
            return ""
        return pio.to_html(
            self.figure,
            full_html=False,
            include_plotlyjs=False,
            div_id=f"fig-{self.key}",
            config=PLOT_CONFIG,
        )


def colours(names: Iterable[str]) -> dict[str, str]:
    """One colour per run, stable across every figure of a report."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def spike_label(event: SpikeEvent) -> str:
    """The label a spike carries in figures and tables: its kind, and the cause when shared."""
    if event.kind == "common-mode":
        return f"common-mode ({event.cause})"
    return event.kind


def spike_text(event: SpikeEvent) -> str:
    """One line on a spike: onset, peak, size, and whether the run recovered."""
    if event.status == "recovered":
        fate = f"recovered at step {event.recovery_step}"
    elif event.status == "unrecovered":
        fate = "not recovered"
    else:
        fate = "still open at the end of the telemetry"
    magnitude = f"{event.magnitude:.1f} sd" if np.isfinite(event.magnitude) else "non-finite"
    return (
        f"{event.signal} spike ({spike_label(event)}): onset step {event.onset_step}, "
        f"peak {event.peak_value:.4g} at step {event.peak_step} ({magnitude}), {fate}"
    )


def _steps(xs: Iterable) -> list:
    return sorted({x for x in xs if x is not None})


def _too_few(key: str, title: str, steps: list, what: str) -> Figure:
    """Words instead of axes: a figure needs two points along x to show a change."""
    if not steps:
        text = f"{title}: no {what} yet, so nothing to draw."
    elif what == "logged steps":
        text = f"{title}: only step {steps[0]} logged so far; a curve needs two."
    else:
        text = (
            f"{title}: only one {what.replace('checkpoints', 'checkpoint', 1)} (step {steps[0]}) "
            "so far; a curve needs "
            "two. Its values are in the tables."
        )
    return Figure(key, title, absent=text)


def _thin(n: int, keep: Iterable[int] = (), limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of an even subsample of ``n`` points plus the ``keep`` indices."""
    if n <= limit:
        return np.arange(n)
    base = np.linspace(0, n - 1, limit).round().astype(int)
    return np.unique(np.concatenate([base, np.asarray(list(keep), dtype=int)]))


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 40},
        hovermode="closest",
        legend={"font": {"size": 10}, "groupclick": "togglegroup"},
        template="plotly_white",
    )
    return fig


def _branch_name(run: RunData, names: set[str]) -> str:
    b = run.branch or {}
    parent = run.parent if run.parent in names else f"{run.parent} (not in this sweep)"
    return f"{run.name}: branch of {parent} at step {b.get('step')}, optimizer {b.get('optimizer')}"


def training_curves(
    size: str,
    runs: list[RunData],
    spikes: list[SpikeEvent],
    palette: Mapping[str, str],
    flagged: set[str] = frozenset(),
) -> Figure:
    """Training loss with spikes labelled, gradient norm and learning rate, all seeds.

    A branched run's curve starts at its parent's step, joined to the parent's loss there.
    """
    title = f"{size}: training loss, gradient norm, learning rate"
    key = f"train-{size}"
    histories = {r.name: loss_history(r) for r in runs}
    n = _steps(s for steps, _, _ in histories.values() for s in steps.tolist())
    if len(n) < 2:
        return _too_few(key, title, n, "logged steps")
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05, row_heights=[0.5, 0.25, 0.25],
        subplot_titles=("loss (spikes labelled)", "gradient norm", "learning rate"),
    )  # fmt: skip
    names = {r.name for r in runs}
    thinned = False
    for run in runs:
        steps, loss, grad = histories[run.name]
        if len(steps) == 0:
            continue
        colour = palette.get(run.name, "#444")
        by_step = {int(r["step"]): r for r in run.telemetry if "step" in r}
        lr = np.array([_num(by_step[int(s)].get("lr")) for s in steps])
        peaks = [e.peak_step for e in spikes if e.run == run.name]
        idx = _thin(len(steps), np.searchsorted(steps, peaks).clip(0, len(steps) - 1))
        thinned |= len(idx) < len(steps)
        xs, ys = steps[idx].tolist(), loss[idx].tolist()
        name = run.name + (" (outlier)" if run.name in flagged else "")
        if run.branch:
            name = _branch_name(run, names)
            parent = histories.get(run.parent or "")
            at = int(run.branch.get("step"))
            if parent is not None and at in set(parent[0].tolist()):
                xs = [at, *xs]
                ys = [float(parent[1][parent[0].tolist().index(at)]), *ys]
        width = 2.2 if run.name in flagged else 1.1
        dash = "dot" if run.branch else None
        common = {"legendgroup": run.name, "line": {"color": colour, "width": width, "dash": dash}}
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", name=name, **common,
                       hovertemplate=f"{run.name}<br>step %{{x}}<br>loss %{{y:.4f}}<extra></extra>"),
            row=1, col=1,
        )  # fmt: skip
        if run.branch:
            fig.add_trace(
                go.Scatter(
                    x=[xs[0]], y=[ys[0]], mode="markers+text", text=["branch"],
                    textposition="bottom center", legendgroup=run.name, showlegend=False,
                    marker={"symbol": "diamond", "size": 10, "color": colour},
                    hovertext=[name], hoverinfo="text",
                ),
                row=1, col=1,
            )  # fmt: skip
        # The run's lower panels: gradient norm (row 2) and learning rate (row 3).
        lower = [(2, grad, "grad norm", ".4g")] if grad is not None else []
        if np.isfinite(lr).any():
            lower.append((3, lr, "lr", ".3g"))
        for row, values, label, fmt in lower:
            fig.add_trace(
                go.Scatter(x=steps[idx].tolist(), y=values[idx].tolist(), mode="lines",
                           showlegend=False, **common,
                           hovertemplate=f"{run.name}<br>step %{{x}}<br>{label} %{{y:{fmt}}}"
                           "<extra></extra>"),
                row=row, col=1,
            )  # fmt: skip
        for restart in run.rewinds:
            fig.add_vline(x=restart.get("restartStep"), line={"color": colour, "dash": "dash"},
                          annotation_text=f"rewind {run.name}", row=1, col=1)  # fmt: skip
    for signal, row in (("loss", 1), ("grad_norm", 2)):
        events = [e for e in spikes if e.signal == signal and e.run in palette]
        written: list[int] = []  # a shared spike's label is written once, at its first run
        for e in events:
            repeat = e.kind == "common-mode" and any(
                abs(e.onset_step - o) <= COMMON_TOLERANCE for o in written
            )
            if e.kind == "common-mode" and not repeat:
                written.append(e.onset_step)
            fig.add_trace(
                go.Scatter(
                    x=[e.peak_step], y=[e.peak_value], mode="markers" if repeat else "markers+text",
                    text=[spike_label(e)], textposition="top center",
                    textfont={"size": 10, "color": palette[e.run]},
                    marker={"symbol": "x" if e.kind == "seed-specific" else "circle-open",
                            "size": 12, "color": palette[e.run], "line": {"width": 2}},
                    legendgroup=e.run, showlegend=False, name=f"spike {e.run}",
                    hovertext=[f"{e.run}: {spike_text(e)}"], hoverinfo="text",
                    meta={"run": e.run, "signal": e.signal, "onset": e.onset_step,
                          "kind": e.kind, "cause": e.cause},
                ),
                row=row, col=1,
            )  # fmt: skip
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="grad norm", type="log", row=2, col=1)
    fig.update_yaxes(title_text="lr", row=3, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    caption = "x = seed-specific spike, o = common-mode spike; dotted = branched run."
    if thinned:
        caption += f" Long histories are thinned to about {MAX_POINTS} points (spike peaks kept)."
    return Figure(key, title, _layout(fig, title, 720), caption=caption)


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def heldout_loss(
    size: str, runs: list[RunData], outliers: list[OutlierVerdict], palette: Mapping[str, str]
) -> Figure:
    """Every seed's held-out loss over checkpoints (the same tokens for all seeds)."""
    title = f"{size}: held-out loss"
    key = f"heldout-{size}"
    flagged = {v.run for v in outliers if v.signal.startswith("loss")}
    series, dataset, tokens = {}, set(), set()
    for run in runs:
        points = sorted(
            (step, r["validation"]) for step, r in run.evals.items()
            if isinstance(r.get("validation"), dict) and r["validation"].get("tokens")
        )  # fmt: skip
        if points:
            series[run.name] = ([s for s, _ in points], [_num(v.get("loss")) for _, v in points])
            dataset |= {v.get("dataset") for _, v in points}
            tokens |= {v.get("tokens") for _, v in points}
    n = _steps(s for xs, _ in series.values() for s in xs)
    if len(n) < 2:
        return _too_few(key, title, n, "checkpoints with a held-out loss")
    fig = go.Figure()
    for name, (xs, ys) in series.items():
        bad = name in flagged
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=name + (" (outlier)" if bad else ""),
                line={"color": palette.get(name), "width": 2.5 if bad else 1.2},
                hovertemplate=f"{name}<br>step %{{x}}<br>held-out loss %{{y:.4f}}<extra></extra>",
            )
        )  # fmt: skip
    same = "the same" if len(dataset) == 1 and len(tokens) == 1 else "DIFFERENT"
    caption = (
        f"Mean token loss on {same} held-out tokens for every seed "
        f"({', '.join(map(str, sorted(tokens)))} tokens, set "
        f"{', '.join(map(str, sorted(map(str, dataset))))})."
    )
    fig.update_xaxes(title_text="checkpoint step")
    fig.update_yaxes(title_text="held-out loss")
    return Figure(key, title, _layout(fig, title, 380), caption=caption)


def eval_curves(
    size: str,
    table: Mapping[str, Mapping[str, Mapping[int, float]]],
    tasks: list[str],
    outliers: list[OutlierVerdict],
    palette: Mapping[str, str],
) -> Figure:
    """Per task: the seeds' median and range over checkpoints, each seed's own curve."""
    title = f"{size}: evaluation scores over checkpoints"
    key = f"evals-{size}"
    n = _steps(s for t in tasks for by in table[t].values() for s in by)
    if len(n) < 2:
        return _too_few(key, title, n, "evaluated checkpoints")
    cols = min(2, len(tasks))
    rows = -(-len(tasks) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=tasks, vertical_spacing=0.12 / rows)
    shown: set[str] = set()
    for i, task in enumerate(tasks):
        row, col = i // cols + 1, i % cols + 1
        runs = table[task]
        flagged = {v.run for v in outliers if v.signal == f"eval:{task}"}
        steps = sorted({s for by in runs.values() for s in by})
        grid = np.array([[runs[r].get(s, np.nan) for s in steps] for r in runs])
        with np.errstate(all="ignore"):
            lo, hi = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
            med = np.nanmedian(grid, axis=0)
        fig.add_trace(
            go.Scatter(x=steps + steps[::-1], y=hi.tolist() + lo[::-1].tolist(), fill="toself",
                       fillcolor="rgba(120,120,120,0.18)", line={"width": 0}, hoverinfo="skip",
                       name="seed range", legendgroup="range", showlegend=i == 0),
            row=row, col=col,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=steps, y=med.tolist(), mode="lines", name="median over seeds",
                       line={"color": "#333", "width": 2.5}, legendgroup="median",
                       showlegend=i == 0,
                       hovertemplate="median<br>step %{x}<br>%{y:.4f}<extra></extra>"),
            row=row, col=col,
        )  # fmt: skip
        for run, by in sorted(runs.items()):
            xs = sorted(by)
            bad = run in flagged
            fig.add_trace(
                go.Scatter(
                    x=xs, y=[by[s] for s in xs], mode="lines+markers", legendgroup=run,
                    name=run, showlegend=run not in shown,
                    line={"color": OUTLIER_COLOUR if bad else palette.get(run),
                          "width": 2.5 if bad else 1},
                    marker={"size": 4}, opacity=1 if bad else 0.75,
                    hovertemplate=f"{run}{' (outlier)' if bad else ''}<br>step %{{x}}<br>"
                    "%{y:.4f}<extra></extra>",
                ),
                row=row, col=col,
            )  # fmt: skip
            shown.add(run)
    fig.update_xaxes(title_text="checkpoint step", row=rows)
    return Figure(
        key, title, _layout(fig, title, 280 * rows + 100),
        caption="Grey band: range over seeds; black: median; red: a seed flagged on that task.",
    )  # fmt: skip


def _nu(value) -> float:
    return NU_GAUSSIAN if value is None else min(float(value), NU_GAUSSIAN)


def weight_statistics(size: str, runs: list[RunData], palette: Mapping[str, str]) -> Figure:
    """Per matrix kind over checkpoints: Student-t nu (median tensor, with its 95% interval,
    and the range over the kind's tensors), the L2 norm and the spectral norm per seed."""
    title = f"{size}: weight statistics by matrix kind"
    key = f"weights-{size}"
    per_kind: dict[str, dict[str, dict[int, dict]]] = {}
    for run in runs:
        for step, result in run.evals.items():
            kinds = (result.get("weight_stats") or {}).get("kinds") or {}
            for kind, entry in kinds.items():
                per_kind.setdefault(kind, {}).setdefault(run.name, {})[step] = entry
    n = _steps(s for by_run in per_kind.values() for by in by_run.values() for s in by)
    if len(n) < 2:
        return _too_few(key, title, n, "checkpoints with weight statistics")
    kinds = [k for k in KIND_ORDER if k in per_kind]
    kind_colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(kinds)}
    fig = make_subplots(
        rows=1, cols=3, horizontal_spacing=0.07,
        subplot_titles=("Student-t ν (median tensor, 95% interval)", "L2 (Frobenius) norm",
                        "spectral norm (mean per matrix)"),
    )  # fmt: skip
    for kind in kinds:
        colour = kind_colour[kind]
        steps = sorted({s for by in per_kind[kind].values() for s in by})
        nus = [
            [by[s]["nu"] for by in per_kind[kind].values()
             if s in by and (by[s].get("nu") or {}).get("tensors")]
            for s in steps
        ]  # fmt: skip
        kept = [(s, e) for s, e in zip(steps, nus, strict=True) if e]
        if kept:
            xs = [s for s, _ in kept]
            mid = [float(np.median([_nu(e.get("nuMedian")) for e in es])) for _, es in kept]
            low = [float(np.median([_nu(e.get("nuLowMedian")) for e in es])) for _, es in kept]
            high = [float(np.median([_nu(e.get("nuHighMedian")) for e in es])) for _, es in kept]
            lo_t = [min(_nu(e.get("nuMin")) for e in es) for _, es in kept]
            hi_t = [max(_nu(e.get("nuMax")) for e in es) for _, es in kept]
            fig.add_trace(
                go.Scatter(
                    x=xs, y=mid, mode="lines+markers", name=kind, legendgroup=kind,
                    line={"color": colour},
                    error_y={"type": "data", "symmetric": False,
                             "array": np.maximum(0, np.subtract(high, mid)).tolist(),
                             "arrayminus": np.maximum(0, np.subtract(mid, low)).tolist()},
                    customdata=np.column_stack([low, high, lo_t, hi_t]).tolist(),
                    hovertemplate=f"{kind}<br>step %{{x}}<br>ν %{{y:.3g}} "
                    "(95%: %{customdata[0]:.3g} to %{customdata[1]:.3g})<br>"
                    "tensors: %{customdata[2]:.3g} to %{customdata[3]:.3g}<extra></extra>",
                ),
                row=1, col=1,
            )  # fmt: skip
        for j, (metric, col) in enumerate((("l2", 2), ("spectral_norm", 3))):
            for r, (run, by) in enumerate(sorted(per_kind[kind].items())):
                xs = [s for s in sorted(by) if by[s].get(metric) is not None]
                if not xs:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=xs, y=[by[s][metric] for s in xs], mode="lines", legendgroup=kind,
                        name=kind, showlegend=not kept and j == 0 and r == 0,
                        line={"color": colour, "width": 1}, opacity=0.8,
                        hovertemplate=f"{kind} {run}<br>step %{{x}}<br>{metric} %{{y:.4g}}"
                        "<extra></extra>",
                    ),
                    row=1, col=col,
                )  # fmt: skip
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="checkpoint step")
    return Figure(
        key, title, _layout(fig, title, 430),
        caption=f"ν is drawn at {NU_GAUSSIAN:g} when a tensor is Gaussian within its interval "
        "(ν unbounded); norms: one line per seed and kind.",
    )  # fmt: skip


def training_map(size: str, tmap: TrainingMap) -> Figure:
    """Each seed's HMM state per checkpoint (seeds as rows, as in the paper's figure)."""
    title = f"{size}: training map ({tmap.n_states} states, chosen on held-out seeds)"
    key = f"map-{size}"
    runs = list(tmap.paths)
    steps = sorted({s for r in runs for s in tmap.steps[r]})
    if len(steps) < 2:
        return _too_few(key, title, steps, "checkpoints in the map")
    col = {s: i for i, s in enumerate(steps)}
    grid: list[list[float | None]] = [[None] * len(steps) for _ in runs]
    for i, run in enumerate(runs):
        for step, state in zip(tmap.steps[run], tmap.paths[run], strict=True):
            grid[i][col[step]] = int(state)
    labels = [str(s) for s in steps]
    fig = go.Figure(
        go.Heatmap(
            z=grid, x=labels, y=runs, zmin=-0.5, zmax=tmap.n_states - 0.5,
            colorscale="Viridis", colorbar={"title": "state", "dtick": 1},
            hovertemplate="%{y}<br>step %{x}<br>state %{z}<extra></extra>",
        )
    )  # fmt: skip
    for run in runs:
        at = tmap.departures.get(run)
        if at is not None:
            fig.add_trace(
                go.Scatter(
                    x=[str(at)], y=[run], mode="markers+text", text=["departs"],
                    textposition="middle right", showlegend=False,
                    marker={"symbol": "line-ns-open", "size": 18, "color": "black",
                            "line": {"width": 3}},
                    hovertext=[f"{run} leaves the other seeds' path at step {at}"],
                    hoverinfo="text",
                )
            )  # fmt: skip
    fig.update_xaxes(title_text="checkpoint step", type="category")
    return Figure(
        key, title, _layout(fig, title, 120 + 30 * len(runs)),
        caption="A black bar marks where a seed's state path departs from the others'.",
    )  # fmt: skip


def outlier_scores(size: str, scores: list[FamilyScores], palette: Mapping[str, str]) -> Figure:
    """Every seed's bad-side robust z per checkpoint and signal, with the level threshold."""
    title = f"{size}: cross-seed outlier scores"
    key = f"outliers-{size}"
    scores = [fs for fs in scores if len(fs.steps) >= 1]
    n = max((fs.steps for fs in scores), key=len, default=[])
    if len(n) < 2:
        return _too_few(key, title, n, "checkpoints tested across seeds")
    # A section may hold several groups (a branch is tested with its parent's other branches).
    several = len({fs.group for fs in scores}) > 1
    fig = make_subplots(
        rows=len(scores), cols=1, vertical_spacing=0.25 / len(scores),
        subplot_titles=[f"{fs.signal}{f' ({fs.group})' if several else ''}: level threshold "
                        f"{fs.level_threshold:.2f}, change threshold {fs.change_threshold:.2f}"
                        for fs in scores],
    )  # fmt: skip
    shown: set[str] = set()
    for i, fs in enumerate(scores, start=1):
        for j, run in enumerate(fs.runs):
            fig.add_trace(
                go.Scatter(
                    x=fs.steps, y=[None if np.isnan(v) else float(v) for v in fs.z[j]],
                    mode="lines+markers", name=run, legendgroup=run,
                    showlegend=run not in shown, line={"color": palette.get(run), "width": 1.2},
                    marker={"size": 4},
                    hovertemplate=f"{run}<br>step %{{x}}<br>z %{{y:.2f}}<extra>{fs.signal}"
                    "</extra>",
                ),
                row=i, col=1,
            )  # fmt: skip
            shown.add(run)
        fig.add_hline(
            y=fs.level_threshold, line={"color": OUTLIER_COLOUR, "dash": "dash"}, row=i, col=1,
            annotation_text=f"threshold {fs.level_threshold:.2f}",
        )  # fmt: skip
        fig.update_yaxes(title_text="z (bad side up)", row=i, col=1)
    fig.update_xaxes(title_text="checkpoint step", row=len(scores), col=1)
    return Figure(
        key, title, _layout(fig, title, 120 + 230 * len(scores)),
        caption="Robust z across seeds at each checkpoint, oriented so that worse is up. A seed "
        "is an outlier when it stays above the dashed threshold for consecutive checkpoints "
        "(level test) or its z shifts by more than the change threshold (table below).",
    )  # fmt: skip


def kappa_curves(size: str, agreement: dict, palette: Mapping[str, str]) -> Figure:
    """Mean kappa over tasks: vs the final checkpoint (solid) and vs the reference seed (dashed)."""
    title = f"{size}: per-item agreement (Cohen's kappa, mean over tasks)"
    key = f"kappa-{size}"
    fig = go.Figure()
    points = set()
    for label, block, dash in (
        ("vs final", agreement["self_consistency"], None),
        (f"vs {agreement['reference']}", agreement["inter_seed"], "dash"),
    ):
        for run, tasks in sorted(block.items()):
            by_step: dict[int, list[float]] = {}
            for series in tasks.values():
                for step, k in series.items():
                    if k is not None:
                        by_step.setdefault(step, []).append(k)
            xs = sorted(by_step)
            points |= set(xs)
            if xs:
                fig.add_trace(
                    go.Scatter(
                        x=xs, y=[float(np.mean(by_step[s])) for s in xs], mode="lines+markers",
                        name=f"{run} {label}", legendgroup=run,
                        line={"color": palette.get(run), "dash": dash, "width": 1.2},
                    )
                )  # fmt: skip
    if len(points) < 2:
        return _too_few(key, title, sorted(points), "checkpoints with per-item predictions")
    fig.update_xaxes(title_text="checkpoint step")
    fig.update_yaxes(title_text="kappa")
    return Figure(key, title, _layout(fig, title, 380))
