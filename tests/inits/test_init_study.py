"""The report's initialisation study on synthetic loss curves with a known speed-up."""

from __future__ import annotations

import numpy as np

from polypythia_eval.init_study import km_median, render_init_section, steps_to_threshold, study

STEPS = np.arange(0, 1500)


def _curve(tau: float, rng, speed: float = 1.0, floor: float = 2.0) -> list[float]:
    noise = rng.normal(0, 0.01, STEPS.size)
    return (floor + 3.0 * np.exp(-speed * STEPS / tau) + noise).tolist()


def _runs(size: str = "nano", seeds: int = 5, inits=("pythia", "permute")) -> list[dict]:
    rng = np.random.default_rng(0)
    runs = []
    for seed in range(seeds):
        tau = 200.0 * (1 + 0.1 * rng.standard_normal())
        for init in inits:
            speed = {"pythia": 1.0, "permute": 2.0, "empirical": 0.5}[init]
            runs.append(
                {
                    "run": f"{size}-s{seed}-{init}",
                    "size": size,
                    "seed": seed,
                    "init": init,
                    "steps": STEPS.tolist(),
                    "loss": _curve(tau, rng, speed),
                }
            )
    return runs


def test_steps_to_threshold_uses_the_smoothed_loss():
    steps = [0, 10, 20, 30, 40, 50, 60]
    loss = [5.0, 4.0, 1.0, 4.0, 3.0, 2.0, 2.0]  # one-point dip at step 20
    assert steps_to_threshold(steps, loss, 2.5, smooth=1) == 20
    assert steps_to_threshold(steps, loss, 2.5, smooth=3) == 60
    assert steps_to_threshold(steps, loss, 0.5, smooth=3) is None
    assert steps_to_threshold(steps[:5], [5.0, float("nan"), 1.0, 1.0, 1.0], 2.0, smooth=2) == 30


def test_a_twice_as_fast_strategy_has_speedup_two_within_its_interval():
    result = study(_runs())
    res = result["sizes"]["nano"]
    assert res["baseline"] == "pythia" and len(res["thresholds"]) == 3
    rows = [r for r in res["rows"] if r["init"] == "permute"]
    assert len(rows) == 3
    for row in rows:
        lo, hi = row["speedup_ci"]
        assert lo <= 2.0 <= hi and abs(row["speedup"] - 2.0) < 0.15
        assert hi - lo < 1.0  # medians of 5 seeds, resampled independently
        assert row["not_reached"] == 0
        assert row["ci"][0] <= row["median_steps"] <= row["ci"][1]
    base = [r for r in res["rows"] if r["init"] == "pythia"]
    assert all(abs(r["speedup"] - 1.0) < 1e-9 for r in base)
    # the mean curve of the fast strategy lies below the baseline's, inside its band
    fast, slow = res["curves"]["permute"], res["curves"]["pythia"]
    assert np.mean(fast["mean"]) < np.mean(slow["mean"])
    assert all(lo <= m <= hi for lo, m, hi in zip(fast["low"], fast["mean"], fast["high"]))


def test_a_slow_strategy_counts_the_seeds_that_never_reach_a_threshold():
    result = study(_runs(inits=("pythia", "empirical")), thresholds=[2.2])
    row = next(r for r in result["sizes"]["nano"]["rows"] if r["init"] == "empirical")
    # empirical needs tau * ln(15) * 2 ~ 1080 steps: reached by most seeds, speed-up ~ 0.5
    assert abs(row["speedup"] - 0.5) < 0.1
    never = study(_runs(inits=("pythia", "empirical")), thresholds=[1.5])
    for r in never["sizes"]["nano"]["rows"]:
        assert r["reached"] == 0 and r["not_reached"] == 5 and r["median_steps"] is None


def test_seeds_that_never_reach_the_threshold_are_censored_not_dropped():
    # three seeds reach it at 100, 120, 140; two never do in 1500 steps
    times, reached = [100, 120, 140, 1500, 1500], [True, True, True, False, False]
    assert km_median(times, reached) == 140  # not 120, the median of the survivors
    assert km_median([100, 120, 1500, 1500, 1500], [True, True, False, False, False]) is None
    # a seed stopped early (censored at 110) leaves the risk set without counting as slow
    assert km_median([100, 110, 130, 150], [True, False, True, True]) == 130


def test_render_writes_the_figure_and_mentions_every_strategy(tmp_path):
    result = study(_runs(inits=("pythia", "permute", "empirical")) + _runs("micro", seeds=2))
    fragment = render_init_section(result, tmp_path)
    assert fragment.startswith("<section>") and "Initialisation study" in fragment
    for size in ("nano", "micro"):
        png = tmp_path / f"init_{size}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png.name}"' in fragment
    for name in ("pythia", "permute", "empirical"):
        assert f"<td>{name}</td>" in fragment
    assert "No pythia baseline" not in fragment


def test_render_says_when_baseline_or_seeds_are_missing(tmp_path):
    runs = [r for r in _runs(seeds=1) if r["init"] == "permute"]
    fragment = render_init_section(study(runs), tmp_path)
    assert "No pythia baseline" in fragment
    assert "too few seeds" in fragment
    assert "no interval" in fragment
