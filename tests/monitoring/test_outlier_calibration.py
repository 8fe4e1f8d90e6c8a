"""The cross-seed rule's error rates on fresh simulated families (docs/statistics.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polypythia.cli import main
from polypythia.monitoring.cross_seed import RunHistory, cross_seed_outliers
from polypythia.monitoring.outliers import Point, find_outliers

CHECKPOINTS = 27


def _family(rng: np.random.Generator, seeds: int, drop: float = 0.0, onset: int = 0):
    """Seeds with a persistent offset plus checkpoint noise of equal size (sd 1 each), a
    falling trend shared by all; seed 0 falls ``drop`` sd below from checkpoint ``onset``."""
    trend = np.linspace(0.0, 20.0, CHECKPOINTS)
    x = trend + rng.standard_normal((seeds, 1)) + rng.standard_normal((seeds, CHECKPOINTS))
    x[0, onset:] -= drop
    return [
        Point("410m", f"s{i}", 1000 * (t + 1), float(x[i, t]))
        for i in range(seeds)
        for t in range(CHECKPOINTS)
    ]


@pytest.mark.parametrize("seeds, families", [(10, 400), (4, 200), (50, 100)])
def test_null_families_are_flagged_at_most_five_percent_of_the_time(seeds, families):
    rng = np.random.default_rng([seeds, 7])
    flagged = sum(bool(find_outliers(_family(rng, seeds), "eval")) for _ in range(families))
    assert flagged / families <= 0.05


def test_a_seed_falling_six_sd_is_flagged_and_no_other():
    rng = np.random.default_rng(11)
    families, hits, others = 200, 0, 0
    for _ in range(families):
        onset = int(rng.integers(3, CHECKPOINTS - 3))
        runs = {v.run for v in find_outliers(_family(rng, 10, 6.0, onset), "eval")}
        hits += "s0" in runs
        others += bool(runs - {"s0"})
    assert hits / families >= 0.90
    assert others / families <= 0.05


def test_family_wise_rate_holds_over_signals_and_sizes():
    """Ten signals x three sizes of null data: still at most 5% of sweeps flag anything."""
    rng = np.random.default_rng(3)
    sweeps, flagged = 60, 0
    for _ in range(sweeps):
        histories = []
        for size in ("70m", "160m", "410m"):
            values = rng.standard_normal((10, 1, 10)) + rng.standard_normal((10, CHECKPOINTS, 10))
            for seed in range(10):
                evals = {
                    1000 * (t + 1): {
                        "results": {
                            f"task{j}": {"acc,none": float(values[seed, t, j])} for j in range(9)
                        }
                    }
                    for t in range(CHECKPOINTS)
                }
                losses = {1000 * (t + 1): float(values[seed, t, 9]) for t in range(CHECKPOINTS)}
                histories.append(RunHistory(size, f"{size}-s{seed}", losses, evals))
        flagged += bool(cross_seed_outliers(histories).verdicts)
    assert flagged / sweeps <= 0.05


def test_a_nan_loss_is_flagged_not_ignored():
    rng = np.random.default_rng(5)
    points = _family(rng, 6)
    points[40] = points[40]._replace(value=float("nan"))
    (verdict,) = find_outliers(points, "loss")
    assert (verdict.run, verdict.test, verdict.first_step) == ("s1", "non-finite", 14000)
    assert verdict.to_dict()["score"] is None


def test_outliers_cli_refuses_per_step_logs_and_offers_every(tmp_path, capsys):
    rng = np.random.default_rng(9)
    path = tmp_path / "steps.csv"
    lines = ["run,step,loss"]
    for seed in range(5):
        noise = rng.standard_normal(2000)
        lines += [f"s{seed},{s},{3 + 0.1 * noise[s]:.5f}" for s in range(2000)]
    path.write_text("\n".join(lines) + "\n")
    assert main(["outliers", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2000 distinct steps" in err and "--every" in err and "Traceback" not in err
    assert main(["outliers", str(path), "--every", "100", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
