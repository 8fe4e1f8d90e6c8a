"""The report's PNG figures (matplotlib, Agg): one function per figure, each writes one file."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from polypythia.monitoring.outliers import OutlierVerdict  # noqa: E402
from polypythia.monitoring.spikes import SpikeEvent  # noqa: E402
from polypythia_eval.analysis import loss_history  # noqa: E402
from polypythia_eval.sources import RunData  # noqa: E402
from polypythia_eval.trainingmaps import TrainingMap  # noqa: E402

KIND_ORDER = (
    "embedding", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "layernorm_gain", "layernorm_bias",
    "unembedding",
)  # fmt: skip
# nu is unbounded for a Gaussian tensor; the nu panel draws it at this height.
NU_GAUSSIAN = 1e3
OUTLIER_COLOUR = "#d62728"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _step_axis(ax, steps) -> None:
    """Pythia's checkpoints are log-spaced early and linear later: symlog shows both."""
    if len(steps) and max(steps) > 100:
        ax.set_xscale("symlog", linthresh=max(10, max(steps) / 1000))
    ax.set_xlabel("step")


def heldout_loss(
    size: str, runs: list[RunData], outliers: list[OutlierVerdict], path: Path
) -> Path:
    """Every seed's held-out loss over checkpoints (the same tokens for all); outliers in red."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    flagged = {v.run for v in outliers if v.signal.startswith("loss")}
    dataset, tokens, steps_seen = set(), set(), []
    for run in runs:
        points = sorted(
            (step, r["validation"]) for step, r in run.evals.items()
            if isinstance(r.get("validation"), dict) and r["validation"].get("tokens")
        )  # fmt: skip
        if not points:
            continue
        xs = [s for s, _ in points]
        ys = [v["loss"] if v.get("loss") is not None else np.nan for _, v in points]
        dataset |= {v.get("dataset") for _, v in points}
        tokens |= {v.get("tokens") for _, v in points}
        bad = run.name in flagged
        ax.plot(xs, ys, lw=1.6 if bad else 0.9, color="#d62728" if bad else None,
                label=f"{run.name} (outlier)" if bad else run.name)  # fmt: skip
        steps_seen.extend(xs)
    _step_axis(ax, steps_seen)
    same = "same" if len(dataset) == 1 and len(tokens) == 1 else "DIFFERENT"
    ax.set_title(
        f"{size}: held-out loss ({same} tokens for all seeds: "
        f"{', '.join(map(str, sorted(tokens)))} tokens, set {', '.join(map(str, sorted(dataset)))})",
        fontsize=9,
    )
    ax.set_ylabel("mean token loss")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def loss_curves(size: str, runs: list[RunData], spikes: list[SpikeEvent], path: Path) -> Path:
    """All seeds' training loss overlaid; spike peaks marked (x: seed-specific, o: common-mode)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for run in runs:
        steps, loss, _ = loss_history(run)
        if len(steps) == 0:
            continue
        (line,) = ax.plot(steps, loss, lw=0.8, label=run.name)
        for e in spikes:
            if e.run == run.name and e.signal == "loss":
                marker = "o" if e.kind == "common-mode" else "x"
                ax.plot(e.peak_step, e.peak_value, marker, color=line.get_color(), ms=9, mew=2)
    ax.set_title(f"{size}: training loss, all seeds (x = spike, o = common-mode spike)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def eval_scores(
    size: str,
    table: dict[str, dict[str, dict[int, float]]],
    tasks: list[str],
    outliers: list[OutlierVerdict],
    path: Path,
) -> Path:
    """Per task: every seed's score over checkpoints, the seed band, outlier runs in red."""
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, tasks, strict=False):
        runs = table[key]
        flagged = {v.run for v in outliers if v.signal == f"eval:{key}"}
        steps = sorted({s for by in runs.values() for s in by})
        if len(runs) > 1:
            grid = np.array([[runs[r].get(s, np.nan) for s in steps] for r in runs])
            with np.errstate(all="ignore"):
                lo, hi = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
                med = np.nanmedian(grid, axis=0)
            ax.fill_between(steps, lo, hi, color="0.85", label="seed range")
            ax.plot(steps, med, color="0.3", lw=1.5, label="median")
        for run, by in sorted(runs.items()):
            xs = sorted(by)
            bad = run in flagged
            ax.plot(
                xs,
                [by[s] for s in xs],
                lw=2 if bad else 0.8,
                alpha=1 if bad else 0.6,
                color=OUTLIER_COLOUR if bad else None,
                label=f"{run} (outlier)" if bad else None,
            )
        _step_axis(ax, steps)
        ax.set_title(key, fontsize=9)
        if flagged or len(runs) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(f"{size}: evaluation scores over checkpoints")
    return _save(fig, path)


def _kind_series(runs: list[RunData], getter) -> dict[str, dict[str, tuple[list, list]]]:
    out: dict[str, dict[str, tuple[list, list]]] = {}
    for run in runs:
        for step in sorted(run.evals):
            kinds = (run.evals[step].get("weight_stats") or {}).get("kinds", {})
            for kind, entry in kinds.items():
                value = getter(entry)
                if value is None:
                    continue
                xs, ys = out.setdefault(kind, {}).setdefault(run.name, ([], []))
                xs.append(step)
                ys.append(value)
    return out


PANELS = (
    ("excess kurtosis", lambda e: e.get("kurtosis"), "linear"),
    ("L2 (Frobenius) norm", lambda e: e.get("l2"), "log"),
    ("spectral norm (mean per matrix)", lambda e: e.get("spectral_norm"), "log"),
)


def _nu(value: float | None) -> float:
    return NU_GAUSSIAN if value is None else min(float(value), NU_GAUSSIAN)


