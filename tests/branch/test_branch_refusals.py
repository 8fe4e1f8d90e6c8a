"""Bad branches are refused before anything trains (issue #19, "Bad input").

User story: a researcher points `spec.branch` at a parent that cannot start the sweep's
runs (a step without a checkpoint, another model, another data order, nothing there).
`polypythia validate` exits 2 with one line naming the field, what it found and what is
allowed, and never writes to the parent.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from polypythia import planner, presets
from polypythia.cli import main
from polypythia.spec import sweep_from_object
from polypythia.storage import RunStore

BASE = {
    "sizes": ["nano"],
    "seeds": {"list": [0]},
    "training": {"steps": 60, "globalBatchSize": 8, "sequenceLength": 32, "precision": "fp32"},
    "data": {"format": "generated"},
    "checkpoints": {"schedule": "list", "steps": [30, 60]},
    "evaluation": {"schedule": "none"},
}


def _doc(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "polypythia.io/v1alpha1",
        "kind": "PolyPythiaSweep",
        "metadata": {"name": name},
        "spec": spec,
    }


def _save_model(folder: Path, size: str) -> None:
    """A real GPT-NeoX checkpoint folder of ``size`` as transformers writes it."""
    from polypythia_trainer.config import ModelConfig
    from polypythia_trainer.model import build_model

    block = presets.get(size).model_block()
    build_model(ModelConfig.from_dict(block), 0).save_pretrained(folder)


def make_parent(store: Path, size: str = "nano", spec: dict | None = None) -> str:
    """A parent run in a local store: its run.json and complete checkpoints 0 and 30."""
    sweep = sweep_from_object(_doc("orig", {**(spec or BASE), "sizes": [size]}))
    plan = planner.plan_sweep(sweep, base_uri=str(store))[0]
    run = RunStore.open(plan.config["runUri"])
    run.write_run_config(plan.config)
    for step in (0, 30):
        folder = store / "staging" / f"step{step}"
        _save_model(folder, size)
        (folder / "trainer_state").mkdir()
        (folder / "trainer_state" / "optimizer.pt").write_bytes(b"state")
        run.commit_checkpoint(step, folder)
    return run.uri


def validate(tmp_path: Path, spec: dict, capsys) -> tuple[int, str]:
    path = tmp_path / "br.yaml"
    path.write_text(yaml.safe_dump(_doc("br", spec)))
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def branch(uri: str, step: int = 30, **extra) -> dict:
    return {**BASE, "seeds": {"list": [0, 1], "axis": "data"}, "branch": {"from": {"uri": uri, "step": step}}, **extra}  # fmt: skip


@pytest.fixture
def parent(tmp_path: Path) -> str:
    return make_parent(tmp_path / "store")


def test_a_good_branch_validates_and_counts_only_its_own_checkpoints(
    tmp_path: Path, parent: str, capsys
) -> None:
    code, out = validate(tmp_path, branch(parent), capsys)
    assert code == 0, out
    assert "2 run(s), 1 checkpoints each" in out


def test_a_step_without_a_checkpoint_names_the_steps_there_are(
    tmp_path: Path, parent: str, capsys
) -> None:
    code, out = validate(tmp_path, branch(parent, step=40), capsys)
    assert code == 2
    assert "spec.branch.from.step: " in out
    assert "no complete checkpoint at step 40; allowed: 0, 30" in out
    assert "Traceback" not in out


def test_another_size_is_refused_with_the_fields_that_differ(tmp_path: Path, capsys) -> None:
    parent = make_parent(tmp_path / "store", size="micro")
    code, out = validate(tmp_path, branch(parent), capsys)
    assert code == 2
    assert "spec.branch.from.uri: " in out and "is another model" in out
    assert "numLayers 4 (this sweep's size nano: 2)" in out
    assert "hiddenSize 128 (this sweep's size nano: 64)" in out


def test_another_vocabulary_is_refused(tmp_path: Path, parent: str, capsys) -> None:
    config = Path(parent) / "checkpoints" / "step30" / "config.json"
    hf = json.loads(config.read_text())
    folder = tmp_path / "hf" / "step30"
    folder.mkdir(parents=True)
    for file in config.parent.glob("*.safetensors"):
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "config.json").write_text(json.dumps({**hf, "vocab_size": 50304}))
    code, out = validate(tmp_path, branch(str(folder)), capsys)
    assert code == 2
    assert "vocabSize 50304 (this sweep's size nano: 1024)" in out


def test_another_data_order_is_refused(tmp_path: Path, capsys) -> None:
    other = {**BASE, "training": {**BASE["training"], "globalBatchSize": 16}}
    parent = make_parent(tmp_path / "store", spec=other)
    code, out = validate(tmp_path, branch(parent), capsys)
    assert code == 2
    assert "trained on another data order: training.globalBatchSize 16 (this sweep: 8)" in out
    assert "allowed: the parent's data" in out


def test_a_missing_parent_is_refused(tmp_path: Path, capsys) -> None:
    gone = str(tmp_path / "nowhere" / "orig-nano-s0")
    code, out = validate(tmp_path, branch(gone), capsys)
    assert code == 2
    assert f"spec.branch.from.uri: {gone}: no such parent" in out
    assert not Path(gone).exists(), "checking a parent never creates it"


def test_a_model_folder_named_for_another_revision_is_refused(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "pythia" / "step1000"
    _save_model(folder, "nano")
    code, out = validate(tmp_path, branch(str(folder), step=30), capsys)
    assert code == 2
    assert "spec.branch.from.step: 30, but the model folder" in out and "allowed: 1000" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"step": 60}, "spec.branch.from.step: 60 is not below spec.training.steps (60)"),
        ({"uri": "store/orig"}, "spec.branch.from.uri: 'store/orig' is a relative path"),
        ({"axis": "weight"}, "spec.seeds.axis: weight varies only the initialisation"),
    ],
)
def test_spec_level_refusals_need_no_storage(
    tmp_path: Path, change: dict, message: str, capsys
) -> None:
    spec = branch("/abs/orig-nano-s0")
    spec["seeds"]["axis"] = change.get("axis", "data")
    spec["branch"]["from"].update({k: v for k, v in change.items() if k != "axis"})
    code, out = validate(tmp_path, spec, capsys)
    assert code == 2 and message in out


def test_a_perturbation_before_the_branch_point_is_refused(tmp_path: Path, capsys) -> None:
    spec = branch("/abs/orig-nano-s0")
    spec["training"] = {
        **spec["training"],
        "perturbations": [{"step": 10, "learningRateFactor": 5}],
    }
    code, out = validate(tmp_path, spec, capsys)
    assert code == 2
    assert "spec.training.perturbations[0].step: 10 ends at or before spec.branch.from.step" in out


def test_an_unreachable_parent_store_is_a_runtime_fault(tmp_path: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = branch("s3://bkt/orig/orig-nano-s0")
    spec["storage"] = {"endpoint": f"127.0.0.1:{port}", "secure": False, "bucket": "bkt"}
    code, out = validate(tmp_path, spec, capsys)
    assert code == 1
    assert "spec.branch.from.uri: s3://bkt/orig/orig-nano-s0: cannot be read" in out
    assert "--skip-parent" in out and "Traceback" not in out
