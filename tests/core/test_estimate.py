"""Cost before launch: `plan` states tokens, FLOPs, hours, checkpoint bytes and evaluations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polypythia import estimate, planner, presets
from polypythia.spec import load_sweep_file

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests/examples"
POLYPYTHIAS = EXAMPLES / "sweep-polypythias.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polypythia.cli", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize("size", [p.name for p in presets.PRESETS.values() if p.published_params])
def test_parameter_count_from_the_model_block_is_pythias_published_count(size: str) -> None:
    preset = presets.get(size)
    assert estimate.parameter_count(preset.model_block()) == preset.published_params


def test_flops_per_token_is_palms_formula_worked_by_hand_for_70m() -> None:
    # N without the input embedding: 70,426,624 - 50,304 x 512 = 44,670,976.
    # 6N = 268,025,856; 12 L d T = 12 x 6 x 512 x 2048 = 75,497,472.
    assert estimate.flops_per_token(presets.get("70m").model_block(), 2048) == 343_523_328


def test_plan_json_on_the_polypythias_example_states_tokens_and_tb_checkpoints() -> None:
    result = _cli("plan", str(POLYPYTHIAS), "-o", "json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    cost = out["estimate"]
    assert len(out["runs"]) == len(cost["runs"]) == cost["total"]["runs"] == 50
    per_run = 143_000 * 1_024 * 2_048
    assert {r["tokens"] for r in cost["runs"]} == {per_run}
    assert cost["total"]["tokens"] == 50 * per_run
    assert 1e12 < cost["total"]["checkpointBytes"] < 1e15
    assert cost["total"]["flops"] == pytest.approx(sum(r["flops"] for r in cost["runs"]))
    by_size = {r["size"]: r for r in cost["runs"]}
    assert by_size["410m"]["parameters"] == 405_334_016
    assert by_size["410m"]["checkpointBytes"] > 100 * by_size["410m"]["weightBytesPerCheckpoint"]
    assert cost["mfu"] == 0.4 and cost["peakFlopsPerSecond"] == 989e12
    hours = by_size["410m"]["flops"] / (989e12 * 0.4) / 3600
    assert by_size["410m"]["acceleratorHours"] == pytest.approx(hours, abs=1e-3)


def test_hours_follow_the_stated_device_and_mfu() -> None:
    sweep = load_sweep_file(str(POLYPYTHIAS))
    runs = [r for r in planner.plan_sweep(sweep) if r.size == "160m"][:1]
    h100 = estimate.estimate_sweep(sweep.spec, runs, estimate.Assumptions.build("h100", 0.4))
    a100 = estimate.estimate_sweep(sweep.spec, runs, estimate.Assumptions.build("a100", 0.2))
    assert a100.accelerator_hours == pytest.approx(h100.accelerator_hours * 989 / 312 * 2)
    assert a100.flops == h100.flops


def test_optimiser_state_dominates_a_deepspeed_bf16_checkpoint() -> None:
    """DeepSpeed bf16 saves a 16-bit module plus fp32 master weights and Adam moments."""
    weights, optimiser = estimate.checkpoint_bytes_per_parameter(
        {"strategy": "deepspeed", "precision": "bf16", "gpusPerWorker": 1}
    )
    assert (weights, optimiser) == (2, 12)
    assert estimate.checkpoint_bytes_per_parameter(
        {"strategy": "ddp", "precision": "auto", "gpusPerWorker": 0}
    ) == (4, 8)


def test_plan_table_ends_with_a_total_and_states_its_assumptions() -> None:
    result = _cli("plan", str(EXAMPLES / "sweep-tiny.yaml"), "--device", "a100", "--mfu", "0.5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the demo: 1 size x 5 seeds
    total = next(i for i, line in enumerate(lines) if line.startswith("TOTAL (5 runs)"))
    assert "50% MFU" in lines[total + 1] and "A100" in lines[total + 1]
    # optimizerState all (the CRD default): nothing dropped, so no saving is claimed
    assert not [line for line in lines[total:] if "optimizerState" in line]


def test_bad_mfu_is_a_one_line_usage_error() -> None:
    result = _cli("plan", str(EXAMPLES / "sweep-tiny.yaml"), "--mfu", "1.5")
    assert result.returncode == 2
    assert "--mfu: must be in (0, 1], got 1.5" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_warns_over_the_checkpoint_threshold() -> None:
    big = _cli("validate", str(POLYPYTHIAS))
    assert big.returncode == 0
    assert "warning: checkpoints would take" in big.stderr and " TB " in big.stderr
    tiny = _cli("validate", str(EXAMPLES / "sweep-tiny.yaml"))
    assert tiny.returncode == 0 and "warning" not in tiny.stderr
    lowered = _cli("validate", str(EXAMPLES / "sweep-tiny.yaml"), "--checkpoint-warn-tb", "1e-6")
    assert "warning: checkpoints would take" in lowered.stderr


def test_optimizer_state_latest_keeps_it_on_the_newest_and_resume_checkpoints_only() -> None:
    """The 410m PolyPythias run, worked by hand: 154 planned checkpoints of 405,334,016
    parameters (DeepSpeed bf16: 2 bytes of weights, 12 of optimiser state per parameter)."""
    sweep = load_sweep_file(str(POLYPYTHIAS))
    run = next(r for r in planner.plan_sweep(sweep) if r.size == "410m")
    plan = run.config["checkpoints"]
    assert plan["optimizerState"] == "latest"  # the example asks for it (the default is all)
    latest = estimate.estimate_run(sweep.spec, run, estimate.Assumptions())
    run.config["checkpoints"] = {**plan, "optimizerState": "all"}
    every = estimate.estimate_run(sweep.spec, run, estimate.Assumptions())
    params = 405_334_016
    # resumeEvery 500, keepResume 2: the resume-only 141,500 and 142,500 survive pruning,
    # so 156 checkpoints; optimiser state stays on those two and on the newest, 143,000.
    assert plan["resumeEvery"] == 500 and plan["keepResume"] == 2
    assert every.checkpoint_bytes == 156 * params * 14
    assert every.optimizer_bytes_saved == 0 and every.with_optimizer == 156
    assert latest.with_optimizer == 3
    saved = 153 * params * 12
    assert latest.optimizer_bytes_saved == saved
    assert latest.checkpoint_bytes == every.checkpoint_bytes - saved == params * (156 * 2 + 3 * 12)
    assert saved > 0.8 * every.checkpoint_bytes  # most of a Pythia checkpoint is Adam


def test_plan_json_states_the_bytes_the_optimizer_policy_saves() -> None:
    out = json.loads(_cli("plan", str(POLYPYTHIAS), "-o", "json").stdout)["estimate"]
    saved = out["total"]["optimizerBytesSaved"]
    assert saved == sum(r["optimizerBytesSaved"] for r in out["runs"]) > 1e12
    assert {r["optimizerState"] for r in out["runs"]} == {"latest"}