def _nu_panel(ax, runs: list[RunData], colours: list[str]) -> None:
    """Per kind and checkpoint, over seeds: the median tensor's nu (line), the range of the
    kind's tensors (band) and the median 95% interval (bars); Gaussian drawn at the top."""
    by_kind: dict[str, dict[int, list[dict]]] = {}
    for run in runs:
        for step, result in run.evals.items():
            for kind, entry in ((result.get("weight_stats") or {}).get("kinds") or {}).items():
                nu = entry.get("nu") or {}
                if nu.get("tensors"):
                    by_kind.setdefault(kind, {}).setdefault(step, []).append(nu)
    ax.set_title("Student-t ν per tensor: median, range, 95% interval", fontsize=10)
    if not by_kind:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        return
    all_steps: list[int] = []
    for i, kind in enumerate(k for k in KIND_ORDER if k in by_kind):
        steps = sorted(by_kind[kind])
        colour = colours[i % len(colours)]

        def med(key: str, entries: list[dict]) -> float:
            return float(np.median([_nu(e.get(key)) for e in entries]))

        mid = [med("nuMedian", by_kind[kind][s]) for s in steps]
        low = [min(_nu(e.get("nuMin")) for e in by_kind[kind][s]) for s in steps]
        high = [max(_nu(e.get("nuMax")) for e in by_kind[kind][s]) for s in steps]
        lo_ci = [med("nuLowMedian", by_kind[kind][s]) for s in steps]
        hi_ci = [med("nuHighMedian", by_kind[kind][s]) for s in steps]
        ax.plot(steps, mid, color=colour, lw=1.2, label=kind)
        ax.fill_between(steps, low, high, color=colour, alpha=0.12)
        ax.errorbar(
            steps, mid, yerr=np.maximum(0, [np.subtract(mid, lo_ci), np.subtract(hi_ci, mid)]),
            fmt="none", ecolor=colour, elinewidth=0.8, capsize=2,
        )  # fmt: skip
        all_steps.extend(steps)
    ax.axhline(NU_GAUSSIAN, color="grey", lw=0.6, ls=":")
    ax.text(0.01, 0.97, "top = Gaussian (ν unbounded)", transform=ax.transAxes, fontsize=6,
            va="top")  # fmt: skip
    _step_axis(ax, all_steps)
    ax.set_yscale("log")
    ax.legend(fontsize=6)


def weight_trajectories(size: str, runs: list[RunData], path: Path) -> Path:
    """Kurtosis, norms by matrix kind over steps (one line per seed) and the kinds' tails."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    flat = list(axes.flat)
    _nu_panel(flat[1], runs, colours)
    for ax, (title, getter, scale) in zip([flat[0], *flat[2:]], PANELS, strict=True):
        series = _kind_series(runs, getter)
        all_steps: list[int] = []
        for i, kind in enumerate(k for k in KIND_ORDER if k in series):
            for j, (xs, ys) in enumerate(series[kind].values()):
                ax.plot(
                    xs, ys, color=colours[i % len(colours)], lw=0.9, alpha=0.8,
                    label=kind if j == 0 else None,
                )  # fmt: skip
                all_steps.extend(xs)
        ax.set_title(title, fontsize=10)
        if not all_steps:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
            continue
        _step_axis(ax, all_steps)
        ax.set_yscale(scale)
        ax.legend(fontsize=6)
    fig.suptitle(f"{size}: weight statistics by matrix kind")
    return _save(fig, path)


def state_paths(size: str, tmap: TrainingMap, path: Path) -> Path:
    """Each run's HMM state per checkpoint; a black bar marks where a run departs."""
    runs = list(tmap.paths)
    steps = sorted({s for r in runs for s in tmap.steps[r]})
    col = {s: i for i, s in enumerate(steps)}
    grid = np.full((len(runs), len(steps)), np.nan)
    for i, run in enumerate(runs):
        for step, state in zip(tmap.steps[run], tmap.paths[run], strict=True):
            grid[i, col[step]] = state
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(steps) + 2), 0.45 * len(runs) + 1.6))
    cmap = plt.get_cmap("viridis", tmap.n_states)
    im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=tmap.n_states - 0.5)
    for i, run in enumerate(runs):
        if tmap.departures.get(run) is not None:
            x = col[tmap.departures[run]] - 0.5
            ax.plot([x, x], [i - 0.5, i + 0.5], color="black", lw=3)
    ax.set_yticks(range(len(runs)), runs, fontsize=7)
    ticks = list(range(0, len(steps), max(1, len(steps) // 12)))
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks], rotation=45, fontsize=7)
    ax.set_xlabel("checkpoint step")
    fig.colorbar(im, ax=ax, ticks=range(tmap.n_states), label="state")
    ax.set_title(f"{size}: training-map states ({tmap.n_states}, chosen on held-out seeds)")
    return _save(fig, path)


def kappa_curves(size: str, agreement: dict, path: Path) -> Path:
    """Mean kappa over tasks: vs the final checkpoint (solid) and vs the reference seed (dashed)."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, block, style in (
        ("vs final", agreement["self_consistency"], "-"),
        (f"vs {agreement['reference']}", agreement["inter_seed"], "--"),
    ):
        for run, tasks in sorted(block.items()):
            by_step: dict[int, list[float]] = {}
            for series in tasks.values():
                for step, k in series.items():
                    if k is not None:
                        by_step.setdefault(step, []).append(k)
            xs = sorted(by_step)
            if xs:
                ys = [float(np.mean(by_step[s])) for s in xs]
                ax.plot(xs, ys, style, lw=1, label=f"{run} {label}")
    ax.set_ylabel("Cohen's kappa (mean over tasks)")
    ax.set_xlabel("step")
    ax.set_title(f"{size}: per-item agreement")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
