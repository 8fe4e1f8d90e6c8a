"""`make demo`'s sweep, run as README.md shows it, finds what its comments say was planted:
the learning-rate shock of seed 2 as a seed-specific loss spike in the right step window,
the slowed-down seed 4 as a cross-seed outlier, evaluations (with the held-out loss on the
same tokens for every seed) at several checkpoints, and a terminal that says so."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SWEEP_FILE = REPO / "manifests" / "examples" / "sweep-tiny.yaml"
# README.md's command, as written (from a scratch folder that holds the checkout's files).
COMMAND = ".venv/bin/polypythia run manifests/examples/sweep-tiny.yaml --workdir polypythia-work"


def _planted() -> tuple[dict, dict]:
    """(the shock, the slowdown) as the sweep file plants them."""
    shocks = yaml.safe_load(SWEEP_FILE.read_text())["spec"]["training"]["perturbations"]
    spike = next(p for p in shocks if p["learningRateFactor"] > 1)
    slow = next(p for p in shocks if p["learningRateFactor"] < 1)
    return spike, slow


def _json(args: list[str], cwd: Path, env: dict) -> list[dict]:
    done = subprocess.run(
        [str(REPO / ".venv/bin/polypythia"), *args, "-o", "json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(3000)  # minutes on a quiet machine; a shared one can take many times that
def test_demo_sweep_shows_the_planted_spike_and_outlier(tmp_path: Path) -> None:
    for name in ("manifests", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        COMMAND.split(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2700
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    spike, slow = _planted()
    (spiked,), (slowed,) = spike["seeds"], slow["seeds"]
    spiked_run, slowed_run = f"tiny-nano-s{spiked}", f"tiny-nano-s{slowed}"
    sweep = tmp_path / "polypythia-work" / "store" / "tiny"

    # The shock: a loss spike of that seed only, starting within a few steps of the shock.
    spikes = _json(["spikes", str(sweep)], tmp_path, env)
    loss = [s for s in spikes if s["signal"] == "loss"]
    assert {s["run"] for s in loss} == {spiked_run}, spikes
    onset = loss[0]["onsetStep"]
    assert spike["step"] < onset <= spike["step"] + spike["steps"] + 3
    assert loss[0]["kind"] == "seed-specific"

    # The slowdown: flagged by the cross-seed test, from an early checkpoint on.
    outliers = _json(["outliers", str(sweep)], tmp_path, env)
    flagged = {v["run"] for v in outliers}
    assert slowed_run in flagged, outliers
    first = min(v["firstStep"] for v in outliers if v["run"] == slowed_run)
    assert first <= 50

    # The sweep as applied is recorded beside its runs, for a report made later.
    assert json.loads((sweep / "sweep.json").read_text())["metadata"]["name"] == "tiny"

    # Evaluations at several checkpoints; the held-out loss on one token set for all.
    held = {}
    for run in sorted(p.name for p in sweep.iterdir() if p.is_dir()):
        results = {
            int(f.stem.removeprefix("step")): json.loads(f.read_text())
            for f in (sweep / run / "evals").glob("step*.json")
        }
        assert len(results) >= 3, run
        assert all(r["results"] for r in results.values())
        held[run] = {s: r["validation"] for s, r in sorted(results.items())}
    assert len({(v["dataset"], v["tokens"]) for h in held.values() for v in h.values()}) == 1
    for run, by_step in held.items():
        losses = [v["loss"] for v in by_step.values()]
        assert losses[-1] < losses[0], (run, losses)
        if run not in (spiked_run, slowed_run):  # ordinary seeds: lower at every checkpoint
            assert losses == sorted(losses, reverse=True), (run, losses)

    # The terminal (not a TTY here: plain lines) told it as it happened and in the summary.
    assert f"spike    {spiked_run}: loss at step" in out
    assert f"outlier  {slowed_run}: yes (" in out
    assert f"eval     {spiked_run}: step" in out and "ETA" in out and "tok/s" in out
    summary = out[out.index("OUTLIER") :]
    row = next(line for line in summary.splitlines() if line.startswith(slowed_run))
    assert "yes (" in row
