"""`polypythia verify` names every damaged checkpoint of a run or sweep (exit 1) and moves
nothing; the report's input leaves damaged checkpoints (and their evaluations) out and
says which."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_integrity import damage, make_checkpoint

from polypythia.cli import main
from polypythia.storage import RunStore
from polypythia.storage.verify import sound_checkpoints


def sweep_of_two(run_uri: str, tmp_path: Path) -> tuple[str, RunStore, RunStore]:
    """Sweep ``t`` with runs s0 (checkpoints 2, 4) and s1 (checkpoint 2), all sound."""
    sweep = run_uri.rsplit("/", 1)[0]
    runs = []
    for seed, steps in ((0, (2, 4)), (1, (2,))):
        run = RunStore.open(f"{sweep}/t-nano-s{seed}")
        run.write_run_config({"run": f"t-nano-s{seed}", "size": "nano", "seed": seed})
        for step in steps:
            src = make_checkpoint(tmp_path / f"src{seed}-{step}", f"s{seed}-{step}")
            run.commit_checkpoint(step, src)
        runs.append(run)
    return sweep, runs[0], runs[1]


def test_a_sound_sweep_verifies_with_exit_0(run_uri: str, tmp_path: Path, capsys) -> None:
    sweep, _, _ = sweep_of_two(run_uri, tmp_path)
    assert main(["verify", sweep]) == 0
    out, err = capsys.readouterr()
    assert "t-nano-s0: 2 sound, 0 damaged" in out and "t-nano-s1: 1 sound, 0 damaged" in out
    assert "verified 3 checkpoint(s) of 2 run(s) (sizes and sha256): 0 damaged" in err


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_each_damaged_checkpoint_is_named_and_exits_1(
    run_uri: str, tmp_path: Path, capsys, how: str
) -> None:
    sweep, s0, s1 = sweep_of_two(run_uri, tmp_path)
    damage(s0, 4, "model.safetensors", how)
    damage(s1, 2, "trainer_state/optimizer.pt", how)
    assert main(["verify", sweep]) == 1
    out, _ = capsys.readouterr()
    assert "DAMAGED t-nano-s0 step4: " in out and "model.safetensors" in out
    assert "DAMAGED t-nano-s1 step2: " in out and "optimizer.pt" in out
    assert "t-nano-s0: 1 sound, 1 damaged" in out
    # Read-only: the damaged checkpoints are still where they were.
    assert s0.complete_checkpoints() == [2, 4] and s1.complete_checkpoints() == [2]


def test_a_flipped_byte_passes_a_size_only_check_but_not_the_full_one(
    run_uri: str, tmp_path: Path, capsys
) -> None:
    _, s0, _ = sweep_of_two(run_uri, tmp_path)
    damage(s0, 2, "model.safetensors", "flip")
    assert main(["verify", s0.uri, "--sizes-only"]) == 0
    capsys.readouterr()
    assert main(["verify", s0.uri, "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 2 and report["damaged"] == 1
    bad = [c for c in report["runs"][0]["checkpoints"] if not c["sound"]]
    assert [c["step"] for c in bad] == [2] and "sha256 differs" in bad[0]["problem"]


def test_a_missing_file_and_a_garbled_manifest_are_damage(run_uri: str, tmp_path: Path) -> None:
    _, s0, _ = sweep_of_two(run_uri, tmp_path)
    s0.store.delete(s0.checkpoint_key(2, "trainer_state/optimizer.pt"))
    s0.store.put_bytes(s0.checkpoint_key(4, "COMPLETE"), b"{not json")
    result = sound_checkpoints(s0)
    assert result.sound == []
    assert "optimizer.pt: missing" in result.damaged[2]
    assert "COMPLETE" in result.damaged[4]


def test_nothing_to_verify_is_an_error_not_a_pass(tmp_path: Path, capsys) -> None:
    assert main(["verify", str(tmp_path / "empty")]) == 1
    assert "no complete checkpoint to verify" in capsys.readouterr().err


def test_the_report_input_leaves_damaged_checkpoints_out_and_names_them(
    run_uri: str, tmp_path: Path
) -> None:
    from polypythia_eval.sources import load_sweep

    sweep, s0, _ = sweep_of_two(run_uri, tmp_path)
    for step in (2, 4):
        s0.write_eval(step, {"step": step, "results": {"lambada": {"acc": 0.1 * step}}})
    damage(s0, 4, "model.safetensors", "truncate")
    data = load_sweep(sweep)
    run = next(r for r in data.runs if r.name == "t-nano-s0")
    assert run.checkpoints == [2]
    assert sorted(run.evals) == [2]  # the damaged checkpoint's scores are not analysed
    assert any("step4" in p and "damaged" in p and "excluded" in p for p in run.problems)
