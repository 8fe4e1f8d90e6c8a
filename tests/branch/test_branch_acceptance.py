"""Acceptance (issue #19): branch a run at step 30 and continue it with data seeds 0 and 1.

User story: a researcher keeps a run's checkpoints in a store and continues one of them
with other data orders. With the parent's own data seed the branch must be the parent,
step for step (fp32 on CPU: bit for bit); with another data seed it must part ways; it
trains no step at or before its start, and run.json says where it came from.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from e2e.e2e_helpers import command, env, write_sweep

from polypythia.storage import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SPEC = {
    "sizes": ["nano"],
    "training": {"steps": 60, "globalBatchSize": 8, "sequenceLength": 32, "precision": "fp32"},
    "data": {"format": "generated"},
    "checkpoints": {"schedule": "list", "steps": [30, 60]},
    "evaluation": {"schedule": "none"},
}


def _run(sweep: Path, store: Path, tmp_path: Path) -> str:
    cmd = command(sweep, tmp_path / "work", "--no-report", "--storage", str(store), metrics_port=-1)
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env(tmp_path / "cache"), timeout=900
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    return out


def _losses(run: RunStore) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.read_telemetry()}


def test_branch_reproduces_parent_with_its_data_seed_and_departs_with_another(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    orig = write_sweep(tmp_path, "orig", {**SPEC, "seeds": {"list": [0]}})
    _run(orig, store, tmp_path)
    parent = RunStore.open(str(store / "orig" / "orig-nano-s0"))
    parent_uri = str(store / "orig" / "orig-nano-s0")
    branch_spec = {
        **SPEC,
        "seeds": {"list": [0, 1], "axis": "data"},
        "branch": {"from": {"uri": parent_uri, "step": 30}},
    }
    _run(write_sweep(tmp_path, "br", branch_spec), store, tmp_path)

    want = _losses(parent)
    same = RunStore.open(str(store / "br" / "br-nano-s0"))
    other = RunStore.open(str(store / "br" / "br-nano-s1"))
    got, departed = _losses(same), _losses(other)
    assert sorted(got) == list(range(31, 61)), "a branch trains steps 31-60 only"
    assert got == {s: want[s] for s in range(31, 61)}, "data seed 0 is the parent, bit for bit"
    assert sorted(departed) == list(range(31, 61))
    assert departed[31] != want[31] and departed[60] != want[60]
    assert same.complete_checkpoints() == [60]

    manifest = parent.read_manifest(30)
    record = json.loads((store / "br" / "br-nano-s0" / "run.json").read_text())["branch"]
    assert record["parent"] == parent_uri and record["step"] == 30
    assert record["optimizer"] == "restored"
    assert record["checksum"].startswith("sha256:") and len(record["checksum"]) == 71
    assert record == json.loads((store / "br" / "br-nano-s1" / "run.json").read_text())["branch"]
    assert len(manifest["files"]) > 1
